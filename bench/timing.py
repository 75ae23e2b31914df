"""The one timing primitive: warm-up, interleaved repetitions, robust statistics.

Variants are timed round-robin (A B C A B C ...) rather than back to back, so slow
drift of the machine (thermal, a neighbour process) hits every variant alike and their
ratios stay meaningful on a noisy shared host.

>>> stats = time_interleaved({"fp32": f, "int8": g}, n_calls=200, warmup=10)
>>> stats["int8"].p50_ms
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass
class Stats:
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    p50_ci95_ms: tuple[float, float]  # bootstrap interval of the median

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_ci(samples: np.ndarray, stat=np.median, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(samples), size=(n_boot, len(samples)))
    boots = stat(samples[idx], axis=1)
    return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def summarize(samples_ms: list[float]) -> Stats:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return Stats(len(a), float(p50), float(p90), float(p99), float(a.mean()), bootstrap_ci(a))


def time_interleaved(fns: dict[str, Callable[[int], object]], n_calls: int, warmup: int = 5,
                     shuffle_seed: int | None = 0, sync: Callable[[], None] | None = None) -> dict[str, Stats]:
    """Call each ``fn(i)`` for i in range(n_calls), round-robin across variants.

    ``fn(i)`` gets the call index so every call can use a different real input. The
    order of variants is reshuffled each round (seeded) so none always runs first.
    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before reading the clock.
    """
    names = list(fns)
    for name in names:
        for i in range(warmup):
            fns[name](i)
    if sync:
        sync()
    samples: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(shuffle_seed)
    for i in range(n_calls):
        order = names[:]
        if shuffle_seed is not None:
            rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            fns[name](i)
            if sync:
                sync()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {n: summarize(s) for n, s in samples.items()}


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
