"""The one timing primitive: warm-up, interleaved repetitions, robust statistics.

Variants are timed round-robin (A B C, C A B, ...) rather than back to back, so slow
drift of the machine (thermal, a neighbour process) hits every variant alike and their
ratios stay meaningful on a noisy shared host. Round ``i`` calls every variant on the
same input ``i``, so a ratio can be taken per round (paired) and bootstrapped over
rounds: that interval is what ``python -m bench compare`` calls "the noise".

>>> t = time_interleaved({"fp32": f, "int8": g}, n_calls=200, warmup=10)
>>> t.stats["int8"].p50_ms, t.ratio("fp32", "int8").value   # int8 speedup over fp32
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np

N_BOOT = 1000
TRIM = 0.1  # trimmed mean: drop the fastest and slowest 10% of calls


def trimmed_mean(a: np.ndarray, axis: int = -1, trim: float = TRIM) -> np.ndarray:
    """Mean of the middle (1 - 2*trim) of the values: nearly as steady as the mean, but one
    500 ms stall of a shared host cannot move it (it moves a 150-call mean of 10 ms calls by 30%)."""
    a = np.sort(a, axis=axis)
    n = a.shape[axis]
    k = int(n * trim)
    return np.take(a, np.arange(k, n - k), axis=axis).mean(axis=axis)


STATS = {"median": np.median, "mean": np.mean, "tmean": trimmed_mean}


@dataclass
class Stats:
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    p50_ci95_ms: tuple[float, float]  # bootstrap interval of the median
    tmean_ms: float = float("nan")  # 10%-trimmed mean

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Ratio:
    """``stat(numerator) / stat(denominator)`` with a paired-bootstrap 95% interval."""
    value: float
    ci95: tuple[float, float]


@dataclass
class Timing:
    """One interleaved measurement: ``samples_ms[name][i]`` is the call of round ``i``."""
    samples_ms: dict[str, np.ndarray]
    stats: dict[str, Stats]
    threads: dict[str, int]  # what the process actually ran with
    peak_rss_mb: float  # of the whole process (RSS is per process, not per variant)
    cuda_max_allocated_mb: dict[str, float] = field(default_factory=dict)  # per variant, GPU only
    device: str = "cpu"
    _boot_idx: np.ndarray | None = field(default=None, repr=False)

    def ratio(self, numerator: str, denominator: str, stat: str = "median") -> Ratio:
        """E.g. ``ratio(reference, stage)`` = the stage's speedup (times: bigger = faster stage).

        The bootstrap resamples *rounds*, keeping each round's pair together, so drift
        that hit both variants in the same round cancels instead of widening the interval.
        """
        a, b = self.samples_ms[numerator], self.samples_ms[denominator]
        f = STATS[stat]  # median | mean | tmean
        if self._boot_idx is None or self._boot_idx.shape[1] != len(a):
            self._boot_idx = np.random.default_rng(0).integers(0, len(a), size=(N_BOOT, len(a)))
        boots = f(a[self._boot_idx], axis=1) / f(b[self._boot_idx], axis=1)
        lo, hi = np.percentile(boots, [2.5, 97.5])
        return Ratio(float(f(a) / f(b)), (float(lo), float(hi)))


def bootstrap_ci(samples: np.ndarray, stat=np.median, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(samples), size=(n_boot, len(samples)))
    boots = stat(samples[idx], axis=1)
    return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def summarize(samples_ms) -> Stats:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return Stats(len(a), float(p50), float(p90), float(p99), float(a.mean()), bootstrap_ci(a), float(trimmed_mean(a)))


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's own peak RSS: ``VmHWM``, the high-water mark of its address space.

    Not ``ru_maxrss``: Linux keeps that across ``execve``, so a worker started by a bench
    process that holds 2 GB of training state reported the parent's 2 GB as its own peak
    on every row. ``ru_maxrss`` only where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def thread_counts() -> dict[str, int]:
    import os

    import torch

    return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
            "omp_num_threads_env": int(os.environ.get("OMP_NUM_THREADS", 0) or 0)}


def pin_interop_threads(n: int) -> bool:
    """PyTorch's inter-op pool to ``n`` threads, so a run under ``--threads 1`` records 1, not the core count.

    Possible only before the process's first parallel PyTorch work: False when too late.
    """
    import torch

    if torch.get_num_interop_threads() == n:
        return True
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        return False
    return True


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Run PyTorch with exactly ``n`` intra-op threads inside the block, then restore.

    ONNX Runtime sessions get their count when created (``compress.onnx_export.ort_session``).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cuda_clock():
    """(start, stop) for one call timed with CUDA events; stop() syncs and returns ms."""
    import torch

    torch.cuda.synchronize()  # nothing queued before the call may be charged to it
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()

    def stop() -> float:
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    return stop


def _wall_clock():
    t0 = time.perf_counter()
    return lambda: (time.perf_counter() - t0) * 1e3


def clock_for(device: str = "cpu"):
    """``clock()`` starts timing one call and returns ``stop()``, which gives its ms."""
    return _cuda_clock if device.startswith("cuda") else _wall_clock


def timing_from_samples(samples_ms: dict[str, np.ndarray], threads: dict, peak_rss: float,
                        cuda_mem: dict[str, float] | None = None, device: str = "cpu") -> Timing:
    arrays = {n: np.asarray(s, dtype=np.float64) for n, s in samples_ms.items()}
    return Timing(arrays, {n: summarize(a) for n, a in arrays.items()}, threads, peak_rss, cuda_mem or {}, device)


def time_interleaved(fns: dict[str, Callable[[int], object]], n_calls: int, warmup: int = 5,
                     shuffle_seed: int | None = 0, device: str = "cpu", block: int = 1,
                     turn_warmup: int = 0) -> Timing:
    """Call each ``fn(i)`` for i in range(n_calls), round-robin across variants.

    ``fn(i)`` gets the call index so every call can use a different real input; round
    ``i`` gives every variant the same input. Each variant first runs ``warmup`` calls
    (compilation, allocator and cache warm-up stay out of the samples). The order of
    variants is reshuffled each round (seeded) so none always runs first. A round gives
    each variant ``block`` consecutive calls (inputs ``k*block ..``), so a variant can be
    timed with its own weights in the caches rather than right after another model's;
    ``turn_warmup`` untimed calls (on the turn's first input) start each turn for the same
    reason, without changing which inputs are timed. On
    ``device="cuda"`` each call is bracketed by CUDA events after a synchronize, and the
    peak CUDA memory allocated during each variant's calls is recorded.
    """
    names = list(fns)
    cuda = device.startswith("cuda")
    if cuda:
        import torch
    for name in names:
        for i in range(warmup):
            fns[name](i)
    clock = clock_for(device)
    samples: dict[str, list[float]] = {n: [] for n in names}
    cuda_mem = {n: 0.0 for n in names} if cuda else {}
    rng = random.Random(shuffle_seed)
    for start in range(0, n_calls, block):
        order = names[:]
        if shuffle_seed is not None:
            rng.shuffle(order)
        for name in order:
            for _ in range(turn_warmup):
                fns[name](start)
            for i in range(start, min(start + block, n_calls)):
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                stop = clock()
                fns[name](i)
                samples[name].append(stop())
                if cuda:  # read outside the timed region
                    cuda_mem[name] = max(cuda_mem[name], torch.cuda.max_memory_allocated() / 2**20)
    return timing_from_samples(samples, thread_counts(), peak_rss_mb(), cuda_mem, device)
