"""Do `python -m bench`'s figures match each model timed alone? Issue 16's before/after.

Reads the results.json of one or more bench runs over the same cached stages (e.g. one with
``--isolation process``, the default, and one with ``--isolation inprocess``, the earlier
design), then times each named stage's artifact alone, in a fresh process of its own with the
same harness and measure settings (``bench.isolation_check``'s worker), ``--repeats`` times in
rotating order. Prints, per stage and run, batch-1 p50 and batch-32 throughput, their ratio to
the alone figure, and the batch-1 speed-up over the reference as bench printed it and as the
alone figures give it.

Its alone processes run after the bench runs, so the host's drift meanwhile lands in the
ratios; ``benchmarks/bench_paired.py`` times both sides in the same minutes and is the one
to read for issue 16 (docs/results/bench-paired-2026-12-04-avx2.md).

>>> python benchmarks/bench_vs_alone.py --runs process=OUT1 inprocess=OUT2 --stages finetune onnx-int8
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _alone(cfg: Path, name: str, out: Path) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # as bench
    subprocess.run([sys.executable, "-m", "bench.isolation_check", "--worker", str(cfg), str(out), "inprocess", name],
                   check=True, capture_output=True, text=True, env=env)
    return json.loads(out.read_text())[name]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, metavar="LABEL=DIR", help="bench output directories")
    p.add_argument("--stages", nargs="+", required=True)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write every figure here")
    a = p.parse_args(argv)
    runs = {lab: json.loads((Path(d) / "results.json").read_text()) for lab, d in (r.split("=", 1) for r in a.runs)}
    first = next(iter(runs.values()))
    rows = {s["name"]: s for s in first["stages"]}
    ref = first["reference"]
    names = [ref, *[n for n in a.stages if n != ref]]
    measure = {k: v for k, v in first["measure"].items()}
    work = Path(tempfile.mkdtemp(prefix="bench-alone-"))
    cfg = work / "config.json"
    cfg.write_text(json.dumps({"dirs": [rows[n]["artifact"] for n in names], "measure": measure}))
    alone = {n: [] for n in names}
    for r in range(a.repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            alone[n].append(_alone(cfg, n, work / f"{r}-{n}.json"))
    med = {n: {m: statistics.median(x[m] for x in v) for m in ("p50_ms", "samples_per_s")} for n, v in alone.items()}
    print(f"CPU: {first['environment']['cpu']}; reference {ref}; alone: median of {a.repeats} fresh processes\n")
    print("| stage | run | b1 p50 ms | / alone | b32 samples/s | / alone | b1 speed-up (bench) | b1 speed-up (alone) |")
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for n in names:
        al = med[n]
        print(f"| {n} | alone | {al['p50_ms']:.2f} | 1.000 | {al['samples_per_s']:.1f} | 1.000 | | "
              f"{med[ref]['p50_ms'] / al['p50_ms']:.2f}x |")
        for lab, doc in runs.items():
            s = {x["name"]: x for x in doc["stages"]}[n]
            p50, sps = s["latency_ms"]["p50"], s["throughput"]["samples_per_s"]
            ref_p50 = {x["name"]: x for x in doc["stages"]}[ref]["latency_ms"]["p50"]
            print(f"| {n} | {lab} | {p50:.2f} | {p50 / al['p50_ms']:.3f} | {sps:.1f} | {sps / al['samples_per_s']:.3f} | "
                  f"{ref_p50 / p50:.2f}x | |")
            table.append({"stage": n, "run": lab, "p50_ms": p50, "samples_per_s": sps, "alone": al})
    if a.json:
        a.json.write_text(json.dumps({"alone_runs": alone, "alone_median": med, "rows": table,
                                      "environment": first["environment"], "measure": measure}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
