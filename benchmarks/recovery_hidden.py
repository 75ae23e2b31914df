"""What hidden-state distillation buys a search level's recovery, on dev (issue 12).

Runs one pruning level of ``python -m bench --search`` (prune + the default chain's distilled
recovery) in an existing bench output folder, once per ``--hidden`` weight (0 = logits
only, the default chain's recovery), reusing its cache: the fine-tuned reference and the
pruned model are not rebuilt, and a weight already run is not retrained. Prints each
recovered model's dev accuracy against the reference's, as the search judges it.

>>> python benchmarks/recovery_hidden.py OUT --level heads=0.5 ffn=0.6 layers=0.1667 --hidden 0 1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _level(items: list[str]) -> dict:
    return {k: float(v) for k, v in (i.split("=", 1) for i in items)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path, help="a python -m bench output folder (its cache is reused)")
    p.add_argument("--level", nargs="+", default=["heads=0.5", "ffn=0.6", "layers=0.16666666666666666"])
    p.add_argument("--hidden", nargs="+", type=float, default=[0.0, 1.0])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if not (a.output / "results.json").is_file():
        print(f"error: {a.output} holds no results.json; give the --output of a finished python -m bench run "
              "(its cache is what this reuses)", file=sys.stderr)
        return 2
    try:
        level = _level(a.level)
    except ValueError:
        print(f"error: --level takes name=number pairs (heads=0.5 ffn=0.6 layers=0.1667), got {a.level}",
              file=sys.stderr)
        return 2
    import bench.search as S
    from bench.__main__ import build_config, parser

    cfg = build_config(parser().parse_args(["--output", str(a.output), "--threads", str(a.threads)]))
    plan, rows = S.plan_of(cfg), []
    base_branch = plan.branch
    for h in a.hidden:
        def branch(lv, h=h):
            b = base_branch(lv)
            if h:
                b[1]["config"] = {**b[1]["config"], "distill": {**b[1]["config"]["distill"], "hidden": h}}
            return b
        plan.branch = branch
        t0 = time.perf_counter()
        trial = S.judge(plan, level, S.probe(plan, level, a.output, a.threads, log=lambda *_: None), 1.0)
        rows.append({"hidden": h, **trial, "wall_s": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| hidden weight | dev accuracy | Δ dev vs reference (pts) | wall s (cached: ~0) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['hidden']:g} | {r['dev_accuracy']:.4f} | {-r['dev_drop_points']:+.2f} | {r['wall_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
