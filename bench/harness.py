"""Measure every stage of a chain side by side: accuracy, latency, throughput, size.

Accuracy comes from the chain executor's evaluation (saved in each manifest right after
a stage finishes, so a later crash loses nothing). Timing runs once all stages exist, with every model loaded
in one process and timed interleaved, so stage-to-stage ratios share the same machine
state. Thread counts are fixed for both backends and ONNX Runtime's spinning is off.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from chain.artifact import Artifact
from chain.model import load_tokenizer

from chain.predict import Predictor, encode_batches
from chain.runtime import load_predictor

from .timing import bootstrap_ci, current_rss_mb, fixed_threads, time_interleaved


@dataclass
class MeasureConfig:
    threads: int = 2
    latency_calls: int = 300  # batch-1 calls per stage, each on a different real sentence
    throughput_batches: int = 8  # distinct real batches of 32 per round
    throughput_rounds: int = 5
    warmup: int = 10
    max_length: int = 128
    seed: int = 0
    device: str = "cpu"  # "cuda": CUDA-event timing with synchronisation

    def __post_init__(self) -> None:
        if self.threads < 1 or self.latency_calls < 1 or self.throughput_batches < 1 or self.throughput_rounds < 1:
            raise ValueError(f"threads, latency_calls, throughput_batches and throughput_rounds must be >= 1: {self}")

    @classmethod
    def quick(cls, threads: int = 2) -> "MeasureConfig":
        """What ``python -m bench --quick`` (and so the example CI gate) measures with."""
        # Enough calls for the gate (docs/gating.md): on a busy 2-core host a stage's speedup
        # varied run to run by 5-9% (sd) with 60 batch-1 calls / 8 batch-32 rounds, 3-6% with 150 / 16.
        return cls(threads=threads, latency_calls=150, throughput_batches=4, throughput_rounds=4, warmup=3)


def load_predictors(artifacts: list[Artifact], cfg: MeasureConfig,
                    trust_remote_code: bool = False) -> tuple[dict[str, Predictor], dict[str, float]]:
    """Every artifact's predictor, plus the RSS each one added to the process when loaded (MB)."""
    preds, load_mb = {}, {}
    for a in artifacts:
        before = current_rss_mb()
        preds[a.name] = load_predictor(a, cfg.threads, trust_remote_code)
        load_mb[a.name] = current_rss_mb() - before
    return preds, load_mb


def measure_speed(artifacts: list[Artifact], texts: list[str], cfg: MeasureConfig,
                  trust_remote_code: bool = False, progress=None, reference: str | None = None) -> dict[str, dict]:
    """Batch-1 latency and batch-32 throughput for each artifact, timed interleaved."""
    tok = load_tokenizer(artifacts[0], trust_remote_code)
    preds, load_mb = load_predictors(artifacts, cfg, trust_remote_code)
    out = measure_predictors(preds, tok, texts, cfg, reference, progress)
    for name, mb in load_mb.items():
        out[name]["memory_mb"]["load_rss"] = s_round(mb)
    return out


def measure_predictors(preds: dict[str, Predictor], tokenizer, texts: list[str], cfg: MeasureConfig,
                       reference: str | None = None, progress=None) -> dict[str, dict]:
    """Time ``preds`` interleaved on real ``texts``; rows for results.json, keyed by name.

    With ``reference`` among ``preds``, every row also gets its ``speedup`` over it and a
    paired-bootstrap 95% interval of that speedup (``speedup_ci95``).
    """
    rng = random.Random(cfg.seed)
    lat_texts = rng.sample(texts, min(len(texts), cfg.latency_calls))
    b1 = [enc for _, enc in encode_batches(tokenizer, lat_texts, 1, cfg.max_length)]
    thr_texts = rng.sample(texts, min(len(texts), 32 * cfg.throughput_batches))
    b32 = [enc for _, enc in encode_batches(tokenizer, thr_texts, 32, cfg.max_length)]
    with fixed_threads(cfg.threads):
        if progress:
            progress("latency, batch 1")
        lat = time_interleaved({n: (lambda i, p=p: p(b1[i % len(b1)])) for n, p in preds.items()},
                               n_calls=len(b1), warmup=cfg.warmup, shuffle_seed=cfg.seed, device=cfg.device)
        if progress:
            progress("throughput, batch 32")
        thr = time_interleaved({n: (lambda i, p=p: p(b32[i % len(b32)])) for n, p in preds.items()},
                               n_calls=len(b32) * cfg.throughput_rounds, warmup=min(len(b32), 3),
                               shuffle_seed=cfg.seed, device=cfg.device)
    out = {}
    for name in preds:
        ls, ts = lat.stats[name], thr.stats[name]
        row = {
            "backend": preds[name].backend,
            "latency_ms": {"batch": 1, "p50": s_round(ls.p50_ms), "p90": s_round(ls.p90_ms),
                           "p99": s_round(ls.p99_ms), "p50_ci95": [s_round(x) for x in ls.p50_ci95_ms],
                           "mean": s_round(ls.mean_ms), "tmean": s_round(ls.tmean_ms), "calls": ls.n},
            # mean over a fixed set of real batches = total samples / total time
            "throughput": {"batch": 32, "samples_per_s": s_round(32e3 / ts.mean_ms),
                           "samples_per_s_ci95": [s_round(32e3 / x) for x in reversed(
                               bootstrap_ci(thr.samples_ms[name], np.mean))],
                           "batch_ms_p50": s_round(ts.p50_ms), "batches": ts.n},
            "memory_mb": {"process_peak_rss": s_round(max(lat.peak_rss_mb, thr.peak_rss_mb))},
            "threads": lat.threads,
            # per-round samples: plots, and re-analysis without re-running
            "samples_ms": {"latency": [s_round(x) for x in lat.samples_ms[name]],
                           "throughput": [s_round(x) for x in thr.samples_ms[name]]},
        }
        if name in lat.cuda_max_allocated_mb:
            row["memory_mb"]["cuda_max_allocated"] = s_round(max(lat.cuda_max_allocated_mb[name],
                                                                 thr.cuda_max_allocated_mb[name]))
        if reference in preds:
            # speedup = reference time / this time. Throughput by means (= samples/s); latency
            # by medians (the headline p50) and by 10%-trimmed means (what the gate uses: less
            # run-to-run noise than the median at the same number of calls).
            sp = {"throughput": thr.ratio(reference, name, "mean"), "latency_p50": lat.ratio(reference, name, "median"),
                  "latency_tmean": lat.ratio(reference, name, "tmean")}
            row["speedup"] = {k: s_round(r.value) for k, r in sp.items()}
            row["speedup_ci95"] = {k: [s_round(x) for x in r.ci95] for k, r in sp.items()}
        out[name] = row
    return out


def s_round(x: float) -> float:
    return round(float(x), 3)
