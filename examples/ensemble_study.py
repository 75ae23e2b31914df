"""Issue 15's measurement: examples/ensemble_sst2.yaml over repeats with different member seeds.

    python examples/ensemble_study.py train  [--repeats 3]   # runs/ensemble_sst2/r<i>, cached, resumable
    python examples/ensemble_study.py report [--repeats 3]   # docs/results/ensembles-<date>.{md,json}

Repeat i gives the members seeds 10i+1, 10i+2, 10i+3 and the student (and its recovery)
seed 100+i; everything else is the spec's. ``report`` evaluates the members themselves on
SST-2 test, times batch-1 latency of one repeat's rows interleaved (bench's timing
primitive), and gives paired 95% t-intervals over the repeats.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SPEC = HERE / "ensemble_sst2.yaml"
RUNS = HERE.parent / "runs" / "ensemble_sst2"
# The dev-weighted ensemble's test accuracy is computed by `report` from the members' test
# logits (the same sum the ens-dev artifact computes: tests/chain/test_ensemble.py checks
# it), so the study does not spend K more model evaluations per repeat on it.
STUDY_SKIPS = ("ens-dev",)


def repeat_spec(i: int, spec_path: Path = SPEC, runs: Path = RUNS, model: str | None = None):
    from chain.spec import parse_spec

    raw = yaml.safe_load(spec_path.read_text())
    raw["seed"] = 100 + i
    raw["output"] = str(runs / f"r{i}")
    if model:
        raw["model"] = model
    raw["stages"] = [st for st in raw["stages"] if st["name"] not in STUDY_SKIPS]
    for st in raw["stages"]:
        if st["type"] in ("ensemble", "soup"):
            st["config"] = {**st["config"], "members": [{"seed": 10 * i + j} for j in (1, 2, 3)]}
    return parse_spec(raw, spec_path.parent, source=str(spec_path))


def train(repeats: int, runs: Path = RUNS, model: str | None = None) -> int:
    from chain.executor import exit_code, run_chain

    code = 0
    for i in range(repeats):
        print(f"=== repeat {i} ===", flush=True)
        res = run_chain(repeat_spec(i, runs=runs, model=model), log=lambda m: print(m, flush=True))
        code = max(code, exit_code(res))
    return code


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ensemble_study")
    ap.add_argument("what", choices=("train", "report"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", type=Path, default=RUNS, help="where the repeats' chain outputs go")
    ap.add_argument("--model", help="another source model (a smoke run on a tiny model); default: the spec's")
    ap.add_argument("--results", type=Path, default=None,
                    help="report: write <results>.md/.json here instead of docs/results/ and leave docs/ensembles.md")
    args = ap.parse_args(argv)
    if args.repeats < 2:
        print("error: --repeats must be at least 2 (paired intervals need 2 or more repeats)", file=sys.stderr)
        return 2
    if args.what == "train":
        from chain.cli import guarded

        return guarded(lambda: train(args.repeats, args.runs, args.model))
    from ensemble_report import StudyError, report  # noqa: E402  (beside this file)

    try:
        return report(args.repeats, args.runs, args.results)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
