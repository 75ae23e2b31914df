"""What a change to the distilled recovery buys a search level, on dev (issue 12).

Runs one pruning level of ``python -m bench --search`` (prune + the default chain's distilled
recovery) in an existing bench output folder, once per ``--variant``, reusing its cache: the
fine-tuned reference and the pruned model are not rebuilt, and a variant already run is not
retrained. A variant is a JSON object of ``finetune.distill`` fields merged into the default
recovery's (``{}`` is the default chain's recovery itself), plus optionally ``"epochs"``, the
recovery's; ``{"epochs": N}`` alone is the search's ``--retry-epochs N`` (its stage names, so a
later search reuses what this trained). Prints each recovered model's dev accuracy
against the reference's, as the search judges it, and the recovery's wall time. The bench run's
results.json and report.md are left as they were.

>>> python benchmarks/recovery_distill.py OUT --level heads=0.5 ffn=0.6 layers=0.1667 \\
...     --variant '{}' '{"augment": {"copies": 1}}' '{"hidden": 10}' [--task subj]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_LEVEL = ["heads=0.5", "ffn=0.6", "layers=0.16666666666666666"]


def _level(items: list[str]) -> dict:
    return {k: float(v) for k, v in (i.split("=", 1) for i in items)}


def _variant(text: str) -> dict:
    v = json.loads(text)
    if not isinstance(v, dict):
        raise ValueError(text)
    return v


@contextlib.contextmanager
def _kept(output: Path):
    saved = {p: p.read_bytes() for p in (output / "results.json", output / "report.md") if p.is_file()}
    try:
        yield
    finally:
        for p, data in saved.items():
            p.write_bytes(data)


def _reported(result: dict, ref: str) -> dict:
    """The accuracy each stage's chain run recorded on the chain's eval split (test in bench)."""
    from chain.artifact import Artifact

    out = {}
    for name in (ref, result["stage"]):
        path = result["artifacts"].get(name)
        evals = Artifact.load(path).manifest.get("evaluations", {}) if path else {}
        out[name] = next((e.get("accuracy") for e in evals.values()), None)
    return out


def run(output: Path, level_items: list[str], variants: list[str], threads: int = 2, task: str | None = None) -> int:
    if not (output / "results.json").is_file():
        print(f"error: {output} holds no results.json; give the --output of a finished python -m bench run "
              "(its cache is what this reuses)", file=sys.stderr)
        return 2
    try:
        level = _level(level_items)
    except ValueError:
        print(f"error: --level takes name=number pairs (heads=0.5 ffn=0.6 layers=0.1667), got {level_items}",
              file=sys.stderr)
        return 2
    try:
        parsed = [_variant(v) for v in variants]
    except ValueError:
        print(f"error: --variant takes JSON objects of finetune.distill fields ('{{}}', "
              f"'{{\"hidden\": 10}}'), got {variants}", file=sys.stderr)
        return 2
    import bench.search as S
    from bench.__main__ import build_config, parser

    from chain.errors import ChainpressError

    try:
        cfg = build_config(parser().parse_args(["--output", str(output), "--threads", str(threads)]
                                               + (["--task", task] if task else [])))
        plan, rows = S.plan_of(cfg), []
    except ChainpressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base_branch = plan.branch
    for text, var in zip(variants, parsed):
        def branch(lv, epochs=0, var=var):
            if set(var) == {"epochs"}:  # the search's own retry (--retry-epochs): its stage names,
                return base_branch(lv, var["epochs"])  # so a later search reuses what this trained
            b = base_branch(lv, epochs)
            rec = {**b[1]["config"]}
            patch = {k: v for k, v in var.items() if k != "epochs"}
            rec["distill"] = {**rec["distill"], **patch}
            if "epochs" in var:
                rec["epochs"] = var["epochs"]
            b[1]["config"] = rec
            return b
        plan.branch = branch
        t0 = time.perf_counter()
        with _kept(output):  # the probe's chain run would overwrite the bench run's report
            result = S.probe(plan, level, output, threads, log=lambda *_: None)
            trial = S.judge(plan, level, result, 1.0)
        rows.append({"variant": text, **trial, "wall_s": round(time.perf_counter() - t0, 1),
                     "reported": _reported(result, plan.ref)})
        print(json.dumps(rows[-1]), flush=True)
    split = (plan.raw.get("eval") or {}).get("split", "test")
    print(f"\n| variant | stage | dev accuracy | Δ dev (pts) | Δ {split} (pts, reported only) | wall s (cached: ~0) |"
          "\n|---|---|---|---|---|---|")
    for r in rows:
        if r.get("status") == "failed":
            print(f"| `{r['variant']}` | failed: {r.get('reason', '')} | | | | {r['wall_s']} |")
        else:
            rep = r["reported"]
            d = "—" if None in rep.values() else f"{100 * (rep[r['stage']] - rep[plan.ref]):+.2f}"
            print(f"| `{r['variant']}` | {r['stage']} | {r['dev_accuracy']:.4f} | {-r['dev_drop_points']:+.2f} | "
                  f"{d} | {r['wall_s']} |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path, help="a python -m bench output folder (its cache is reused)")
    p.add_argument("--level", nargs="+", default=DEFAULT_LEVEL)
    p.add_argument("--variant", nargs="+", default=["{}"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--task", help="the built-in task the bench run was made with (--task of python -m bench)")
    a = p.parse_args(argv)
    return run(a.output, a.level, a.variant, a.threads, a.task)


if __name__ == "__main__":
    sys.exit(main())
