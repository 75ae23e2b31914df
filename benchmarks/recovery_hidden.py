"""What hidden-state distillation buys a search level's recovery, on dev (issue 12).

``recovery_distill.py`` with one variant per ``--hidden`` weight (0 = logits only, the
default chain's recovery); the figures of docs/results/bench-2026-12-07-avx512.md.

>>> python benchmarks/recovery_hidden.py OUT --level heads=0.5 ffn=0.6 layers=0.1667 --hidden 0 1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recovery_distill import DEFAULT_LEVEL, run  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path, help="a python -m bench output folder (its cache is reused)")
    p.add_argument("--level", nargs="+", default=DEFAULT_LEVEL)
    p.add_argument("--hidden", nargs="+", type=float, default=[0.0, 1.0])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    return run(a.output, a.level, [json.dumps({"hidden": h} if h else {}) for h in a.hidden], a.threads)


if __name__ == "__main__":
    sys.exit(main())
