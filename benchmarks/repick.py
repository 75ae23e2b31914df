"""The best-per-workload picks of a finished ``python -m bench`` run, chosen again by this
checkout's rule (``bench.best``) from its results.json: what a rule change does to runs
already timed, without timing them again.

>>> python benchmarks/repick.py OUT/results.json [--speed-tie 0.03]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from bench.best import SPEED_TIE, best_per_workload, markdown

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="a python -m bench results.json")
    p.add_argument("--speed-tie", type=float, default=SPEED_TIE, help=f"default {SPEED_TIE}")
    a = p.parse_args(argv)
    try:
        r = json.loads(a.results.read_text())
        best, rows = r["best"], r["stages"]
        args = (rows, r["reference"], best["budget_points"], best["selection_split"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {a.results} is not a finished python -m bench results.json ({e}); give OUT/results.json",
              file=sys.stderr)
        return 2
    print("\n".join(markdown(best_per_workload(*args, speed_tie=a.speed_tie))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
