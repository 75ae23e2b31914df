"""Measure every stage of a chain side by side: accuracy, latency, throughput, size.

Accuracy is computed right after each stage finishes (and saved into its manifest, so a
later crash loses nothing). Timing runs once all stages exist, with every model loaded
in one process and timed interleaved, so stage-to-stage ratios share the same machine
state. Thread counts are fixed for both backends and ONNX Runtime's spinning is off.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from chain.artifact import Artifact
from chain.model import load_tokenizer
from chain.task import Split

from .backends import accuracy, encode_batches, load_predictor
from .timing import time_interleaved


@dataclass
class MeasureConfig:
    threads: int = 2
    latency_calls: int = 300  # batch-1 calls per stage, each on a different real sentence
    throughput_batches: int = 8  # distinct real batches of 32 per round
    throughput_rounds: int = 5
    warmup: int = 10
    max_length: int = 128
    seed: int = 0


def make_evaluator(test: Split, cfg: MeasureConfig, trust_remote_code: bool = False):
    """evaluate(artifact) -> {"accuracy": ...} on the whole test split (length-sorted batches)."""
    cache: dict = {}

    def evaluate(artifact: Artifact) -> dict:
        if "batches" not in cache:
            tok = load_tokenizer(artifact, trust_remote_code)
            cache["batches"] = encode_batches(tok, test.texts, 64, cfg.max_length, sort_by_length=True)
        pred = load_predictor(artifact, cfg.threads, trust_remote_code)
        return {"accuracy": accuracy(pred, cache["batches"], test.labels), "test_examples": len(test),
                "size_mb": round(artifact.size_mb(), 2)}

    return evaluate


def measure_speed(artifacts: list[Artifact], texts: list[str], cfg: MeasureConfig,
                  trust_remote_code: bool = False, progress=None) -> dict[str, dict]:
    """Batch-1 latency and batch-32 throughput for each artifact, timed interleaved."""
    tok = load_tokenizer(artifacts[0], trust_remote_code)
    rng = random.Random(cfg.seed)
    lat_texts = rng.sample(texts, min(len(texts), cfg.latency_calls))
    b1 = [enc for _, enc in encode_batches(tok, lat_texts, 1, cfg.max_length)]
    thr_texts = rng.sample(texts, min(len(texts), 32 * cfg.throughput_batches))
    b32 = [enc for _, enc in encode_batches(tok, thr_texts, 32, cfg.max_length)]
    preds = {a.name: load_predictor(a, cfg.threads, trust_remote_code) for a in artifacts}
    if progress:
        progress("latency, batch 1")
    lat = time_interleaved({n: (lambda i, p=p: p(b1[i % len(b1)])) for n, p in preds.items()},
                           n_calls=len(b1), warmup=cfg.warmup, shuffle_seed=cfg.seed)
    if progress:
        progress("throughput, batch 32")
    n_thr = len(b32) * cfg.throughput_rounds
    thr = time_interleaved({n: (lambda i, p=p: p(b32[i % len(b32)])) for n, p in preds.items()},
                           n_calls=n_thr, warmup=min(len(b32), 3), shuffle_seed=cfg.seed)
    out = {}
    for name in preds:
        s = thr[name]
        out[name] = {
            "backend": preds[name].backend,
            "latency_ms": {"batch": 1, "p50": s_round(lat[name].p50_ms), "p90": s_round(lat[name].p90_ms),
                           "p99": s_round(lat[name].p99_ms), "p50_ci95": [s_round(x) for x in lat[name].p50_ci95_ms],
                           "calls": lat[name].n},
            # mean over a fixed set of real batches = total samples / total time
            "throughput": {"batch": 32, "samples_per_s": s_round(32e3 / s.mean_ms),
                           "batch_ms_p50": s_round(s.p50_ms), "batches": s.n},
        }
    return out


def s_round(x: float) -> float:
    return round(float(x), 3)
