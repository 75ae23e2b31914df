"""Prune -> recover with distillation from a teacher named by stage, inside one chain spec."""
from __future__ import annotations

import pytest

from chain.errors import SpecError
from chain.executor import run_chain
from chain.spec import load_spec
from tests.chain.conftest import make_spec

A = {"name": "a", "type": "finetune", "task": "senti"}
PRUNE = {"name": "p", "type": "prune", "config": {"heads": 0.5, "ffn": 0.5}}


def test_teacher_named_by_stage_is_its_artifact(tmp_path, tiny_bert_dir, easy_tasks):
    recover = {"name": "r", "type": "finetune", "task": "senti",
               "config": {"epochs": 2, "distill": {"teacher": "a", "alpha": 0.7}}}
    spec = load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, [A, PRUNE, recover]))
    res = run_chain(spec, tmp_path / "out", log=lambda *_: None)
    a, p, r = res["stages"]
    assert [s["status"] for s in res["stages"]] == ["ok", "ok", "ok"], [s.get("reason") for s in res["stages"]]
    assert r["train"]["distilled_from"] == a["artifact"]  # the teacher is the unpruned stage's artifact
    # the recovered model keeps the pruned shape (distillation trains the student only)
    import json
    from pathlib import Path

    cfg = json.loads((Path(r["artifact"]) / "config.json").read_text())
    assert cfg["intermediate_size"] == 64 and all(len(v) == 2 for v in cfg["pruned_heads"].values())
    # the teacher enters the cache key by content, not by path: a moved output is still a cache
    import shutil

    shutil.copytree(tmp_path / "out", tmp_path / "moved")
    again = run_chain(spec, tmp_path / "moved", log=lambda *_: None)
    assert [s["status"] for s in again["stages"]] == ["cached"] * 3
    assert again["stages"][2]["key"] == r["key"]


def test_unknown_teacher_is_a_spec_error(tmp_path, tiny_bert_dir, easy_tasks):
    recover = {"name": "r", "type": "finetune", "task": "senti", "config": {"distill": {"teacher": "nope"}}}
    with pytest.raises(SpecError, match=r"stages\[2\] \(r\)\.config\.distill\.teacher: .*nope' is neither an earlier stage"):
        load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, [A, PRUNE, recover]))
