"""``python -m bench compare BASELINE.json CURRENT.json``: the regression gate.

A metric regresses only when its change is worse than the threshold *and* outside the
noise interval. Default (ratio) mode gates each stage's speedup over the run's own
reference stage, measured interleaved within one run, so a baseline recorded on another
machine still means something; ``absolute=True`` gates milliseconds and samples/s and
is refused unless both runs come from the same machine and thread count.

Noise model, per timing metric, in log space (d = ln(baseline / current) for a speedup;
d > 0 means slower):

* each run stores a paired-bootstrap 95% interval of the speedup; h_run is half its log-width;
* runs also differ by more than their own intervals show (load changes between runs affect
  PyTorch and ONNX Runtime differently): ``noise_floor_pct`` (default 5%) is added per run;
* h = z * sqrt(h_base^2 + h_cur^2 + 2 * floor^2), with z widened from 1.96 (Bonferroni) so
  that the chance of any false alarm in a run stays ~5% however many metrics are gated.

Per stage three timing metrics are tested: batch-1 latency, batch-32 throughput, and their
geometric mean ("overall", d = average of the two d's, h = half their h's in quadrature).
A slowdown that hits both shows up in "overall" with less noise than in either alone.
Fire when d > ln(1 + max_slowdown) and d > h. Accuracy on a fixed test set is
deterministic, so it is gated on the threshold alone.

>>> c = compare_results(load_results("base.json"), load_results("cur.json"), Thresholds(10, 0.5))
>>> c.regressed, print(format_table(c))
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist

from chain.errors import ChainpressError
from chain.jsonio import write_json_atomic

# Gated speedups. Latency uses the 10%-trimmed mean (steadier run to run than the median at
# equal calls); results without it (older runs) fall back to the median's speedup.
SPEED_METRICS = ("latency_tmean", "throughput")
FALLBACK = {"latency_tmean": "latency_p50"}


class CompareInputError(ChainpressError):
    """A baseline or current results file is missing, malformed or not comparable."""


@dataclass
class Thresholds:
    max_slowdown_pct: float = 10.0  # per stage: time relative to the reference may grow this much
    max_accuracy_drop_pts: float = 0.5  # accuracy points (0.5 = 0.005 accuracy)
    noise_floor_pct: float = 5.0  # run-to-run noise a single run cannot see, as a 95% half-width per run

    def __post_init__(self) -> None:
        if not (0 <= self.max_slowdown_pct < 1000) or not (0 <= self.max_accuracy_drop_pts <= 100) \
                or not (0 <= self.noise_floor_pct < 100):
            raise CompareInputError(f"thresholds must be >= 0 (slowdown and noise floor in %, accuracy drop in "
                                    f"points): {self}")


@dataclass
class Change:
    stage: str
    metric: str
    baseline: float | str | None
    current: float | str | None
    change_pct: float | None = None  # + = worse (slower / less accurate), in % or points
    noise_pct: float | None = None  # the noise interval's half-width, same unit
    verdict: str = "ok"  # ok | REGRESSION | within noise | improved | slower, under threshold


@dataclass
class Comparison:
    mode: str  # "ratio" | "absolute"
    thresholds: Thresholds
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return any(c.verdict == "REGRESSION" for c in self.changes)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "regressed": self.regressed, "thresholds": asdict(self.thresholds),
                "changes": [asdict(c) for c in self.changes], "notes": self.notes}


def parse_percent(text: str) -> float:
    """'10%' or '10' -> 10.0 (percent)."""
    try:
        return float(str(text).strip().rstrip("%"))
    except ValueError:
        raise CompareInputError(f"{text!r} is not a percentage; write e.g. 10% or 10") from None


def load_results(path: str | Path, role: str = "results") -> dict:
    """Read and structurally check a results.json written by ``python -m bench``."""
    p = Path(path)
    if not p.is_file():
        raise CompareInputError(f"{role} file {p} not found; give the results.json written by `python -m bench`")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CompareInputError(f"{role} file {p} is not valid JSON ({e}); give a results.json from "
                                "`python -m bench`") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or "reference" not in doc:
        raise CompareInputError(f"{role} file {p} is not a bench results.json (needs 'reference' and a "
                                "'stages' list); give the results.json written by `python -m bench`")
    for i, s in enumerate(doc["stages"]):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or "status" not in s:
            raise CompareInputError(f"{role} file {p}: stage #{i} has no 'name'/'status'; the file is "
                                    "damaged, re-run `python -m bench`")
        bad = _non_numeric(s)
        if bad:
            raise CompareInputError(f"{role} file {p}: stage {s['name']!r} field {bad} is not a positive number "
                                    "(or a pair of them); the file is damaged, re-run `python -m bench`")
    doc["_path"] = str(p)
    return doc


def _non_numeric(stage: dict) -> str | None:
    """The first gated field of a stage row that is not a number (pair), or None."""
    def ok(v, positive=True):
        if isinstance(v, list):
            return len(v) == 2 and all(ok(x, positive) for x in v)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)

    if stage.get("accuracy") is not None and not ok(stage["accuracy"], positive=False):
        return "accuracy"
    for group, keys in (("speedup", None), ("speedup_ci95", None), ("latency_ms", ("p50", "p50_ci95")),
                        ("throughput", ("samples_per_s", "samples_per_s_ci95"))):
        g = stage.get(group)
        if g is None:
            continue
        if not isinstance(g, dict):
            return group
        for k in keys or g:
            if g.get(k) is not None and not ok(g[k]):
                return f"{group}.{k}"
    return None


def merge_runs(runs: list[dict], role: str = "baseline") -> dict:
    """Several runs of the same code as one: per stage and metric, the median speedup.

    One baseline run recorded while the host's load changed shifts every later comparison;
    the median of 3 runs does not. For the current side, gating the median of the run and
    one re-run confirms a failure before it is reported (docs/gating.md). Each merged
    speedup keeps a typical single run's interval (the median half-width, not narrowed).
    """
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    for r in runs[1:]:
        _check_comparable(first, r, absolute=False)
        if [s["name"] for s in r["stages"]] != [s["name"] for s in first["stages"]]:
            raise CompareInputError(f"{role} runs {first['_path']} and {r['_path']} have different stages; "
                                    "merge runs of the same chain")
    out = json.loads(json.dumps({k: v for k, v in first.items() if k != "_path"}))
    out["_path"] = " + ".join(r["_path"] for r in runs)
    out["merged_runs"] = len(runs)
    for i, row in enumerate(out["stages"]):
        rows = [r["stages"][i] for r in runs]
        if any(not _ran(x) for x in rows):
            bad = next(x for x in rows if not _ran(x))
            out["stages"][i] = bad  # a stage that failed in any run failed
            continue
        for m in set.intersection(*(set(x.get("speedup") or {}) for x in rows)):
            mid = statistics.median(math.log(x["speedup"][m]) for x in rows)
            row["speedup"][m] = math.exp(mid)
            hs = [h for h in (_log_halfwidth((x.get("speedup_ci95") or {}).get(m)) for x in rows) if h is not None]
            if hs:
                h = statistics.median(hs)
                row.setdefault("speedup_ci95", {})[m] = [math.exp(mid - h), math.exp(mid + h)]
        for group, key in (("latency_ms", "p50"), ("throughput", "samples_per_s")):  # absolute mode
            if all((x.get(group) or {}).get(key) for x in rows):
                row[group][key] = statistics.median(x[group][key] for x in rows)
    return out


def _check_comparable(base: dict, cur: dict, absolute: bool) -> None:
    bp, cp = base["_path"], cur["_path"]
    for key, what in (("task", "task"), ("reference", "reference stage"), ("quick", "--quick setting")):
        if base.get(key) != cur.get(key):
            raise CompareInputError(f"baseline {bp} has {what} {base.get(key)!r} but current {cp} has "
                                    f"{cur.get(key)!r}; compare runs of the same chain and task")
    bnames, cnames = [s["name"] for s in base["stages"]], {s["name"] for s in cur["stages"]}
    missing = [n for n in bnames if n not in cnames]
    if missing:
        raise CompareInputError(f"baseline {bp} has stages {missing} that current {cp} lacks (current: "
                                f"{sorted(cnames)}); record a new baseline for this chain")
    ref = _stage(base, base["reference"])
    if ref is None or not _ran(ref):
        raise CompareInputError(f"baseline {bp}: reference stage {base['reference']!r} did not run ok; "
                                "record a baseline from a successful run")
    bt, ct = (d.get("environment", {}).get("threads") for d in (base, cur))
    if bt != ct:
        raise CompareInputError(f"baseline {bp} was timed with {bt} threads, current {cp} with {ct}; "
                                "speedups depend on the thread count, run both with the same --threads")
    for s in base["stages"]:
        c = _stage(cur, s["name"])
        if s.get("test_examples") and c.get("test_examples") and s["test_examples"] != c["test_examples"]:
            raise CompareInputError(f"stage {s['name']!r}: baseline evaluated {s['test_examples']} test examples, "
                                    f"current {c['test_examples']}; accuracies are not comparable")
    if absolute:
        be, ce = base.get("environment", {}), cur.get("environment", {})
        diff = [k for k in ("cpu", "cores") if be.get(k) != ce.get(k)]
        if diff:
            raise CompareInputError(
                f"--absolute needs a baseline from this machine, but {', '.join(diff)} differ "
                f"({', '.join(f'{be.get(k)!r} vs {ce.get(k)!r}' for k in diff)}); drop --absolute to gate on "
                "speedups, which carry across machines")


def _ran(stage: dict) -> bool:
    """Ran here, or was reused from the run's cache (the same artifact, timed in this run)."""
    return stage["status"] in ("ok", "cached")


def _stage(doc: dict, name: str) -> dict | None:
    return next((s for s in doc["stages"] if s["name"] == name), None)


def _log_halfwidth(ci) -> float | None:
    if not ci or len(ci) != 2 or min(ci) <= 0:
        return None
    return (math.log(ci[1]) - math.log(ci[0])) / 2


def _speedup_noise(doc: dict, stage: dict, metric: str) -> float | None:
    """Log half-width of a stage's speedup interval; for results without one (older runs),
    combine the reference's and the stage's latency-median intervals as if independent."""
    h = _log_halfwidth((stage.get("speedup_ci95") or {}).get(metric))
    if h is not None or metric != "latency_p50":
        return h
    ref = _stage(doc, doc["reference"]) or {}
    hs = [_log_halfwidth((s.get("latency_ms") or {}).get("p50_ci95")) for s in (ref, stage)]
    return None if None in hs else math.hypot(*hs)


@dataclass
class _Timed:
    """One timing metric before its verdict: d = ln(base/cur) of a speed (+ = slower)."""
    stage: str
    metric: str
    base: float
    cur: float
    h_base: float | None
    h_cur: float | None
    higher_is_better: bool = True
    floor_factor: float = 1.0  # the overall metric averages two metrics' floors: 1/sqrt(2)

    @property
    def d(self) -> float:
        d = math.log(self.base / self.cur)
        return d if self.higher_is_better else -d


def _verdicts(items: list[_Timed], thr: Thresholds) -> list[Change]:
    """Bonferroni over ``items``: z for a 5% chance of any false alarm among them."""
    z = NormalDist().inv_cdf(1 - 0.025 / max(len(items), 1))
    floor = math.log1p(thr.noise_floor_pct / 100)
    limit = math.log1p(thr.max_slowdown_pct / 100)
    out = []
    for t in items:
        d = t.d
        h = z / 1.96 * math.sqrt((t.h_base or 0.0) ** 2 + (t.h_cur or 0.0) ** 2 + 2 * (t.floor_factor * floor) ** 2)
        if d > h and d > limit:
            verdict = "REGRESSION"
        elif d < -h:
            verdict = "improved"
        elif abs(d) <= h:
            verdict = "within noise"
        else:
            verdict = "slower, under threshold"
        out.append(Change(t.stage, t.metric, t.base, t.cur, round(100 * math.expm1(d), 2),
                          round(100 * math.expm1(h), 2), verdict))
    return out


def compare_results(base: dict, cur: dict, thresholds: Thresholds = Thresholds(), absolute: bool = False,
                    include_peers: bool = False) -> Comparison:
    """Every gated metric of every stage present in both runs; see the module docstring."""
    _check_comparable(base, cur, absolute)
    out = Comparison("absolute" if absolute else "ratio", thresholds)
    ref_name = base["reference"]
    timed: list[_Timed] = []
    for b in base["stages"]:
        name, c = b["name"], _stage(cur, b["name"])
        if b.get("peer") and not include_peers:
            out.notes.append(f"{name}: peer row, not gated (pass --include-peers to gate it)")
            continue
        if not _ran(b):
            out.notes.append(f"{name}: {b['status']} in the baseline, not gated")
            continue
        if not _ran(c):
            out.changes.append(Change(name, "status", "ok", c["status"], verdict="REGRESSION"))
            continue
        if b.get("accuracy") is not None and c.get("accuracy") is not None:
            drop = round(100 * (b["accuracy"] - c["accuracy"]), 2)
            verdict = "REGRESSION" if drop > thresholds.max_accuracy_drop_pts else ("improved" if drop < 0 else "ok")
            out.changes.append(Change(name, "accuracy", b["accuracy"], c["accuracy"], drop, 0.0, verdict))
        if absolute:
            timed += _with_overall(_absolute_items(name, b, c), "speed overall")
        elif name != ref_name:
            timed += _with_overall(_ratio_items(base, cur, name, b, c, out.notes), "speedup overall")
    out.changes += _verdicts(timed, thresholds)
    for doc, role in ((base, "baseline"), (cur, "current")):
        if doc.get("merged_runs"):
            out.notes.append(f"{role} = median of {doc['merged_runs']} runs")
    order = {s["name"]: i for i, s in enumerate(base["stages"])}
    out.changes.sort(key=lambda c: order[c.stage])  # stable: accuracy, then timing, per stage
    for c in cur["stages"]:
        if _stage(base, c["name"]) is None:
            out.notes.append(f"{c['name']}: new stage (not in the baseline), not gated")
    if not absolute:
        out.notes.append(f"ratio mode: stages are gated on their speedup over {ref_name!r} within each run; "
                         f"a slowdown of {ref_name!r} itself is only visible with --absolute on the same machine")
    return out


def _ratio_items(base: dict, cur: dict, name: str, b: dict, c: dict, notes: list[str]) -> list[_Timed]:
    items = []
    for metric in SPEED_METRICS:
        bs, cs = b.get("speedup") or {}, c.get("speedup") or {}
        if not (bs.get(metric) and cs.get(metric)) and metric in FALLBACK:
            metric = FALLBACK[metric]  # an older results.json on one side
        bv, cv = bs.get(metric), cs.get(metric)
        if not bv or not cv:
            notes.append(f"{name}: no {metric} speedup in {'baseline' if not bv else 'current'}, not gated")
            continue
        h_b, h_c = _speedup_noise(base, b, metric), _speedup_noise(cur, c, metric)
        if h_b is None or h_c is None:
            notes.append(f"{name}: {metric} speedup has no noise interval in one run; gated on the threshold "
                         "and the noise floor alone")
        items.append(_Timed(name, f"speedup {metric}", bv, cv, h_b, h_c))
    return items


def _with_overall(items: list[_Timed], metric: str) -> list[_Timed]:
    """Add the geometric mean of a stage's latency and throughput speeds (when it has both)."""
    if len(items) != 2:
        return items
    lat, thr = items
    hs = [None if lat.h_base is None or thr.h_base is None else math.hypot(lat.h_base, thr.h_base) / 2,
          None if lat.h_cur is None or thr.h_cur is None else math.hypot(lat.h_cur, thr.h_cur) / 2]
    speed = lambda t, v: v if t.higher_is_better else 1 / v  # noqa: E731  (ms -> speed)
    overall = _Timed(lat.stage, metric, math.sqrt(speed(lat, lat.base) * speed(thr, thr.base)),
                     math.sqrt(speed(lat, lat.cur) * speed(thr, thr.cur)), hs[0], hs[1], floor_factor=1 / math.sqrt(2))
    return items + [overall]


def _absolute_items(name: str, b: dict, c: dict) -> list[_Timed]:
    items = []
    bl, cl = b.get("latency_ms") or {}, c.get("latency_ms") or {}
    if bl.get("p50") and cl.get("p50"):
        items.append(_Timed(name, "latency p50 ms", bl["p50"], cl["p50"], _log_halfwidth(bl.get("p50_ci95")),
                            _log_halfwidth(cl.get("p50_ci95")), higher_is_better=False))
    bt, ct = b.get("throughput") or {}, c.get("throughput") or {}
    if bt.get("samples_per_s") and ct.get("samples_per_s"):
        items.append(_Timed(name, "throughput samples/s", bt["samples_per_s"], ct["samples_per_s"],
                            _log_halfwidth(bt.get("samples_per_s_ci95")), _log_halfwidth(ct.get("samples_per_s_ci95"))))
    return items


def _fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(cmp: Comparison, markdown: bool = False) -> str:
    """Changes as a table (+ = worse: % slower, or accuracy points lost) and the notes."""
    head = ["stage", "metric", "baseline", "current", "change (+ = worse)", "noise ±", "verdict"]
    rows = []
    for c in cmp.changes:
        unit = " pts" if c.metric == "accuracy" else "%"
        rows.append([c.stage, c.metric, _fmt(c.baseline), _fmt(c.current),
                     "—" if c.change_pct is None else f"{c.change_pct:+.2f}{unit}",
                     "—" if c.noise_pct is None else f"{c.noise_pct:.2f}{unit}", c.verdict])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in [head] + rows]
    t = cmp.thresholds
    verdict = "REGRESSION" if cmp.regressed else "pass"
    lines += ["", f"gate ({cmp.mode} mode, max slowdown {t.max_slowdown_pct:g}%, max accuracy drop "
                  f"{t.max_accuracy_drop_pts:g} pts, noise floor {t.noise_floor_pct:g}%): {verdict}"]
    lines += [f"note: {n}" for n in cmp.notes]
    return "\n".join(lines)


def run_compare(baselines: list[str | Path], current: str | Path, thresholds: Thresholds, absolute: bool = False,
                include_peers: bool = False, json_out: str | Path | None = None, reruns: list[str | Path] = (),
                log=print) -> int:
    """The CLI's work: 0 = no regression, 1 = regression (``CompareInputError`` for bad input).

    Several ``baselines``, and ``current`` with its ``reruns``, are each merged into their
    median (``merge_runs``).
    """
    base = merge_runs([load_results(b, "baseline") for b in baselines])
    cur = merge_runs([load_results(c, "current") for c in [current, *reruns]], "current")
    cmp = compare_results(base, cur, thresholds, absolute, include_peers)
    log(format_table(cmp))
    if json_out:
        write_json_atomic(json_out, cmp.to_dict())
    return 1 if cmp.regressed else 0
