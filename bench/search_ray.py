"""``python -m bench --search --ray ADDRESS``: the pruning levels as Ray Tune trials.

One level (prune + distilled recovery) takes minutes on a laptop's two cores; a cluster
can run them side by side. The driver computes the reference first (cached, as always),
then Ray Tune runs one function trial per level with ``--threads`` CPUs each. A trial
cannot share the output directory (one run per directory, ``chain.cache.output_lock``),
so each works in ``OUT/search-trials/<level>/`` with a linked copy of the reference
artifact (same cache key, so nothing is retrained) and the driver links the artifacts it
made into ``OUT/artifacts/``: the timing run that follows, and any re-run, find them
cached. On a real cluster ``--output`` must be on storage every node mounts at the same
path, and every node needs chainpress installed; a trial whose artifacts the driver
cannot see is reported as failed, with that reason.

Unlike the in-process walk, every level is measured (a level does not wait for the one
before it), so every level within ``--max-drop`` is kept. ``--time-budget`` keeps its
meaning: a trial that would start after it reports "not tried" instead of running. A level
over budget is not retried with a longer recovery here: ``--retry-epochs`` is the in-process
walk's, and ``python -m bench`` refuses it with ``--ray``.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from chain.artifact import MANIFEST
from chain.errors import SpecError
from chain.executor import chain_session
from chain.ray_cluster import connect, cpus
from chain.spec import parse_spec
from chain.stage import RunContext

from .search import NOT_FOR_MODEL, Plan, SearchConfig, _suffix, judge, probe, refusal
from .spec import BenchConfig

TRIALS = "search-trials"


def _link_tree(src: Path, dst: Path) -> None:
    """A copy of an artifact whose big files are hard links (its manifest, which gains
    evaluations, is a real copy so trials never write the original)."""
    def link(a, b):
        if Path(a).name == MANIFEST:
            return shutil.copy2(a, b)
        try:
            os.link(a, b)
        except OSError:  # another filesystem
            shutil.copy2(a, b)
    if not dst.exists():
        shutil.copytree(src, dst, copy_function=link)


def _reference(cfg: BenchConfig, plan: Plan, log) -> Path:
    """The reference artifact in OUT (trained once, here, before any trial starts)."""
    spec = parse_spec({**plan.raw, "stages": [plan.ref_stage]}, plan.base)
    with chain_session(spec, Path(cfg.output), None, log, RunContext(threads=cfg.threads, log=log)) as run:
        row = next(r for r in run.run(baseline=False)["stages"] if r["name"] == plan.ref)
    if not row.get("artifact"):
        raise SpecError(f"--search: the reference stage {plan.ref} failed: {row.get('reason', '')}")
    return Path(row["artifact"])


def trial(config: dict, plan: Plan, output: str, threads: int, ref_artifact: str, t0: float, budget: float) -> dict:
    """One level, in a directory of its own (what each Ray Tune trial runs)."""
    level = config["level"]
    spent = time.time() - t0
    if spent > budget and not config["first"]:  # the first level always runs, as in the walk
        return {"status": "not tried", "reason": f"--time-budget {budget:g} s spent ({spent:.0f} s)"}
    work = Path(output) / TRIALS / (_suffix(level).lstrip("-") or "default")
    ref = Path(ref_artifact)
    _link_tree(ref, work / "artifacts" / ref.name)
    with open(work / "log.txt", "a") as f:
        def log(msg: str) -> None:
            print(msg, file=f, flush=True)
        started = time.perf_counter()
        result = probe(plan, level, work, threads, log)
    return {"status": "ran", "result": result, "wall_time_s": round(time.perf_counter() - started, 1)}


def _trainable(config: dict, **kwargs) -> None:
    from ray import tune

    tune.report(trial(config["trial"], **kwargs))


def _adopt(result: dict, output: Path, ref: str) -> str:
    """Link a trial's new artifacts into OUT/artifacts (the trial keeps its own, so a re-run
    of the trial is cached too); -> '' or why they cannot be used."""
    for name, path in result["artifacts"].items():
        src = Path(path)
        if name == ref:
            continue
        if not (src / MANIFEST).exists():
            return f"its artifact {src} is not visible from this machine: put --output on storage every node mounts"
        _link_tree(src, output / "artifacts" / src.name)
    return ""


def tune_levels(cfg: BenchConfig, search: SearchConfig, plan: Plan, log) -> tuple[list[dict], list[dict]]:
    """Every level as a Ray Tune trial; -> (trial rows in ladder order, the branch stages kept)."""
    ray = connect(search.ray, needs="Ray Tune", pip="ray[tune]")
    from ray import tune

    have = cpus(ray)
    if cfg.threads > have:  # Tune would wait forever for a trial it cannot place
        raise SpecError(f"--threads {cfg.threads} per trial, but the Ray cluster has {have:g} CPUs: lower --threads")
    output = Path(cfg.output).resolve()
    ref = _reference(cfg, plan, log)
    refused = {i: why for i, lv in enumerate(search.levels) if (why := refusal(plan, lv))}
    runs = [i for i in range(len(search.levels)) if i not in refused]  # indices into the ladder
    log(f"search: {len(runs)} levels as Ray Tune trials, {cfg.threads} CPU(s) each, "
        f"{int(have // cfg.threads)} at a time" + (f"; {len(refused)} passed over (not for this model)"
                                                    if refused else ""))
    if not runs:
        return [{"level": lv, "status": NOT_FOR_MODEL, "reason": refused[i]}
                for i, lv in enumerate(search.levels)], []
    fn = tune.with_parameters(_trainable, plan=plan, output=str(output), threads=cfg.threads, ref_artifact=str(ref),
                              t0=time.time(), budget=search.time_budget_s)
    tuner = tune.Tuner(tune.with_resources(fn, {"cpu": cfg.threads}),
                       param_space={"trial": tune.grid_search([{"index": i, "first": i == runs[0],
                                                                 "level": search.levels[i]} for i in runs])},
                       run_config=tune.RunConfig(storage_path=str(output / TRIALS / "tune"), name="search",
                                                 verbose=0))
    by_index = {}
    for r in tuner.fit():
        by_index[r.config["trial"]["index"]] = (r.metrics or {}, r.error)
    trials, kept = [], []
    for i, level in enumerate(search.levels):
        if i in refused:
            trials.append({"level": level, "status": NOT_FOR_MODEL, "reason": refused[i]})
            continue
        metrics, error = by_index.get(i, ({}, "Ray Tune returned no result"))
        if error or metrics.get("status") not in ("ran", "not tried"):
            first = str(error or metrics).strip().splitlines()
            trials.append({"level": level, "status": "failed", "reason": first[-1] if first else "trial failed"})
            continue
        if metrics["status"] == "not tried":
            trials.append({"level": level, "status": "not tried", "reason": metrics["reason"]})
            continue
        result = metrics["result"]
        lost = _adopt(result, output, plan.ref)
        row = judge(plan, level, result, search.max_drop) if not lost else \
            {"level": level, "status": "failed", "reason": lost}
        row["trial_wall_time_s"] = metrics.get("wall_time_s")
        trials.append(row)
        if row["status"] != "failed":
            log(f"search: {row['stage']}: dev {row['dev_accuracy']:.4f} ({-row['dev_drop_points']:+.2f} pts) "
                f"{row['status']}")
            branch = plan.branch(level)
            kept += branch if row["status"] == "within budget" else branch[:2]
    return trials, kept
