"""Together and alone, paired in time: what bench's way of timing costs a model, with host drift cancelled.

Timing the 'together' figures in one process and the 'alone' ones in other processes minutes
later compares two states of a shared host: on a 2-vCPU EPYC the same ONNX Runtime int8
model's batch-1 p50, timed alone, went 4.90, 4.42, 3.86 ms in three repeats about 6 minutes
apart, steal at most 0.4% (docs/results/isolation-paired-2026-12-04-avx2.md). Here one driver
process holds both

- the models as bench times them: one worker process each, driven in rotation by bench's own
  ``WorkerPool.time_rotation`` (``process``), or all loaded in this process and timed by
  ``timing.time_interleaved`` (``inprocess``), and
- one more fresh worker process per model that only ever runs that model: 'alone',

and alternates between them in short segments (``segment`` batch-1 inputs, one batch-32
round): the together side times the segment's inputs its way, then each alone worker runs the
same inputs back to back after one untimed call, as a process serving only that model would.
Only one process computes at a time, and both sides see the same minutes of the host.
"""
from __future__ import annotations

import random
from contextlib import ExitStack

import numpy as np

from chain.artifact import Artifact

from .harness import MeasureConfig, load_predictors, load_tokenizer, timing_inputs
from .timing import fixed_threads, time_interleaved
from .worker import WorkerPool


def _alone_segment(pool: WorkerPool, kind: str, offset: int, n: int, rng: random.Random) -> dict[str, list[float]]:
    """Each alone worker, in shuffled order: one untimed call, then inputs offset.. back to back."""
    out = {}
    names = pool.alive
    rng.shuffle(names)
    for name in names:
        got = pool.run(name, kind, [offset] + list(range(offset, offset + n)))
        if got is not None:
            out[name] = got[1:]
    return out


class _InProcess:
    """The together side in ``inprocess`` mode: every model loaded in this driver process."""

    def __init__(self, arts: list[Artifact], cfg: MeasureConfig, inputs: dict[str, list[dict]]):
        self.preds, _ = load_predictors(arts, cfg)
        self.cfg, self.inputs = cfg, inputs

    def segment(self, kind, offset, n, warmup, block, turn_warmup, seed) -> dict[str, list[float]]:
        batches = self.inputs[kind]
        fns = {name: (lambda i, p=p: p(batches[(offset + i) % len(batches)])) for name, p in self.preds.items()}
        with fixed_threads(self.cfg.threads):
            return time_interleaved(fns, n, warmup, seed, self.cfg.device, block, turn_warmup).samples_ms


class _Workers:
    """The together side in ``process`` mode: bench's worker pool, one process per model."""

    def __init__(self, pool: WorkerPool, inputs: dict[str, list[dict]]):
        self.pool = pool
        for kind, batches in inputs.items():
            pool.send_inputs(kind, batches)

    def segment(self, kind, offset, n, warmup, block, turn_warmup, seed) -> dict[str, list[float]]:
        t = self.pool.time_rotation(kind, n, warmup, block, seed, turn_warmup, offset=offset)
        if self.pool.failed:
            raise RuntimeError(f"timing worker failed: {self.pool.failed}")
        return t.samples_ms


def time_paired(arts: list[Artifact], texts: list[str], cfg: MeasureConfig, mode: str, segment: int = 30,
                trust_remote_code: bool = False) -> dict:
    """Per model: batch-1 p50 and batch-32 samples/s together (``mode``) and alone, paired in segments,
    plus every sample (``samples_ms[side][model][kind]``)."""
    if segment < 1:
        raise ValueError(f"segment must be >= 1, got {segment}")
    b1, b32 = timing_inputs(load_tokenizer(arts[0], trust_remote_code), texts, cfg)
    inputs = {"b1": b1, "b32": b32}
    names = [a.name for a in arts]
    samples = {side: {n: {"b1": [], "b32": []} for n in names} for side in ("together", "alone")}
    rng = random.Random(cfg.seed)
    with ExitStack() as stack:
        alone = stack.enter_context(WorkerPool({n: a.path for n, a in zip(names, arts)}, cfg.threads,
                                               trust_remote_code, cfg.device, cfg.worker_timeout_s))
        for kind, batches in inputs.items():
            alone.send_inputs(kind, batches)
        if mode == "process":
            together = _Workers(stack.enter_context(WorkerPool({n: a.path for n, a in zip(names, arts)}, cfg.threads,
                                                               trust_remote_code, cfg.device,
                                                               cfg.worker_timeout_s)), inputs)
        else:
            together = _InProcess(arts, cfg, inputs)
        # (kind, calls in all, calls per segment, warm-up, block, turn warm-up) as bench.harness times them
        plan = [("b1", len(b1), segment, cfg.warmup, cfg.latency_block, cfg.latency_turn_warmup),
                ("b32", len(b32) * cfg.throughput_rounds, len(b32), min(len(b32), 3), cfg.throughput_block,
                 cfg.throughput_turn_warmup)]
        for kind, total, seg, warmup, block, turn_warmup in plan:
            _alone_segment(alone, kind, 0, warmup, rng)  # alone workers warm up as the together side does
            for k, offset in enumerate(range(0, total, seg)):
                n = min(seg, total - offset)
                sides = ["together", "alone"]
                rng.shuffle(sides)  # neither side always runs first
                for side in sides:
                    if side == "together":
                        got = together.segment(kind, offset, n, warmup if k == 0 else 0, block, turn_warmup,
                                               cfg.seed + k)
                    else:
                        got = _alone_segment(alone, kind, offset, n, rng)
                    if alone.failed:
                        raise RuntimeError(f"timing worker failed: {alone.failed}")
                    for name, ms in got.items():
                        samples[side][name][kind] += list(ms)
    figures = {side: {n: {"p50_ms": float(np.median(s["b1"])), "samples_per_s": float(32e3 / np.mean(s["b32"]))}
                      for n, s in by.items()} for side, by in samples.items()}
    return {"mode": mode, "segment": segment, "figures": figures, "samples_ms": samples}
