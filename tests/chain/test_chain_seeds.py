"""`python -m chain.seeds`: the chain-vs-direct comparison repeated over seeds."""
from __future__ import annotations

import json
import sys

import pytest

from chain.errors import SpecError
from chain.seeds import interval95, main, reseeded, sized, summarize, t975
from chain.spec import load_spec
from tests.chain.conftest import make_spec

STAGES = [{"name": "t", "type": "finetune", "task": "topic"}, {"name": "s", "type": "finetune", "task": "senti"},
          {"name": "q", "type": "quantize_int8"}]


def test_reseeded_changes_the_stage_and_later_ones(tmp_path, tiny_bert_dir, easy_tasks):
    spec = load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, STAGES))
    r = reseeded(spec, "s", 7)
    assert [s.config.seed for s in r.stages[:2]] == [42, 7] and r.baseline
    with pytest.raises(SpecError, match="no such stage"):
        reseeded(spec, "nope", 1)


def test_summary_is_paired():
    s = summarize([{"seed": 1, "chain": 0.90, "direct": 0.88}, {"seed": 2, "chain": 0.86, "direct": 0.87}])
    assert s["chain_mean"] == pytest.approx(0.88) and s["direct_mean"] == pytest.approx(0.875)
    assert s["gain_points_mean"] == pytest.approx(0.5) and s["gain_points_sd"] == pytest.approx(2.1213, abs=1e-3)


def test_cli_runs_each_seed_and_shares_earlier_stages(tmp_path, tiny_bert_dir, easy_tasks, capsys):
    spec = make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, STAGES)
    out = tmp_path / "out"
    assert main([str(spec), "--stage", "s", "--seeds", "1", "2", "--output", str(out)]) == 0
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [1, 2] and summary["task"] == "senti"
    assert all(r["chain_stage"] == "s" and r["direct_stage"] == "baseline-s" for r in summary["runs"])
    assert "| mean ± sd |" in capsys.readouterr().out
    arts = [p.name for p in (out / "artifacts").iterdir() if p.is_dir()]
    assert sum(a.startswith("t-") for a in arts) == 1  # the topic stage is shared by both seeds
    assert sum(a.startswith("s-") for a in arts) == 2 and sum(a.startswith("baseline-s-") for a in arts) == 2
    assert main([str(spec), "--stage", "nope", "--seeds", "1"]) == 2


# ---- the training-set-size study -------------------------------------------------------

FT_ONLY = STAGES[:2]


def test_interval_matches_a_hand_computed_case(monkeypatch):
    # diffs 1..5: mean 3, sd sqrt(2.5) = 1.58114, t_{0.975,4} = 2.77645 -> half-width 2.77645 * 1.58114 / sqrt(5) = 1.96324
    lo, hi = interval95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert lo == pytest.approx(3 - 1.96324, abs=1e-4) and hi == pytest.approx(3 + 1.96324, abs=1e-4)
    assert interval95([2.0]) is None
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # the fallback table, as without scipy
    assert t975(4) == pytest.approx(2.7764, abs=1e-4) and t975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t975(60) == pytest.approx(2.0003, abs=2e-3)


def test_summary_counts_wins_and_carries_the_interval():
    s = summarize([{"seed": i, "chain": c, "direct": 0.80} for i, c in enumerate([0.81, 0.82, 0.80, 0.79])])
    assert s["chain_wins"] == 2 and s["ties"] == 1
    lo, hi = s["gain_points_ci95"]  # diffs +1, +2, 0, -1 points: mean 0.5, sd 1.291, t3 = 3.1824
    assert (lo + hi) / 2 == pytest.approx(0.5) and (hi - lo) / 2 == pytest.approx(3.1824 * 1.29099 / 2, abs=1e-3)


def test_sized_sets_the_final_tasks_stages_only(tmp_path, tiny_bert_dir, easy_tasks):
    spec = load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, STAGES))
    r = sized(spec, 50)
    assert [s.config.max_train_samples for s in r.stages[:2]] == [None, 50]
    assert spec.stages[1].config.max_train_samples is None  # the original is untouched
    for bad in (0, -3, True):
        with pytest.raises(SpecError, match="--train-samples"):
            sized(spec, bad)


def test_size_loop_trains_both_arms_on_the_same_n(tmp_path, tiny_bert_dir, easy_tasks, capsys):
    spec = make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, FT_ONLY)
    out = tmp_path / "out"
    assert main([str(spec), "--stage", "s", "--seeds", "1", "--train-samples", "20", "40", "--output", str(out)]) == 0
    study = json.loads((out / "seeds.json").read_text())
    assert [s["train_samples"] for s in study["sizes"]] == [20, 40] and study["task"] == "senti"
    for s in study["sizes"]:
        (run,) = s["runs"]
        assert run["chain_train"]["examples"] == run["direct_train"]["examples"] == s["train_samples"]
        assert run["chain_train"]["steps"] == run["direct_train"]["steps"]  # the same budget
    printed = capsys.readouterr().out
    assert "| 20 | 1 |" in printed and "| 40 | 1 |" in printed and "### 40 training sentences" in printed
    arts = [p.name for p in (out / "artifacts").iterdir() if p.is_dir()]
    assert sum(a.startswith("t-") for a in arts) == 1  # the topic stage is trained once for every size
    assert sum(a.startswith("baseline-s-") for a in arts) == 2


@pytest.mark.parametrize("args, says", [(["--train-samples", "0"], "--train-samples"),
                                        (["--train-samples", "ten"], "--train-samples"),
                                        (["--train-samples", "5", "5"], "each size once"),
                                        (["--stage", "nope", "--train-samples", "5"], "no such stage")])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_bert_dir, easy_tasks, capsys, args, says):
    spec = make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, FT_ONLY)
    argv = [str(spec), "--seeds", "1", "--output", str(tmp_path / "out")] + args
    if "--stage" not in args:
        argv += ["--stage", "s"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and says in err
    assert not (tmp_path / "out" / "artifacts").exists()  # refused before anything trained
