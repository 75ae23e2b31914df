"""Forgetting study: the same chain with each forgetting-control method, over seeds.

Every method runs the spec's fine-tune stages (other stage types are dropped) with its
options set on every fine-tune stage from ``--stage`` on; the seed is set on those stages
too (earlier stages are shared and cached, as in ``chain.seeds``). Each run's forgetting
matrix (after-stage x task accuracy on the eval split, each task scored with its own head)
is kept, then summarised per method as mean ± sd over seeds, with the goal check of
issue 14: every earlier task within ``--max-mean-drop`` points (mean over seeds) and
``--max-worst-drop`` points (worst seed) of its own stage's accuracy, and the final task
within ``--max-final-drop`` points of the method named ``none`` (no forgetting control).

    python -m chain.forgetting examples/sentiment_chain.yaml --stage sst5 --seeds 1 2 3 \\
        --method none --method rehearsal:fraction=0.1 --method l2sp:weight=0.1 \\
        --set epochs=1 --report docs/results/forgetting-2026-12-02

Gates are dropped (a study must not roll a method back); ``--dev`` puts a floor-0 gate on
every stage instead, which never fires but makes the executor measure the dev split too:
what a choice of lambda or fraction must read, never test. A (method, seed) already
recorded under ``OUT/forgetting/`` with the same knobs is read back, not rerun.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

from .errors import ChainpressError, SpecError
from .finetune_config import EWCSettings, FineTuneConfig, L2SPSettings, LoraSettings, RehearsalSettings
from .gates import GateConfig
from .jsonio import read_json, write_json_atomic, write_text_atomic
from .spec import ChainSpec
from .typed import coerce

OPTIONS = {"rehearsal": RehearsalSettings, "l2sp": L2SPSettings, "ewc": EWCSettings, "lora": LoraSettings}


def parse_method(text: str) -> tuple[str, dict]:
    """``"l2sp:weight=0.01"`` -> ("l2sp:weight=0.01", {"l2sp": {"weight": 0.01}}); ``"none"`` -> {}.

    Several options join with ``+``: ``rehearsal:fraction=0.1+l2sp:weight=0.01``; ``set:`` gives
    the method its own fine-tune config overrides: ``lora:merge=ties+set:learning_rate=5e-4``."""
    if text == "none":
        return text, {}
    out: dict = {}
    for part in text.split("+"):
        kind, _, args = part.partition(":")
        if kind == "set":  # this method's own config overrides, e.g. LoRA's learning rate
            out["set"] = parse_overrides(list(filter(None, args.split(","))))
            continue
        if kind not in OPTIONS:
            raise SpecError(f"--method {text!r}: {kind!r} is not 'none', 'set' or one of {', '.join(OPTIONS)}")
        kw = {}
        for item in filter(None, args.split(",")):
            k, eq, v = item.partition("=")
            if not eq:
                raise SpecError(f"--method {text!r}: {item!r} is not KEY=VALUE")
            kw[k] = _value(v)
        from .typed import build_dataclass

        out[kind] = dataclasses.asdict(build_dataclass(OPTIONS[kind], kw, f"--method {text}"))
    return text, out


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=1", "batch_size=8"]`` -> {"epochs": 1.0, "batch_size": 8}, typed by FineTuneConfig."""
    import typing

    from .typed import coerce

    hints = typing.get_type_hints(FineTuneConfig)
    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or k not in hints or k in ("seed", "task", *OPTIONS):
            raise SpecError(f"--set {item!r}: give FIELD=VALUE with a fine-tune config field other than "
                            f"seed, task, {', '.join(OPTIONS)}")
        import yaml

        out[k] = coerce(yaml.safe_load(v), hints[k], f"--set {k}")
    try:
        FineTuneConfig(**out)  # validated as a stage config would be
    except SpecError as e:
        raise SpecError(f"--set: {e}") from None
    return out


def _value(v: str) -> int | float | str:
    """``"8"`` -> 8, ``"1e4"`` -> 10000.0, ``"ties"`` -> "ties"."""
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def variant(spec: ChainSpec, stage: str, seed: int, options: dict, overrides: dict | None = None,
            eval_samples: int | None = None, dev: bool = False, until: str | None = None) -> ChainSpec:
    """``spec``'s fine-tune stages, with ``options``, ``seed`` and the config ``overrides`` (all
    methods alike) on ``stage`` and later; no gates (``dev``: a floor-0 gate on each, so the
    dev split is measured too); stages after ``until`` are dropped."""
    names = [s.name for s in spec.stages]
    if stage not in names:
        raise SpecError(f"--stage {stage!r}: no such stage; stages: {', '.join(names)}")
    start = names.index(stage)
    if until is not None and until not in names:
        raise SpecError(f"--until {until!r}: no such stage; stages: {', '.join(names)}")
    stop = names.index(until) if until is not None else len(names) - 1
    stages = []
    for s in spec.stages:
        if not isinstance(s.config, FineTuneConfig):
            continue
        i = names.index(s.name)
        if i > stop:
            break
        cfg = dataclasses.replace(s.config, show_progress=False)
        if i >= start:
            # the method replaces whatever forgetting control the spec sets ('none': none at all)
            # `lora` freezes the base itself: it replaces the spec's `freeze`
            cfg = dataclasses.replace(cfg, seed=seed, **({"freeze": []} if "lora" in options else {}),
                                      **{**{k: None for k in OPTIONS},
                                         **{k: coerce(v, OPTIONS[k], f"--method {k}")
                                            for k, v in options.items() if k != "set"}})
            cfg = dataclasses.replace(cfg, **{**(overrides or {}), **options.get("set", {})})
        gate = GateConfig(min_accuracy=0.0, on_fail="stop") if dev else None
        stages.append(dataclasses.replace(s, config=cfg, gate=gate))
    ev = spec.eval if eval_samples is None else dataclasses.replace(spec.eval, max_samples=eval_samples)
    return dataclasses.replace(spec, stages=stages, baseline=False, eval=ev)


def run_row(results: dict) -> dict:
    """One run's forgetting matrix (eval split) and dev matrix from ``run_chain``'s results."""
    rows = [r for r in results["stages"] if r["type"] == "finetune"]
    bad = [r for r in rows if r["status"] not in ("ok", "cached")]
    if bad:
        raise ChainpressError(f"stage {bad[0]['name']} {bad[0]['status']}: {bad[0]['reason']}")
    return {"stages": [r["name"] for r in rows], "own_task": {r["name"]: r["task"] for r in rows},
            "test": {r["name"]: r["accuracy_by_task"] for r in rows},
            "dev": {r["name"]: r["gate_accuracy"] or None for r in rows},
            "train": {r["name"]: r["train"] for r in rows}}


def _ms(xs: list[float]) -> dict:
    return {"mean": statistics.mean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else None, "n": len(xs)}


def summarize(runs: dict[str, list[dict]], split: str = "test", baseline: str = "none",
              max_mean: float = 1.0, max_worst: float = 2.0, max_final: float = 0.5) -> dict:
    """Per method: the matrix as mean ± sd, each earlier task's drop (points) and the goal check."""
    out = {}
    for method, rows in runs.items():
        stages, own = rows[0]["stages"], rows[0]["own_task"]
        matrix = {st: {t: _ms([r[split][st][t] for r in rows]) for t in rows[0][split][st]
                       if all(r[split][st].get(t) is not None for r in rows)} for st in stages}
        last = stages[-1]
        drops = {}
        for st in stages[:-1]:
            t = own[st]
            d = [100 * (r[split][st][t] - r[split][last][t]) for r in rows]
            drops[t] = {**_ms(d), "worst": max(d)}
        out[method] = {"seeds": [r["seed"] for r in rows], "matrix": matrix, "drop_points": drops,
                       "final_task": own[last], "final": _ms([r[split][last][own[last]] for r in rows])}
    base = out.get(baseline)
    for m in out.values():
        d = m["drop_points"]
        g = {"mean_drop_ok": all(x["mean"] <= max_mean + 1e-9 for x in d.values()),
             "worst_drop_ok": all(x["worst"] <= max_worst + 1e-9 for x in d.values())}
        if base is not None:
            m["final_vs_baseline_points"] = 100 * (m["final"]["mean"] - base["final"]["mean"])
            g["final_ok"] = m["final_vs_baseline_points"] >= -max_final - 1e-9  # k/n accuracies: no float noise
        g["all_ok"] = all(g.values())
        m["goal"] = g
    return {"split": split, "baseline": baseline,
            "thresholds_points": {"max_mean_drop": max_mean, "max_worst_drop": max_worst,
                                  "max_final_drop": max_final}, "methods": out}


def dev_pick(dev_methods: dict) -> dict:
    """The method a user should take, read off the **dev** split only: the highest mean accuracy
    of the final artifact over every task of the chain (each with its own head), i.e. the one
    model that serves the whole chain best; ties go to the first listed."""
    scores = {m: statistics.mean(x["mean"] for x in v["matrix"][list(v["matrix"])[-1]].values())
              for m, v in dev_methods.items()}
    best = max(scores, key=scores.get)
    return {"method": best, "rule": "highest mean dev accuracy of the final artifact over every task",
            "scores": scores}


def markdown(summary: dict) -> str:
    def f(x: dict | None) -> str:
        if x is None:
            return "—"
        return f"{x['mean']:.4f}" + (f" ± {x['sd']:.4f}" if x.get("sd") is not None else "")

    th = summary["thresholds_points"]
    md = []
    for method, m in summary["methods"].items():
        tasks = list(dict.fromkeys(t for row in m["matrix"].values() for t in row))
        md += [f"### {method} (seeds {', '.join(map(str, m['seeds']))}; {summary['split']} split)", "",
               "| after stage | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        md += [f"| {st} | " + " | ".join(f(row.get(t)) for t in tasks) + " |" for st, row in m["matrix"].items()]
        md.append("")
    md += ["### Goal check (points; drop = own stage's accuracy − final artifact's)", "",
           "| method | " + " | ".join(f"{t} drop mean (worst)" for t in next(iter(summary["methods"].values()))
                                     ["drop_points"]) + f" | final task vs {summary['baseline']} | goal |",
           "|---" * (3 + len(next(iter(summary["methods"].values()))["drop_points"])) + "|"]
    for method, m in summary["methods"].items():
        cells = [f"{d['mean']:+.2f} ({d['worst']:+.2f})" for d in m["drop_points"].values()]
        fv = m.get("final_vs_baseline_points")
        g = m["goal"]
        verdict = "met" if g["all_ok"] else "not met (" + ", ".join(k for k, v in g.items() if not v and k != "all_ok") + ")"
        md.append(f"| {method} | " + " | ".join(cells) + f" | {'—' if fv is None else format(fv, '+.2f')} | {verdict} |")
    md += ["", f"Goal: every earlier task's drop ≤ {th['max_mean_drop']} (mean over seeds) and ≤ "
           f"{th['max_worst_drop']} (worst seed); final task ≥ {summary['baseline']}'s mean − {th['max_final_drop']}."]
    if pick := summary.get("dev_pick"):
        md += ["", f"Picked on dev ({pick['rule']}): **{pick['method']}**; "
               + ", ".join(f"{m} {v:.4f}" for m, v in pick["scores"].items()) + "."]
    return "\n".join(md) + "\n"


def run_study(spec: ChainSpec, stage: str, seeds: list[int], methods: list[str], out: Path,
              log=print, **knobs) -> dict[str, list[dict]]:
    """Run every (seed, method) not already recorded under ``out/forgetting``; return the rows.

    Seeds are the outer loop, so a study cut short still compares every method on its first seeds."""
    from . import multihead, regularize  # noqa: F401  (imported now: every run uses the code of the start)
    from .executor import run_chain

    runs: dict[str, list[dict]] = {}
    for seed in seeds:
        for text in methods:
            name, options = parse_method(text)
            path = out / "forgetting" / _slug(name) / f"seed-{seed}.json"
            row = read_json(path) if path.is_file() else None
            if row is None or row.get("knobs") != knobs:
                res = run_chain(variant(spec, stage, seed, options, **knobs), out, log=log)
                row = {"method": name, "options": options, "seed": seed, "knobs": knobs, **run_row(res)}
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, row)
            runs.setdefault(name, []).append(row)
            last = row["stages"][-1]
            log(f"{name} seed {seed}: after {last}: " + ", ".join(f"{t} {a:.4f}" for t, a in row["test"][last].items()))
    return runs


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def main(argv=None, prog: str = "python -m chain.forgetting") -> int:
    from .cli import add_common, guarded, positive_int, quiet_libraries
    from .spec import load_spec

    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path)
    p.add_argument("--stage", required=True, help="first stage to reseed and to give the method's options")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--method", action="append", required=True,
                   help="'none', or KIND:KEY=VALUE,... with KIND rehearsal, l2sp, ewc or lora (e.g. "
                        "lora:merge=ties,density=0.5); repeat for each method")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="fine-tune config override on every reseeded stage, all methods alike "
                        "(e.g. epochs=1, max_train_samples=500); repeat for several")
    p.add_argument("--eval-samples", type=positive_int, default=None,
                   help="first N sentences of each task's eval split (eval.max_samples)")
    p.add_argument("--dev", action="store_true", help="also measure every stage on the dev split")
    p.add_argument("--until", default=None, help="last stage to run (a shorter chain)")
    p.add_argument("--report", type=Path, default=None, help="write REPORT.md and REPORT.json")
    add_common(p, output=True, output_help="run directory (default: the spec's output)")
    a = p.parse_args(argv)
    quiet_libraries(a.verbose, a.quiet)

    def body() -> int:
        for m in a.method:
            parse_method(m)  # bad methods and overrides fail before anything trains
        parse_overrides(a.set)
        spec = load_spec(a.spec)
        out = Path(a.output or spec.output or "runs/forgetting")
        knobs = {"overrides": parse_overrides(a.set), "eval_samples": a.eval_samples, "dev": a.dev,
                 **({"until": a.until} if a.until else {})}
        runs = run_study(spec, a.stage, a.seeds, a.method, out, log=(lambda m: None) if a.quiet else print, **knobs)
        summary = summarize(runs, spec.eval.split)
        if a.dev:
            summary["dev"] = summarize(runs, "dev")["methods"]
            summary["dev_pick"] = dev_pick(summary["dev"])
        summary["knobs"] = knobs
        summary["command"] = " ".join(["python -m chain.forgetting", *(argv if argv is not None else sys.argv[1:])])
        text = markdown(summary)
        print(text)
        if a.report:
            write_json_atomic(a.report.with_suffix(".json"), {**summary, "runs": runs})
            write_text_atomic(a.report.with_suffix(".md"), text)
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
