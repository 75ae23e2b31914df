"""One artifact alone in this process: batch-32 samples/s per round, on bench's own inputs.

bench's predictor and ``timing_inputs`` (the same 8 seeded batches of 32 SST-2 test
sentences), 3 warm-up batches, then 8 rounds of the 8 batches back to back; prints each
round and the median. Run it in several fresh processes to see how steady the alone figure
is (docs/results/bench-2026-12-04-avx512.md, section 4):

    for i in 1 2 3 4 5 6; do python benchmarks/alone_throughput.py RUN/artifacts/int8-<key>; done
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(path: str, threads: int = 2) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench's timing workers
    import torch

    from bench.harness import MeasureConfig, timing_inputs
    from chain.artifact import Artifact
    from chain.model import load_tokenizer
    from chain.runtime import load_predictor
    from chain.task import builtin_task

    torch.set_num_threads(threads)
    art = Artifact.load(path)
    pred = load_predictor(art, threads)
    _, b32 = timing_inputs(load_tokenizer(art), builtin_task("sst2").load("test").texts, MeasureConfig(threads=threads))
    for b in b32[:3]:
        pred(b)
    rates = []
    for _ in range(8):
        t0 = time.perf_counter()
        for b in b32:
            pred(b)
        rates.append(len(b32) * 32 / (time.perf_counter() - t0))
    print(f"pid {os.getpid()} rounds {' '.join(f'{r:.0f}' for r in rates)} median {np.median(rates):.0f}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: python benchmarks/alone_throughput.py ARTIFACT_DIR", file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
