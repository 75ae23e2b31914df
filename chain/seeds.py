"""Chain vs direct fine-tuning over several seeds: is the chain's gain larger than seed noise?

One run's gain can be noise: on SST-2 (1821 test sentences) two runs that differ only in
training randomness differ by ~0.5 points. This reruns a spec with ``--baseline`` once per
seed, the seed set on the stages from ``--stage`` on (earlier stages are shared and cached),
and reports both accuracies on the final task per seed, their means and the paired
difference with its standard deviation. Each seed's run rewrites the output's ``report.md``
and ``results.json`` (the last seed's stay); ``seeds.md`` / ``seeds.json`` hold every seed.

    python -m chain.seeds examples/sentiment_chain.yaml --stage sst2 --seeds 1 2 3
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

from .errors import ChainpressError, SpecError
from .executor import run_chain
from .finetune_config import FineTuneConfig
from .spec import ChainSpec, load_spec
from .jsonio import write_json_atomic


def reseeded(spec: ChainSpec, stage: str, seed: int) -> ChainSpec:
    """``spec`` with ``seed`` on ``stage`` and every fine-tune stage after it, and the baseline on."""
    names = [s.name for s in spec.stages]
    if stage not in names:
        raise SpecError(f"--stage {stage!r}: no such stage; stages: {', '.join(names)}")
    start = names.index(stage)
    stages = []
    for i, s in enumerate(spec.stages):
        if isinstance(s.config, FineTuneConfig):  # show_progress is not part of the cache key
            s = dataclasses.replace(s, config=dataclasses.replace(s.config, show_progress=False,
                                                                  **({"seed": seed} if i >= start else {})))
        stages.append(s)
    return dataclasses.replace(spec, stages=stages, baseline=True)


def summarize(rows: list[dict]) -> dict:
    chain = [r["chain"] for r in rows]
    direct = [r["direct"] for r in rows]
    diff = [100 * (c - d) for c, d in zip(chain, direct)]
    sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else None)
    return {"seeds": [r["seed"] for r in rows], "chain_mean": statistics.mean(chain), "chain_sd": sd(chain),
            "direct_mean": statistics.mean(direct), "direct_sd": sd(direct),
            "gain_points_mean": statistics.mean(diff), "gain_points_sd": sd(diff), "runs": rows}


def markdown(summary: dict, task: str) -> str:
    f = (lambda x, fmt=".4f": "—" if x is None else format(x, fmt))
    md = [f"| seed | chain on {task} | direct on {task} | chain − direct (points) |", "|---|---|---|---|"]
    md += [f"| {r['seed']} | {f(r['chain'])} | {f(r['direct'])} | {f(100 * (r['chain'] - r['direct']), '+.2f')} |"
           for r in summary["runs"]]
    md.append(f"| mean ± sd | {f(summary['chain_mean'])} ± {f(summary['chain_sd'])} | "
              f"{f(summary['direct_mean'])} ± {f(summary['direct_sd'])} | "
              f"{f(summary['gain_points_mean'], '+.2f')} ± {f(summary['gain_points_sd'], '.2f')} |")
    return "\n".join(md) + "\n"


def run_seeds(spec: ChainSpec, stage: str, seeds: list[int], out: Path | None = None, log=print) -> dict:
    rows = []
    for seed in seeds:
        res = run_chain(reseeded(spec, stage, seed), out, log=log)
        out = Path(res["output"])
        b = res["baseline"]
        if b["chain_accuracy"] is None or b["accuracy"] is None:
            raise ChainpressError(f"seed {seed}: no accuracy to compare ({b['status']}: {b['reason']}); "
                                  f"see {out / 'report.md'}")
        rows.append({"seed": seed, "chain": b["chain_accuracy"], "direct": b["accuracy"],
                     "chain_stage": b["chain_stage"], "direct_stage": b["stage"]})
        log(f"seed {seed}: chain {b['chain_accuracy']:.4f}, direct {b['accuracy']:.4f}")
    summary = summarize(rows)
    summary["task"] = spec.baseline_stage().task
    write_json_atomic(out / "seeds.json", summary)
    (out / "seeds.md").write_text(markdown(summary, summary["task"]))
    return summary


def main(argv=None, prog: str = "python -m chain.seeds") -> int:
    from .cli import add_common, guarded, quiet_libraries

    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path)
    p.add_argument("--stage", required=True, help="first stage to reseed (earlier ones are shared)")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    add_common(p, output=True, output_help="output directory (default: the spec's)")
    a = p.parse_args(argv)
    quiet_libraries(a.verbose, a.quiet)

    def body() -> int:
        summary = run_seeds(load_spec(a.spec), a.stage, a.seeds, a.output, log=(lambda m: None) if a.quiet else print)
        print(markdown(summary, summary["task"]))
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
