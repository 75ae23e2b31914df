"""How much does one model's batch-32 throughput vary between fresh processes, and what steadies it?

``alone_throughput.py`` in ``--processes`` fresh processes per condition, the conditions in
rotation (A, B, A, B, ...) so host drift hits each alike. A condition is extra environment
for the child: e.g. ``thp`` asks glibc's malloc to back its large blocks with transparent
huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``; the kernel here has THP in
``madvise`` mode, so without it no heap memory gets huge pages). Prints per condition each
process's median, the spread (max/min) and the median of the medians.

>>> python benchmarks/process_spread.py RUN/artifacts/int8-<key> --processes 6 --conditions default thp
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CONDITIONS = {
    "default": {},
    "thp": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "omp-active": {"OMP_WAIT_POLICY": "ACTIVE"},
}
HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--processes", type=int, default=6, help="fresh processes per condition (default 6)")
    p.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=["default", "thp"])
    p.add_argument("--json", type=Path, help="also write every process's figures here")
    a = p.parse_args(argv)
    if not a.artifact.is_dir() or a.processes < 1:
        print("error: give an artifact directory and --processes >= 1", file=sys.stderr)
        return 2
    got: dict[str, list[float]] = {c: [] for c in a.conditions}
    for i in range(a.processes):
        for c in a.conditions[i % len(a.conditions):] + a.conditions[:i % len(a.conditions)]:
            env = {**os.environ, **CONDITIONS[c]}
            out = subprocess.run([sys.executable, str(HERE / "alone_throughput.py"), str(a.artifact)],
                                 capture_output=True, text=True, env=env, check=True).stdout
            med = float(out.split("median")[-1])
            got[c].append(med)
            print(f"{c:12s} process {i}: {out.strip()}", flush=True)
    print("\n| condition | per-process medians, samples/s | max / min | median |\n|---|---|---|---|")
    for c, v in got.items():
        print(f"| {c} | {', '.join(f'{x:.0f}' for x in v)} | {max(v) / min(v):.3f} | {statistics.median(v):.0f} |")
    if a.json:
        a.json.write_text(json.dumps({"artifact": str(a.artifact), "medians": got}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
