"""A bench run's own stages, timed bench's way and each alone in the same minutes: issue 16's before/after.

Reads one `python -m bench` output (results.json and its artifacts), then, per ``--modes`` and
repeat, in a fresh driver process: every timed stage of the run together as bench times them
(``process``: one worker per stage in rotation, bench's default; ``inprocess``: all in one
process, the design before workers), and each stage alone in a worker of its own, the two
alternating in segments (``bench/paired_alone.py``), with the run's measure settings and test
sentences. Prints per stage and mode the together/alone ratios and the batch-1 speed-up over
the reference that each gives.

>>> python benchmarks/bench_paired.py --run bench-out --modes process inprocess --json paired.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _variant(v: str) -> tuple[str, dict]:
    """'process', 'inprocess' or 'MODE:BLOCK' (batch-1 calls per turn, instead of the run's own)."""
    mode, _, block = v.partition(":")
    return mode, ({"latency_block": int(block)} if block else {})


def _one(run: Path, variant: str, out: Path) -> None:
    from bench.harness import MeasureConfig
    from bench.paired_alone import time_paired
    from chain.artifact import Artifact
    from chain.task import builtin_task

    doc = json.loads((run / "results.json").read_text())
    arts = [Artifact.load(s["artifact"]) for s in doc["stages"] if s.get("latency_ms") and s.get("artifact")]
    mode, extra = _variant(variant)
    got = time_paired(arts, builtin_task(doc["task"]).load("test").texts,
                      MeasureConfig(**{**doc["measure"], **extra, "isolation": mode}), mode)
    out.write_text(json.dumps(got["figures"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a `python -m bench` --output directory")
    p.add_argument("--modes", nargs="+", default=["process", "inprocess"], metavar="MODE[:BLOCK]",
                   help="process | inprocess, optionally :N batch-1 calls per turn instead of the run's own")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write every figure here")
    p.add_argument("--one", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for v in a.modes:
        if _variant(v)[0] not in ("process", "inprocess"):
            p.error(f"--modes: {v!r} is not process or inprocess (optionally :BLOCK)")
    if a.one:
        _one(a.run, a.one[0], Path(a.one[1]))
        return 0
    doc = json.loads((a.run / "results.json").read_text())
    ref = doc["reference"]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # as bench
    runs: dict[str, list[dict]] = {m: [] for m in a.modes}
    t0 = time.perf_counter()
    for r in range(a.repeats):
        for mode in (a.modes if r % 2 == 0 else a.modes[::-1]):
            out = a.run / f"paired-{mode.replace(':', '-b')}-{r}.json"
            subprocess.run([sys.executable, __file__, "--run", str(a.run), "--one", mode, str(out)], check=True, env=env)
            runs[mode].append(json.loads(out.read_text()))
            print(f"[{time.perf_counter() - t0:5.0f}s] repeat {r} {mode} done", flush=True)
    print(f"\nCPU: {doc['environment']['cpu']}; run {a.run}; reference {ref}; {a.repeats} repeat(s) per mode; "
          f"wall {time.perf_counter() - t0:.0f} s; the run's batch-1 calls per turn: "
          f"{doc['measure'].get('latency_block', 1)}\n")
    print("| stage | mode | b1 p50 ms together | alone | ratio | b32 samples/s together | alone | ratio "
          "| b1 speed-up together | alone |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    table = []
    for name in runs[a.modes[0]][0]["together"]:
        for mode, reps in runs.items():
            med = {side: {k: statistics.median(x[side][name][k] for x in reps) for k in ("p50_ms", "samples_per_s")}
                   for side in ("together", "alone")}
            sp = {side: statistics.median(x[side][ref]["p50_ms"] / x[side][name]["p50_ms"] for x in reps)
                  for side in ("together", "alone")}
            t, al = med["together"], med["alone"]
            print(f"| {name} | {mode} | {t['p50_ms']:.2f} | {al['p50_ms']:.2f} | {t['p50_ms'] / al['p50_ms']:.3f} | "
                  f"{t['samples_per_s']:.1f} | {al['samples_per_s']:.1f} | {t['samples_per_s'] / al['samples_per_s']:.3f} "
                  f"| {sp['together']:.2f}x | {sp['alone']:.2f}x |")
            table.append({"stage": name, "mode": mode, **med, "b1_speedup": sp})
    if a.json:
        a.json.write_text(json.dumps({"runs": runs, "rows": table, "environment": doc["environment"],
                                      "measure": doc["measure"], "reference": ref}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
