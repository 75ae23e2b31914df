"""``python -m bench --search``: how hard to prune is decided by the dev split, not a recipe.

The default chain prunes half the heads and 60% of the FFN neurons, a recipe tuned on
SST-2 that loses 4.8 points on another user's data. The search walks a ladder of
pruning strengths (heads, FFN neurons, whole layers), mild to aggressive (``LADDER``),
each followed by the default chain's distilled recovery: a level is kept while its
recovered model's accuracy on the **dev** split stays within ``--max-drop`` points of the
fine-tuned reference. A level over budget rules out every later level at least as strong in
each dimension (``dominates``: they would lose more), not the rest of the ladder, which mixes
dimensions: on an AVX-512 EPYC, stopping at the first level over budget (one layer dropped)
left FFN 0.75, fewer FLOPs and within budget (dev -0.69), untried. Its batch-32 pick was
1.85x the best peer then (2026-12-04), and 2.04x with this rule and 4-bit NNCF embeddings
(2026-12-07, docs/results/bench-2026-12-07-avx512.md).
A level over budget is first retried once with a longer recovery (``--retry-epochs``, 4
against the default chain's 2): on SST-2 one layer dropped went from dev -1.83 to +0.46 that
way, on Subj 0.5/0.6 from -1.40 to -0.50 (docs/results/recovery-2026-12-07.md).
The walk ends with the ladder, or when the next level (or retry) would not fit in
``--time-budget``, judged by the time the last trial took (the first level always runs).
Each kept level then gets the default chain's exports (ONNX, ONNX Runtime int8, OpenVINO
int8), every row is timed in the normal bench run, and the best-per-workload pick chooses
among them with the same dev budget.
Trials are chain stages, so they are cached: a re-run, or a longer ``--time-budget`` after a
short one, retrains nothing it has.

With ``--ray ADDRESS`` the levels are Ray Tune trials instead, run side by side on the
cluster (``bench.search_ray``): all of them are measured, and every level within budget is
kept, including those the walk would pass over.

Static (calibrated QDQ) int8 is not a search dimension: on an AVX-512 VNNI CPU it ran at 281
samples/s against dynamic int8's 498 on the same graph and dev accuracy
(docs/results/bench-layer-drop-2026-12-03.md); not measured on AMX.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

from chain.artifact import Artifact
from chain.errors import SpecError
from chain.executor import chain_session
from chain.spec import parse_spec
from chain.stage import RunContext

from .spec import BenchConfig, bench_raw, drop_unsupported, reference_of

BRANCH_ROOT = "pruned"  # the default chain's pruning branch: this stage and those built on it
# mild -> aggressive, ordered by the encoder FLOPs a level keeps (per layer 4h^2 attention
# projections, 8h^2 FFN; ``layers`` drops the top layers whole): 65%, 43%, 36%, 33%, 29%, 24%
# of MiniLM's. On SST-2 one layer dropped beat FFN 0.75 on dev and test at the same int8 speed
# (docs/results/bench-layer-drop-2026-12-03.md). The default chain's level keeps its row names.
LADDER = ({"heads": 0.25, "ffn": 0.4}, {"heads": 0.5, "ffn": 0.6}, {"heads": 0.5, "ffn": 0.6, "layers": 1 / 6},
          {"heads": 0.5, "ffn": 0.75}, {"heads": 0.5, "ffn": 0.6, "layers": 1 / 3}, {"heads": 0.67, "ffn": 0.8})


NOT_FOR_MODEL = "not for this model"
DIMENSIONS = ("heads", "ffn", "layers")


def dominates(level: dict, other: dict) -> bool:
    """Whether ``level`` prunes at least as much as ``other`` in every dimension."""
    return all(level.get(k, 0) >= other.get(k, 0) for k in DIMENSIONS)


@dataclass
class SearchConfig:
    max_drop: float = 1.0  # accuracy points on dev the recovered model may lose vs the reference
    # no level starts unless it fits, judged by the last one's time; the timing after the walk
    # takes 10-15 min more on 2 vCPUs, so the whole search stays within about 45 min
    time_budget_s: float = 1800.0
    levels: list[dict] = field(default_factory=lambda: [dict(x) for x in LADDER])
    ray: str | None = None  # a Ray address (local, auto, ray://host:10001): every level a Ray Tune trial
    # A level over budget is retried once with its recovery trained this many epochs (0: no
    # retry). The default chain's recovery runs 2; 4 brought one dropped layer on SST-2 from
    # dev -1.83 to +0.46 and Subj's 0.5/0.6 from -1.40 to -0.50 (docs/results/recovery-2026-12-07.md)
    retry_epochs: float = 4.0

    def __post_init__(self) -> None:
        e = self.retry_epochs
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e < float("inf"):
            raise SpecError(f"--retry-epochs must be a number of epochs >= 0 (0: no retry), got {e!r}")
        if not self.max_drop >= 0:
            raise SpecError(f"--max-drop must be >= 0 accuracy points, got {self.max_drop}")
        if not self.time_budget_s > 0:
            raise SpecError(f"--time-budget must be a positive number of seconds, got {self.time_budget_s}")


def _branch(stages: list[dict]) -> list[dict]:
    """The stage dicts of the pruning branch, in order (explicit parents required there)."""
    names, out = {BRANCH_ROOT}, []
    for st in stages:
        if st["name"] == BRANCH_ROOT or st.get("parent") in names:
            names.add(st["name"])
            out.append(st)
    return out


def _suffix(level: dict) -> str:
    return "-" + "-".join(f"{k[0]}{round(100 * v)}" for k, v in sorted(level.items()) if v)


def level_stages(template: list[dict], level: dict, default: dict, epochs: float = 0) -> list[dict]:
    """The branch for one level: its prune config, renamed unless it is the default's. With
    ``epochs`` the recovery (the stage built on the pruned one) trains that many epochs, and it
    and its exports are named ``-eN``; the pruned stage is shared."""
    sfx = "" if level == default else _suffix(level)
    aug = f"-e{epochs:g}" if epochs else ""
    names = {st["name"] for st in template}

    def rename(n):
        return n.replace(BRANCH_ROOT, BRANCH_ROOT + sfx, 1) if n == BRANCH_ROOT else \
            (n.replace("recovered", "recovered" + sfx + aug, 1) if n in names else n)
    out = []
    for st in template:
        st = copy.deepcopy(st)
        recovery = st.get("parent") == BRANCH_ROOT
        st["name"], st["parent"] = rename(st["name"]), rename(st.get("parent"))
        if st["name"].startswith(BRANCH_ROOT):
            st["config"] = {**(st.get("config") or {}), **level}
        elif recovery and epochs:
            st["config"] = {**(st.get("config") or {}), "epochs": epochs}
        out.append(st)
    return out


@dataclass
class Plan:
    """What every trial shares: the spec dict, the branch template, the reference stage."""
    raw: dict
    base: Path
    template: list[dict]
    default: dict
    others: list[dict]
    ref: str

    @property
    def ref_stage(self) -> dict:
        return next(st for st in self.others if st["name"] == self.ref)

    @property
    def recovery_epochs(self) -> float:
        """The epochs of the template's recovery (the stage built on the pruned one)."""
        rec = next((st for st in self.template if st.get("parent") == BRANCH_ROOT), {})
        default = ((self.raw.get("defaults") or {}).get("finetune") or {}).get("epochs", 3.0)
        return float((rec.get("config") or {}).get("epochs", default))

    def branch(self, level: dict, epochs: float = 0) -> list[dict]:
        return level_stages(self.template, level, self.default, epochs)


def plan_of(cfg: BenchConfig) -> Plan:
    if cfg.spec is not None or cfg.finetuned:
        raise SpecError("--search walks the default chain's pruning branch; drop --spec/--finetuned")
    raw, base = bench_raw(cfg)
    template = _branch(raw["stages"])
    if not template:
        raise SpecError(f"--search: the chain has no {BRANCH_ROOT!r} stage to vary")
    default = {k: template[0]["config"][k] for k in ("heads", "ffn", "layers") if k in template[0].get("config", {})}
    others = [st for st in raw["stages"] if st not in template]
    ref = reference_of(cfg, parse_spec({**raw, "stages": others}, base))
    return Plan(raw, base, template, default, others, ref)


def refusal(plan: Plan, level: dict) -> str:
    """'' if this model's architecture can prune at ``level``, else why not (``chain.arch``):
    e.g. Qwen2 prunes heads as whole KV groups, so heads 0.25 of 2 groups removes none."""
    branch = plan.branch(level)
    _, refused = drop_unsupported(parse_spec({**plan.raw, "stages": [plan.ref_stage] + branch[:2]}, plan.base))
    return f"{refused[0][0]} is {refused[0][3]}" if refused else ""


def probe(plan: Plan, level: dict, output: Path, threads: int, log=print, epochs: float = 0) -> dict:
    """Prune + recovery of one level after the reference, run (or found cached) in ``output``:
    -> {stage, dev accuracy of the reference and of the recovered model, artifacts, reason}."""
    branch = plan.branch(level, epochs)
    recovered = next(st["name"] for st in branch if st.get("parent") == branch[0]["name"])
    spec, refused = drop_unsupported(parse_spec({**plan.raw, "stages": [plan.ref_stage] + branch[:2]}, plan.base))
    if refused:
        raise SpecError(f"--search: {refused[0][0]} is {refused[0][3]}")
    with chain_session(spec, Path(output), None, log, RunContext(threads=threads, log=log)) as run:
        rows = {r["name"]: r for r in run.run(baseline=False)["stages"]}
        acc = {}
        for name in (plan.ref, recovered):
            r = rows.get(name)
            if r and r.get("artifact"):
                task = r["task"]
                acc[name] = run.gate_evaluator.accuracy(Artifact.load(r["artifact"]), [task])[task]["accuracy"]
    return {"stage": recovered, "accuracy": acc, "reason": (rows.get(recovered) or {}).get("reason", ""),
            "artifacts": {n: r["artifact"] for n, r in rows.items() if r.get("artifact")}}


def judge(plan: Plan, level: dict, result: dict, max_drop: float) -> dict:
    """One trial's row: within or over the dev budget, or failed."""
    acc, recovered = result["accuracy"], result["stage"]
    if plan.ref not in acc or recovered not in acc:
        return {"level": level, "status": "failed", "reason": result.get("reason", "")}
    drop = round(100 * (acc[plan.ref] - acc[recovered]), 2)
    return {"level": level, "stage": recovered, "dev_accuracy": acc[recovered],
            "reference_dev_accuracy": acc[plan.ref], "dev_drop_points": drop,
            "status": "within budget" if drop <= max_drop + 1e-9 else "over budget"}


def _walk(cfg: BenchConfig, search: SearchConfig, plan: Plan, log) -> tuple[list[dict], list[dict]]:
    """In this process, mild to aggressive; a level at least as strong as one over budget is
    passed over (``dominates``), every other level runs while the time budget lasts."""
    t0, trials, kept, over = time.perf_counter(), [], [], []
    last = 0.0  # seconds the last trial took: a level does not start unless one as long still fits
    for i, level in enumerate(search.levels):
        why = refusal(plan, level)
        if why:  # a level this architecture cannot take is said and passed over, never fatal
            log(f"search: level {level} passed over: {why}")
            trials.append({"level": level, "status": NOT_FOR_MODEL, "reason": why})
            continue
        if worse := next((o for o in over if dominates(level, o)), None):
            trials.append({"level": level, "status": "not tried",
                           "reason": f"at least as strong as {_fmt_level(worse)}, over budget"})
            continue
        spent = time.perf_counter() - t0
        if any("stage" in t for t in trials) and spent + last > search.time_budget_s:  # the first always runs
            trials.append({"level": level, "status": "not tried", "reason": _no_time(search, spent, last)})
            continue
        log(f"search: level {level} ({i + 1}/{len(search.levels)})")
        start = time.perf_counter()
        trial = _trial(plan, level, cfg, search, log)
        last = time.perf_counter() - start
        trials.append(trial)
        if trial["status"] == "failed":
            break
        branch = plan.branch(level)
        within = trial["status"] == "within budget"
        e, spent = search.retry_epochs, time.perf_counter() - t0
        longer = last * e / max(plan.recovery_epochs, 1e-9)  # the pruned model is cached by then
        if not within and e and spent + longer > search.time_budget_s:
            trials.append({"level": level, "status": "not tried", "recovery": f"{e:g} epochs",
                           "reason": _no_time(search, spent, longer, "the longer recovery would take about")})
        elif not within and e:
            log(f"search: level {level} again, its recovery trained {e:g} epochs")
            start = time.perf_counter()
            retry = {**_trial(plan, level, cfg, search, log, e), "recovery": f"{e:g} epochs"}
            last = time.perf_counter() - start
            trials.append(retry)
            if retry["status"] == "within budget":
                within, branch = True, branch[:2] + plan.branch(level, e)[1:]
        if not within:
            log(f"search: over --max-drop {search.max_drop:g}, stronger levels not tried")
        kept += branch if within else branch[:2]  # an over-budget level is reported, not exported
        if not within:
            over.append(level)
    return trials, kept


def _no_time(search: SearchConfig, spent: float, needs: float, what: str = "the last trial took") -> str:
    return f"--time-budget {search.time_budget_s:g} s: {spent:.0f} s spent, {what} {needs:.0f} s"


def _trial(plan: Plan, level: dict, cfg: BenchConfig, search: SearchConfig, log, epochs: float = 0) -> dict:
    trial = judge(plan, level, probe(plan, level, Path(cfg.output), cfg.threads, log, epochs), search.max_drop)
    if trial["status"] != "failed":
        log(f"search: {trial['stage']}: dev {trial['dev_accuracy']:.4f} ({-trial['dev_drop_points']:+.2f} pts vs "
            f"{plan.ref})")
    return trial


def _fmt_level(level: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in level.items())


def run_search(cfg: BenchConfig, search: SearchConfig, log=print) -> tuple[object, dict]:
    """Walk the ladder on dev; -> (the spec to time: default chain + kept levels, the search record).

    With ``search.ray`` every level is a Ray Tune trial (``bench.search_ray``)."""
    plan = plan_of(cfg)
    t0 = time.perf_counter()
    if search.ray:
        from .search_ray import tune_levels

        trials, kept = tune_levels(cfg, search, plan, log)
    else:
        trials, kept = _walk(cfg, search, plan, log)
    final = {**plan.raw, "stages": plan.others + kept}
    record = {"max_drop_points": search.max_drop, "time_budget_s": search.time_budget_s, "split": "dev",
              "trials": trials, "wall_time_s": round(time.perf_counter() - t0, 1),
              "runner": f"Ray Tune ({search.ray})" if search.ray else "in process"}
    return parse_spec(final, plan.base), record


def markdown(record: dict) -> list[str]:
    lines = ["## Search", "",
             f"Pruning levels tried, mild to aggressive, each with the distilled recovery; kept while the "
             f"recovered model is within {record['max_drop_points']:g} point(s) of the reference on dev "
             f"(a level at least as strong as one over budget is not tried; time budget "
             f"{record['time_budget_s']:g} s, spent {record['wall_time_s']:g} s; trials run "
             f"{record.get('runner', 'in process')}).", "",
             "| level | recovered stage | dev accuracy | Δ dev (pts) | status |", "|---|---|---|---|---|"]
    for t in record["trials"]:
        lvl = _fmt_level(t["level"]) + (f" ({t['recovery']})" if t.get("recovery") else "")
        d = t.get("dev_drop_points")
        lines.append(f"| {lvl} | {t.get('stage', '—')} | "
                     + (f"{t['dev_accuracy']:.4f} | {-d:+.2f}" if d is not None else "— | —")
                     + f" | {t['status']}{': ' + t['reason'] if t.get('reason') else ''} |")
    return lines + [""]
