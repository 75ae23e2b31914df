"""Chain vs direct fine-tuning over several seeds (and training-set sizes): gain or seed noise?

One run's gain can be noise: on SST-2 (1821 test sentences) two runs that differ only in
training randomness differ by ~0.5 points. This reruns a spec with ``--baseline`` once per
seed, the seed set on the stages from ``--stage`` on (earlier stages are shared and cached),
and reports both accuracies on the final task per seed, their means and the paired
difference with its sd and a 95% t-interval. ``--train-samples N ...`` repeats that per
training-set size, setting ``max_train_samples`` on the final task's stages, so the chain
and its direct replay train on the same N sentences with the same budget (a low-resource
spec fixes the budget in optimizer steps: ``extra_args: {max_steps: ...}``). Each run
rewrites the output's ``report.md`` and ``results.json`` (the last run's stay);
``seeds.md`` / ``seeds.json`` hold every run.

    python -m chain.seeds examples/sentiment_chain.yaml --stage sst2 --seeds 1 2 3
    python -m chain.seeds examples/lowres_sst5_sst2.yaml --stage sst2 --seeds 1 2 3 4 5 \\
        --train-samples 200 500 1000
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from pathlib import Path

from .errors import ChainpressError, SpecError
from .executor import run_chain
from .finetune_config import FineTuneConfig
from .jsonio import write_json_atomic
from .spec import ChainSpec, load_spec

# t_{0.975, df} for df = 1..30 (scipy.stats.t.ppf(0.975, df)), used when scipy is absent.
_T975 = [12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423]


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    try:
        from scipy.stats import t
    except ImportError:
        return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df  # within 0.002 for df > 30
    return float(t.ppf(0.975, df))


def interval95(xs: list[float]) -> tuple[float, float] | None:
    """mean ± t_{0.975,n-1}·sd/√n; None with fewer than 2 values."""
    if len(xs) < 2:
        return None
    m, half = statistics.mean(xs), t975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m - half, m + half


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


def sized(spec: ChainSpec, n: int) -> ChainSpec:
    """``spec`` with ``max_train_samples = n`` on every fine-tune stage of the final task.

    The direct baseline replays exactly those stages from the base model, so both arms
    train on the same seeded subsample of ``n`` sentences."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SpecError(f"--train-samples must be whole numbers >= 1, got {n!r}")
    last = spec.baseline_stage()
    if last is None:
        raise SpecError("--train-samples: the chain has no stage that trains on a task")
    if not isinstance(last.config, FineTuneConfig):
        raise SpecError(f"--train-samples: the final task's stage {last.name!r} ({last.type}) is not a fine-tune stage")
    stages = [dataclasses.replace(s, config=dataclasses.replace(s.config, max_train_samples=n))
              if s.task == last.task and isinstance(s.config, FineTuneConfig) and s.stage_cls.trains_on_task else s
              for s in spec.stages]
    return dataclasses.replace(spec, stages=stages)


def summarize(rows: list[dict]) -> dict:
    chain = [r["chain"] for r in rows]
    direct = [r["direct"] for r in rows]
    diff = [100 * (c - d) for c, d in zip(chain, direct)]
    sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else None)
    ci = interval95(diff)
    return {"seeds": [r["seed"] for r in rows], "chain_mean": statistics.mean(chain), "chain_sd": sd(chain),
            "direct_mean": statistics.mean(direct), "direct_sd": sd(direct),
            "gain_points_mean": statistics.mean(diff), "gain_points_sd": sd(diff),
            "gain_points_ci95": list(ci) if ci else None,
            "chain_wins": sum(d > 0 for d in diff), "ties": sum(d == 0 for d in diff), "runs": rows}


def _f(x, fmt=".4f") -> str:
    return "—" if x is None else format(x, fmt)


def _ci(s: dict) -> str:
    ci = s.get("gain_points_ci95")
    return "—" if not ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def markdown(summary: dict, task: str) -> str:
    md = [f"| seed | chain on {task} | direct on {task} | chain − direct (points) |", "|---|---|---|---|"]
    md += [f"| {r['seed']} | {_f(r['chain'])} | {_f(r['direct'])} | {_f(100 * (r['chain'] - r['direct']), '+.2f')} |"
           for r in summary["runs"]]
    md.append(f"| mean ± sd | {_f(summary['chain_mean'])} ± {_f(summary['chain_sd'])} | "
              f"{_f(summary['direct_mean'])} ± {_f(summary['direct_sd'])} | "
              f"{_f(summary['gain_points_mean'], '+.2f')} ± {_f(summary['gain_points_sd'], '.2f')} |")
    md.append(f"\n95% t-interval of the paired difference: {_ci(summary)} points; "
              f"the chain won {summary['chain_wins']} of {len(summary['runs'])} seeds.")
    return "\n".join(md) + "\n"


def sizes_markdown(study: dict) -> str:
    """One row per training-set size, then each size's per-seed table."""
    task = study["task"]
    md = [f"| {task} train sentences | seeds | chain (mean ± sd) | direct (mean ± sd) | chain − direct, points "
          f"(mean, 95% CI) | chain won |", "|---|---|---|---|---|---|"]
    for s in study["sizes"]:
        md.append(f"| {s['train_samples']} | {len(s['runs'])} | {_f(s['chain_mean'])} ± {_f(s['chain_sd'])} | "
                  f"{_f(s['direct_mean'])} ± {_f(s['direct_sd'])} | {_f(s['gain_points_mean'], '+.2f')} {_ci(s)} | "
                  f"{s['chain_wins']}/{len(s['runs'])} |")
    for s in study["sizes"]:
        md += ["", f"### {s['train_samples']} training sentences", "", markdown(s, task).rstrip("\n")]
    return "\n".join(md) + "\n"


def _train_info(row: dict | None) -> dict:
    t = (row or {}).get("train") or {}
    return {"examples": t.get("examples"), "steps": t.get("steps"), "dev_accuracy": t.get("dev_accuracy")}


def _seed_rows(spec: ChainSpec, stage: str, seeds: list[int], out: Path | None, log) -> tuple[list[dict], Path]:
    rows = []
    for seed in seeds:
        res = run_chain(reseeded(spec, stage, seed), out, log=log)
        out = Path(res["output"])
        b = res["baseline"]
        if b["chain_accuracy"] is None or b["accuracy"] is None:
            raise ChainpressError(f"seed {seed}: no accuracy to compare ({b['status']}: {b['reason']}); "
                                  f"see {out / 'report.md'}")
        chain_row = next((r for r in res["stages"] if r["name"] == b["chain_stage"]), None)
        rows.append({"seed": seed, "chain": b["chain_accuracy"], "direct": b["accuracy"],
                     "chain_stage": b["chain_stage"], "direct_stage": b["stage"],
                     "chain_train": _train_info(chain_row), "direct_train": _train_info(b["row"])})
        log(f"seed {seed}: chain {b['chain_accuracy']:.4f}, direct {b['accuracy']:.4f}")
    return rows, out


def run_seeds(spec: ChainSpec, stage: str, seeds: list[int], out: Path | None = None, log=print) -> dict:
    rows, out = _seed_rows(spec, stage, seeds, out, log)
    summary = summarize(rows)
    summary["task"] = spec.baseline_stage().task
    write_json_atomic(out / "seeds.json", summary)
    (out / "seeds.md").write_text(markdown(summary, summary["task"]))
    return summary


def run_sizes(spec: ChainSpec, stage: str, seeds: list[int], sizes: list[int], out: Path | None = None,
              log=print) -> dict:
    """``run_seeds`` once per training-set size of the final task; one output directory, so
    the stages before ``stage`` are trained once for every size and seed."""
    specs = [sized(spec, n) for n in sizes]  # every size checked before anything trains
    reseeded(spec, stage, seeds[0])
    study = {"task": spec.baseline_stage().task, "stage": stage, "seeds": list(seeds), "sizes": []}
    for n, sp in zip(sizes, specs):
        log(f"== {n} training sentences of {study['task']}")
        rows, out = _seed_rows(sp, stage, seeds, out, log)
        study["sizes"].append({"train_samples": n, **summarize(rows)})
        write_json_atomic(out / "seeds.json", study)  # after every size: a stopped study keeps its sizes
        (out / "seeds.md").write_text(sizes_markdown(study))
    return study


class _Parser(argparse.ArgumentParser):
    """A usage error is one ``error: ...`` line and exit 2, as for every chainpress command."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None, prog: str = "python -m chain.seeds") -> int:
    from .cli import add_common, guarded, positive_int, quiet_libraries

    p = _Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path)
    p.add_argument("--stage", required=True, help="first stage to reseed (earlier ones are shared)")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--train-samples", type=positive_int, nargs="+", metavar="N",
                   help="training-set sizes of the final task, one study per size (both arms)")
    add_common(p, output=True, output_help="output directory (default: the spec's)")
    try:
        a = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    quiet_libraries(a.verbose, a.quiet)
    log = (lambda m: None) if a.quiet else print

    def body() -> int:
        if len(set(a.seeds)) != len(a.seeds):
            raise SpecError(f"--seeds: each seed once, got {a.seeds}")
        if a.train_samples and len(set(a.train_samples)) != len(a.train_samples):
            raise SpecError(f"--train-samples: each size once, got {a.train_samples}")
        spec = load_spec(a.spec)
        if a.train_samples:
            print(sizes_markdown(run_sizes(spec, a.stage, a.seeds, a.train_samples, a.output, log=log)))
        else:
            summary = run_seeds(spec, a.stage, a.seeds, a.output, log=log)
            print(markdown(summary, summary["task"]))
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
