"""Measure every stage of a chain side by side: accuracy, latency, throughput, size.

Accuracy comes from the chain executor's evaluation (saved in each manifest right after
a stage finishes, so a later crash loses nothing). Timing runs once all stages exist, interleaved in time so
stage-to-stage ratios share the same machine state. By default (``isolation="process"``)
each model runs in a worker process of its own, driven in rotation (``bench/worker.py``),
so its figures are those of the model running alone; ``"inprocess"`` loads every model
into this process instead. Thread counts are fixed for both backends and ONNX Runtime's
spinning is off.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from chain.artifact import Artifact
from chain.model import load_tokenizer

from chain.predict import Predictor, encode_batches
from chain.runtime import load_predictor

from .timing import Timing, bootstrap_ci, current_rss_mb, fixed_threads, time_interleaved

ISOLATION = ("process", "inprocess")


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
    isolation: str = "process"  # one worker process per model | "inprocess": all models in this process
    # consecutive batch-1 calls a model gets per turn of the rotation. At 1, ONNX Runtime's
    # batch-1 p50 in worker rotation was 1.10x (fp32) and 1.10x (int8) the same model timed alone
    # in the same minutes, turn warm-up and all; at 10 it was 0.90-1.03x, PyTorch and OpenVINO
    # within 10% either way (docs/results/isolation-paired-2026-12-04-avx2.md)
    latency_block: int = 10
    # untimed batch-1 calls that start each turn: after the other models' turns a small model's
    # weights are out of the caches, which inflated ORT int8's batch-1 p50 by 1.13x against it
    # timed alone (docs/results/isolation-check-6-runtimes-2026-12-02.md); 0 = off
    latency_turn_warmup: int = 1
    # the same two at batch 32: batches per turn, and untimed batches that start each turn
    throughput_block: int = 1
    throughput_turn_warmup: int = 0
    worker_timeout_s: float = 600.0  # a worker silent for this long is killed and its row fails

    def __post_init__(self) -> None:
        if min(self.threads, self.latency_calls, self.throughput_batches, self.throughput_rounds,
               self.latency_block, self.throughput_block) < 1 or min(self.latency_turn_warmup,
                                                                     self.throughput_turn_warmup) < 0:
            raise ValueError("threads, latency_calls, throughput_batches, throughput_rounds, latency_block and "
                             f"throughput_block must be >= 1, the turn warm-ups >= 0: {self}")
        if self.isolation not in ISOLATION:
            raise ValueError(f"isolation must be one of {ISOLATION}, got {self.isolation!r}")
        if self.worker_timeout_s <= 0:
            raise ValueError(f"worker_timeout_s must be > 0, got {self.worker_timeout_s}")

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
    """Batch-1 latency and batch-32 throughput for each artifact, timed interleaved.

    Rows keyed by artifact name; each says how it was timed in ``row["timing"]``. With
    ``isolation="process"`` a model whose worker failed gets ``{"status": "failed", "reason": ...}``.
    """
    tok = load_tokenizer(artifacts[0], trust_remote_code)
    if cfg.isolation == "process":
        return measure_in_workers(artifacts, tok, texts, cfg, trust_remote_code, progress, reference)
    preds, load_mb = load_predictors(artifacts, cfg, trust_remote_code)
    out = measure_predictors(preds, tok, texts, cfg, reference, progress)
    for name, mb in load_mb.items():
        out[name]["memory_mb"]["load_rss"] = s_round(mb)
    return out


def timing_inputs(tokenizer, texts: list[str], cfg: MeasureConfig) -> tuple[list[dict], list[dict]]:
    """(batch-1 encodings, batch-32 encodings): the same seeded sample of real sentences in both modes."""
    rng = random.Random(cfg.seed)
    lat_texts = rng.sample(texts, min(len(texts), cfg.latency_calls))
    b1 = [enc for _, enc in encode_batches(tokenizer, lat_texts, 1, cfg.max_length)]
    thr_texts = rng.sample(texts, min(len(texts), 32 * cfg.throughput_batches))
    return b1, [enc for _, enc in encode_batches(tokenizer, thr_texts, 32, cfg.max_length)]


def measure_in_workers(artifacts: list[Artifact], tokenizer, texts: list[str], cfg: MeasureConfig,
                       trust_remote_code: bool = False, progress=None, reference: str | None = None) -> dict[str, dict]:
    """``measure_speed`` with one worker process per artifact (``bench/worker.py``)."""
    from .worker import WorkerPool

    b1, b32 = timing_inputs(tokenizer, texts, cfg)
    if progress:
        progress(f"starting {len(artifacts)} worker processes")
    with WorkerPool({a.name: a.path for a in artifacts}, cfg.threads, trust_remote_code, cfg.device,
                    cfg.worker_timeout_s) as pool:
        pool.send_inputs("b1", b1)
        pool.send_inputs("b32", b32)
        if progress:
            progress("latency, batch 1")
        lat = pool.time_rotation("b1", len(b1), cfg.warmup, cfg.latency_block, cfg.seed, cfg.latency_turn_warmup)
        if progress:
            progress("throughput, batch 32")
        thr = pool.time_rotation("b32", len(b32) * cfg.throughput_rounds, min(len(b32), 3), cfg.throughput_block,
                                 cfg.seed, cfg.throughput_turn_warmup)
        workers, failed = pool.workers, dict(pool.failed)
    out = {}
    for a in artifacts:
        if a.name in failed or a.name not in lat.samples_ms or a.name not in thr.samples_ms:
            out[a.name] = {"status": "failed", "reason": f"timing worker: {failed.get(a.name, 'no samples')}",
                           "timing": {"mode": "process"}}
            continue
        info = workers[a.name].info
        row = speed_row(a.name, info.backend, lat, thr, reference)
        # the worker ran only this model, so its process peak is this model's own peak
        peak = s_round(info.peak_rss_mb)
        row["memory_mb"] = {"peak_rss": peak, "process_peak_rss": peak, "load_rss": s_round(info.load_rss_mb)}
        row["threads"] = info.threads
        row["load_s"] = s_round(info.load_s)
        row["first_call_ms"] = s_round(info.first_call_ms.get("b1", float("nan")))
        row["timing"] = {"mode": "process", "worker_pid": info.pid, "latency_block": cfg.latency_block,
                         "latency_turn_warmup": cfg.latency_turn_warmup, "throughput_block": cfg.throughput_block,
                         "throughput_turn_warmup": cfg.throughput_turn_warmup,
                         "omp_wait_policy": info.omp_wait_policy,
                         "ort_spinning": info.ort_spinning,
                         "first_call_ms_batch32": s_round(info.first_call_ms.get("b32", float("nan")))}
        out[a.name] = row
    return out


def measure_predictors(preds: dict[str, Predictor], tokenizer, texts: list[str], cfg: MeasureConfig,
                       reference: str | None = None, progress=None) -> dict[str, dict]:
    """Time ``preds`` interleaved in this process on real ``texts``; rows for results.json, keyed by name.

    With ``reference`` among ``preds``, every row also gets its ``speedup`` over it and a
    paired-bootstrap 95% interval of that speedup (``speedup_ci95``).
    """
    import os

    b1, b32 = timing_inputs(tokenizer, texts, cfg)
    with fixed_threads(cfg.threads):
        if progress:
            progress("latency, batch 1")
        lat = time_interleaved({n: (lambda i, p=p: p(b1[i % len(b1)])) for n, p in preds.items()},
                               n_calls=len(b1), warmup=cfg.warmup, shuffle_seed=cfg.seed, device=cfg.device,
                               block=cfg.latency_block, turn_warmup=cfg.latency_turn_warmup)
        if progress:
            progress("throughput, batch 32")
        thr = time_interleaved({n: (lambda i, p=p: p(b32[i % len(b32)])) for n, p in preds.items()},
                               n_calls=len(b32) * cfg.throughput_rounds, warmup=min(len(b32), 3),
                               shuffle_seed=cfg.seed, device=cfg.device, block=cfg.throughput_block,
                               turn_warmup=cfg.throughput_turn_warmup)
    out = {}
    for name in preds:
        row = speed_row(name, preds[name].backend, lat, thr, reference)
        row["timing"] = {"mode": "inprocess", "latency_block": cfg.latency_block,
                         "latency_turn_warmup": cfg.latency_turn_warmup, "throughput_block": cfg.throughput_block,
                         "throughput_turn_warmup": cfg.throughput_turn_warmup,
                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "ort_spinning": False}
        out[name] = row
    return out


def speed_row(name: str, backend: str, lat: Timing, thr: Timing, reference: str | None) -> dict:
    """One row's latency, throughput, memory, threads, samples and (vs ``reference``) speedups."""
    ls, ts = lat.stats[name], thr.stats[name]
    row = {
        "backend": backend,
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
    if reference in lat.samples_ms and reference in thr.samples_ms:
        # speedup = reference time / this time. Throughput by means (= samples/s); latency
        # by medians (the headline p50) and by 10%-trimmed means (what the gate uses: less
        # run-to-run noise than the median at the same number of calls). Sample i of both
        # is input i, so the bootstrap keeps pairs.
        sp = {"throughput": thr.ratio(reference, name, "mean"), "latency_p50": lat.ratio(reference, name, "median"),
              "latency_tmean": lat.ratio(reference, name, "tmean")}
        row["speedup"] = {k: s_round(r.value) for k, r in sp.items()}
        row["speedup_ci95"] = {k: [s_round(x) for x in r.ci95] for k, r in sp.items()}
    return row


def s_round(x: float) -> float:
    return round(float(x), 3)
