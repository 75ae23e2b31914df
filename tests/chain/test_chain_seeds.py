"""`python -m chain.seeds`: the chain-vs-direct comparison repeated over seeds."""
from __future__ import annotations

import json

import pytest

from chain.errors import SpecError
from chain.seeds import main, reseeded, summarize
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
