"""`python -m bench compare`: fires on real regressions, not on noise; bad files exit 2 with one line."""
import copy
import json
import math
from statistics import NormalDist
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.compare import CompareInputError, Thresholds, compare_results, load_results, parse_percent

REPO = Path(__file__).resolve().parents[2]


def stage(name, speedup=1.0, ci=0.02, acc=0.90, status="ok", peer=False, p50=10.0):
    """A results.json stage row; ``ci`` = relative half-width of the speedup interval."""
    row = {"name": name, "status": status, "accuracy": acc, "test_examples": 300, "size_mb": 10.0,
           "latency_ms": {"batch": 1, "p50": p50, "p90": p50 * 1.2, "p99": p50 * 1.5,
                          "p50_ci95": [p50 * 0.98, p50 * 1.02]},
           "throughput": {"batch": 32, "samples_per_s": 100.0 * speedup,
                          "samples_per_s_ci95": [98.0 * speedup, 102.0 * speedup]},
           "speedup": {"latency_p50": speedup, "latency_tmean": speedup, "throughput": speedup},
           "speedup_ci95": {k: [speedup / (1 + ci), speedup * (1 + ci)]
                            for k in ("latency_p50", "latency_tmean", "throughput")}}
    if peer:
        row["peer"] = True
    if status != "ok":
        row = {"name": name, "status": status, "reason": "boom"}
    return row


def results(*stages, task="sst2", threads=2, cpu="CPU A"):
    return {"reference": "finetune", "task": task, "quick": True,
            "environment": {"cpu": cpu, "cores": 2, "threads": threads}, "stages": list(stages)}


BASE = results(stage("finetune", 1.0, 0.0), stage("int8", 1.7), stage("onnx-int8", 2.7),
               stage("torch-compile", 1.1, peer=True))


def with_stage(doc, name, **kw):
    out = copy.deepcopy(doc)
    i = next(i for i, s in enumerate(out["stages"]) if s["name"] == name)
    out["stages"][i] = stage(name, **{"speedup": out["stages"][i].get("speedup", {}).get("latency_p50", 1.0),
                                     "peer": out["stages"][i].get("peer", False), **kw})
    return out


def cmp(base, cur, **kw):
    b, c = copy.deepcopy(base), copy.deepcopy(cur)
    b["_path"], c["_path"] = "base.json", "cur.json"
    return compare_results(b, c, **kw)


def verdict(comparison, name, metric):
    return next(c.verdict for c in comparison.changes if c.stage == name and c.metric == metric)


def test_same_numbers_pass():
    c = cmp(BASE, BASE)
    assert not c.regressed
    assert {x.verdict for x in c.changes} == {"ok", "within noise"}
    gated = {(x.stage, x.metric) for x in c.changes}
    # the reference has no speedup of its own; peers are not gated by default
    assert ("int8", "speedup latency_tmean") in gated and ("onnx-int8", "speedup throughput") in gated
    assert not any(s == "finetune" and m.startswith("speedup") for s, m in gated)
    assert not any(s == "torch-compile" for s, _ in gated)


def test_slowdown_beyond_threshold_and_noise_fires():
    c = cmp(BASE, with_stage(BASE, "onnx-int8", speedup=2.7 / 1.2))  # 20% slower vs the reference
    assert c.regressed
    ch = next(x for x in c.changes if x.stage == "onnx-int8" and x.metric == "speedup latency_tmean")
    assert ch.verdict == "REGRESSION" and ch.change_pct == pytest.approx(20.0, abs=0.01)


def z(tests):
    return NormalDist().inv_cdf(1 - 0.025 / tests)


def noise(changes, metric):
    (h,) = {c.noise_pct for c in changes if c.metric == metric}
    return h


def test_noise_interval_widens_with_floor_and_number_of_metrics():
    """h = z * sqrt(h_b^2 + h_c^2 + 2 floor^2); z grows (Bonferroni) with the number of gated metrics."""
    quiet = Thresholds(noise_floor_pct=0)
    two = cmp(BASE, BASE, thresholds=quiet).changes  # 2 stages x 3 metrics
    h = noise(two, "speedup latency_tmean")
    assert h == pytest.approx(100 * ((1.02 ** (z(6) / 1.96 * 2 ** 0.5)) - 1), abs=0.05)
    assert noise(two, "speedup throughput") == h
    # overall = mean of two log-speedups with independent noise: interval 1/sqrt(2) as wide
    assert noise(two, "speedup overall") == pytest.approx(100 * ((1.02 ** (z(6) / 1.96)) - 1), abs=0.05)
    floored = cmp(BASE, BASE).changes
    assert noise(floored, "speedup throughput") > 1.4 * 5  # two runs' floors in quadrature, Bonferroni-widened
    more = cmp(BASE, BASE, thresholds=quiet, include_peers=True).changes  # 3 stages x 3 metrics
    assert noise(more, "speedup throughput") == pytest.approx(h * z(9) / z(6), rel=0.02)


def test_overall_metric_catches_a_slowdown_split_across_noisy_metrics():
    """13% and 16% slower with ±17% noise each: neither alone is outside its noise, both together are."""
    noisy = results(*[stage(s["name"], s["speedup"]["latency_p50"], 0.07, peer=s.get("peer", False))
                      for s in BASE["stages"]])
    cur = with_stage(noisy, "onnx-int8", ci=0.07)
    row = next(s for s in cur["stages"] if s["name"] == "onnx-int8")
    row["speedup"].update(latency_tmean=2.7 / 1.13, throughput=2.7 / 1.16)
    c = cmp(noisy, cur)
    assert verdict(c, "onnx-int8", "speedup latency_tmean") == "within noise"
    assert verdict(c, "onnx-int8", "speedup throughput") == "within noise"
    assert verdict(c, "onnx-int8", "speedup overall") == "REGRESSION" and c.regressed


def test_slowdown_inside_noise_does_not_fire():
    """15% worse on paper, but the two runs' intervals (±12% each) cannot tell it from noise."""
    noisy = results(*[stage(s["name"], s["speedup"]["latency_p50"], 0.12, peer=s.get("peer", False))
                      for s in BASE["stages"]])
    cur = with_stage(noisy, "onnx-int8", speedup=2.7 / 1.15, ci=0.12)
    c = cmp(noisy, cur)
    assert not c.regressed and verdict(c, "onnx-int8", "speedup latency_tmean") == "within noise"


def test_significant_but_small_slowdown_does_not_fire():
    quiet = Thresholds(noise_floor_pct=0)
    c = cmp(BASE, with_stage(BASE, "int8", speedup=1.7 / 1.06, ci=0.01), thresholds=quiet)
    assert not c.regressed and verdict(c, "int8", "speedup latency_tmean") == "slower, under threshold"
    assert cmp(BASE, with_stage(BASE, "int8", speedup=1.7 / 1.06, ci=0.01),
               thresholds=Thresholds(max_slowdown_pct=5, noise_floor_pct=0)).regressed
    # the default 5% floor: a 6% change is indistinguishable from run-to-run noise
    assert verdict(cmp(BASE, with_stage(BASE, "int8", speedup=1.7 / 1.06, ci=0.01)), "int8",
                   "speedup latency_tmean") == "within noise"


def test_speedup_is_improvement():
    c = cmp(BASE, with_stage(BASE, "int8", speedup=2.2))
    assert not c.regressed and verdict(c, "int8", "speedup throughput") == "improved"


@pytest.mark.parametrize("drop, fires", [(0.01, True), (0.006, True), (0.003, False)])
def test_accuracy_drop(drop, fires):
    cur = with_stage(BASE, "int8", acc=0.90 - drop)
    c = cmp(BASE, cur)
    assert c.regressed is fires
    assert verdict(c, "int8", "accuracy") == ("REGRESSION" if fires else "ok")


def test_reference_accuracy_is_gated_too():
    assert cmp(BASE, with_stage(BASE, "finetune", speedup=1.0, ci=0.0, acc=0.88)).regressed


def test_stage_that_stopped_working_fires():
    c = cmp(BASE, with_stage(BASE, "int8", status="failed"))
    assert c.regressed and verdict(c, "int8", "status") == "REGRESSION"


def test_peers_gated_only_on_request():
    cur = with_stage(BASE, "torch-compile", speedup=0.5)
    assert not cmp(BASE, cur).regressed
    assert cmp(BASE, cur, include_peers=True).regressed


def test_new_stage_in_current_is_noted_not_gated():
    cur = copy.deepcopy(BASE)
    cur["stages"].append(stage("int4", 0.1))
    c = cmp(BASE, cur)
    assert not c.regressed and any("int4: new stage" in n for n in c.notes)


def _old_schema(doc):
    """results.json from before the gate: speedups without intervals, no trimmed-mean speedup."""
    out = copy.deepcopy(doc)
    for s in out["stages"]:
        s.pop("speedup_ci95", None)
        s.get("speedup", {}).pop("latency_tmean", None)
    return out


def test_old_results_without_speedup_intervals_use_latency_intervals():
    """The median's speedup is gated instead, its noise from both stages' p50 intervals (2% each)."""
    old = _old_schema(BASE)
    quiet = Thresholds(noise_floor_pct=0)
    c = cmp(old, _old_schema(with_stage(BASE, "onnx-int8", speedup=2.7 / 1.2)), thresholds=quiet)
    ch = next(x for x in c.changes if x.stage == "onnx-int8" and x.metric == "speedup latency_p50")
    assert ch.verdict == "REGRESSION"
    per_run = 0.0198 * 2 ** 0.5  # log half-width of 2% and 2% in quadrature
    assert ch.noise_pct == pytest.approx(100 * (math.exp(z(6) / 1.96 * per_run * 2 ** 0.5) - 1), abs=0.1)
    assert any("throughput speedup has no noise interval" in n for n in c.notes)
    # a new current against an old baseline: both sides fall back to the median
    mixed = cmp(old, BASE)
    assert {x.metric for x in mixed.changes if x.metric.startswith("speedup")} == {
        "speedup latency_p50", "speedup throughput", "speedup overall"}


def test_absolute_mode_gates_times_on_the_same_machine():
    cur = with_stage(BASE, "finetune", speedup=1.0, ci=0.0, p50=12.5)  # the reference itself got 25% slower
    assert not cmp(BASE, cur).regressed  # invisible to speedups: documented
    c = cmp(BASE, cur, absolute=True)
    assert c.regressed and verdict(c, "finetune", "latency p50 ms") == "REGRESSION"


def test_absolute_mode_refuses_another_machine():
    with pytest.raises(CompareInputError, match="--absolute needs a baseline from this machine"):
        cmp(BASE, results(*BASE["stages"], cpu="CPU B"), absolute=True)
    assert not cmp(BASE, results(*BASE["stages"], cpu="CPU B")).regressed  # ratio mode carries across


def test_parse_percent():
    assert parse_percent("10%") == 10.0 and parse_percent("7.5") == 7.5
    with pytest.raises(CompareInputError, match="not a percentage"):
        parse_percent("ten")


# ---- the command line: exit codes and one-line errors ----

def write(tmp_path, name, doc):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(p)


def run_main(capsys, *args):
    code = main(["compare", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_pass_and_fail(tmp_path, capsys):
    b = write(tmp_path, "b.json", BASE)
    code, out, err = run_main(capsys, b, write(tmp_path, "same.json", BASE))
    assert code == 0 and "gate (ratio mode, max slowdown 10%, max accuracy drop 0.5 pts, noise floor 5%): pass" in out
    slow = write(tmp_path, "slow.json", with_stage(BASE, "onnx-int8", speedup=2.7 / 1.2))
    code, out, err = run_main(capsys, b, slow, "--max-slowdown", "10%", "--max-accuracy-drop", "0.5",
                              "--output", str(tmp_path / "c"))
    assert code == 1 and "REGRESSION" in out and "+20.00%" in out
    assert json.loads((tmp_path / "c" / "compare.json").read_text())["regressed"] is True
    assert run_main(capsys, b, slow, "--max-slowdown", "25%")[0] == 0


BAD = {
    "missing": (None, ["not found", "nope.json"]),
    "not json": ("{not json", ["not valid JSON"]),
    "not results": ({"rows": []}, ["not a bench results.json"]),
    "no stage names": ({"reference": "finetune", "stages": [{"status": "ok"}]}, ["stage #0", "no 'name'"]),
    "damaged numbers": (results(stage("finetune"), {**stage("int8"), "speedup": {"throughput": "fast"}}),
                        ["'int8'", "speedup.throughput", "not a positive number"]),
    "other task": (results(*BASE["stages"], task="sst5"), ["task 'sst5'", "'sst2'"]),
    "other stages": (results(stage("finetune"), stage("pruned")), ["stages ['pruned']", "lacks"]),
    "other threads": (results(*BASE["stages"], threads=4), ["4 threads", "--threads"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_baseline_exits_2_with_one_line(case, tmp_path, capsys):
    doc, needles = BAD[case]
    base = str(tmp_path / "nope.json") if doc is None else write(tmp_path, "base.json", doc)
    code, out, err = run_main(capsys, base, write(tmp_path, "cur.json", BASE))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_real_process_exit_codes(tmp_path):
    b = write(tmp_path, "b.json", BASE)
    run = lambda *a: subprocess.run([sys.executable, "-m", "bench", "compare", *a], cwd=REPO,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    assert run(b, b).returncode == 0
    assert run(b, write(tmp_path, "acc.json", with_stage(BASE, "int8", acc=0.89))).returncode == 1
    p = run(write(tmp_path, "bad.json", "[]"), b)
    assert p.returncode == 2 and p.stderr.startswith("error: baseline file") and "Traceback" not in p.stderr


def test_load_results_keeps_its_path(tmp_path):
    assert load_results(write(tmp_path, "r.json", BASE))["_path"].endswith("r.json")
