"""The ensemble, soup, distilled-student and knn stages through the real executor (tiny BERT)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from chain.artifact import Artifact, verify
from chain.errors import SpecError
from chain.executor import run_chain
from chain.spec import load_spec
from tests.chain.conftest import FAST_FT, make_spec

MEMBERS = {"finetune": {k: v for k, v in FAST_FT.items() if k != "show_progress"},
           "members": [{"seed": 1}, {"seed": 2}, {"seed": 3, "learning_rate": 1.0e-3}], "show_progress": False}


def stages() -> list[dict]:
    return [
        {"name": "ens", "type": "ensemble", "task": "senti", "parent": "source", "config": MEMBERS},
        {"name": "ens-dev", "type": "ensemble", "task": "senti", "parent": "source",
         "config": {**MEMBERS, "weights": "dev", "weight_step": 0.25}},
        {"name": "uniform-soup", "type": "soup", "task": "senti", "parent": "source",
         "config": {**MEMBERS, "method": "uniform"}},
        {"name": "greedy-soup", "type": "soup", "task": "senti", "parent": "source",
         "config": {**MEMBERS, "method": "greedy"}},
        {"name": "student", "type": "finetune", "task": "senti", "parent": "source",
         "config": {"distill": {"teacher": "ens", "alpha": 0.7}}},
        {"name": "knn", "type": "knn", "parent": "greedy-soup", "config": {"ks": [2, 8], "lambdas": [0.0, 0.5]}},
    ]


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory, tiny_bert_dir, easy_tasks):
    tmp = tmp_path_factory.mktemp("ens")
    spec = load_spec(make_spec(tmp / "s.yaml", tiny_bert_dir, {"senti": easy_tasks["senti"]}, stages()))
    return spec, tmp / "out", run_chain(spec, tmp / "out", log=lambda *_: None)


def test_every_combination_is_a_row(chain_run):
    _, out, res = chain_run
    rows = {r["name"]: r for r in res["stages"]}
    assert {n: r["status"] for n, r in rows.items()} == {n: "ok" for n in rows}, [r["reason"] for r in rows.values()]
    for r in rows.values():
        assert r["accuracy"] is not None and r["size_mb"] > 0
    # three members trained once, shared by the four combining stages
    members = sorted(p.name for p in (out / "artifacts" / "members").iterdir() if p.name.startswith("member-"))
    assert len(members) == 3
    for n in ("ens", "ens-dev", "uniform-soup", "greedy-soup"):
        assert sorted(Path(m["dir"]).name for m in rows[n]["train"]["members"]) == members
    # the ensemble is K models on disk, a soup one
    assert rows["ens"]["size_mb"] == pytest.approx(3 * rows["uniform-soup"]["size_mb"], rel=0.02)
    assert rows["ens"]["format"] == "ensemble" and rows["greedy-soup"]["format"] == "hf"
    assert rows["student"]["train"]["distilled_from"] == rows["ens"]["artifact"]


def test_ensemble_logits_are_the_weighted_member_logits(chain_run):
    import torch

    from chain.model import load_model, load_tokenizer
    from chain.runtime import load_predictor

    _, _, res = chain_run
    art = Artifact.load(next(r["artifact"] for r in res["stages"] if r["name"] == "ens-dev"))
    assert verify(art.path) is None
    w = art.manifest["ensemble"]["weights"]
    assert sum(w) == pytest.approx(1.0, abs=1e-5)
    assert all(x in (0, 0.25, 0.5, 0.75, 1.0) for x in w) or w == pytest.approx([1 / 3] * 3, abs=1e-5)
    enc = {k: v.astype(np.int64) for k, v in load_tokenizer(art)(["a good film", "bad and boring"], padding=True,
                                                                  return_tensors="np").items()}
    got = load_predictor(art, threads=1)(enc)
    with torch.inference_mode():
        want = sum(wi * load_model(Artifact.load(art.path / d))(**{k: torch.from_numpy(v) for k, v in enc.items()})
                   .logits.numpy() for wi, d in zip(w, art.manifest["ensemble"]["members"]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_greedy_soup_keeps_only_members_that_do_not_lower_dev_accuracy(chain_run):
    _, _, res = chain_run
    soup = Artifact.load(next(r["artifact"] for r in res["stages"] if r["name"] == "greedy-soup")).manifest["soup"]
    acc = soup["member_dev_accuracy"]
    assert soup["steps"][0]["members"] == [int(np.argmax(acc))]
    current = soup["steps"][0]["dev_accuracy"]
    for step in soup["steps"][1:]:
        assert step["kept"] == (step["dev_accuracy"] >= current)
        current = max(current, step["dev_accuracy"]) if step["kept"] else current
    assert soup["dev_accuracy"] == current >= max(acc)


def test_rerun_is_all_cached(chain_run):
    spec, out, res = chain_run
    again = run_chain(spec, out, log=lambda *_: None)
    assert [r["status"] for r in again["stages"]] == ["cached"] * len(res["stages"])


def test_killed_ensemble_resumes_member_by_member(tmp_path, tiny_bert_dir, easy_tasks, monkeypatch):
    from chain import finetune

    spec = load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, {"senti": easy_tasks["senti"]}, stages()[:1]))
    real, calls, killed = finetune.FineTune.train, [], []

    def dies_on_second(self, *a, **kw):
        calls.append(self.config.seed)
        if len(calls) == 2 and not killed:
            killed.append(True)
            raise RuntimeError("killed")  # as a crash while member 2 trains
        return real(self, *a, **kw)

    monkeypatch.setattr(finetune.FineTune, "train", dies_on_second)
    first = run_chain(spec, tmp_path / "out", log=lambda *_: None)
    assert first["stages"][0]["status"] == "failed" and "killed" in first["stages"][0]["reason"]
    root = tmp_path / "out" / "artifacts" / "members"
    assert len([p for p in root.iterdir() if p.name.startswith("member-")]) == 1  # member 1 was kept
    calls.clear()
    res = run_chain(spec, tmp_path / "out", log=lambda *_: None)
    assert res["stages"][0]["status"] == "ok"
    assert calls == [2, 3]  # only the members not yet trained
    assert [m["cached"] for m in res["stages"][0]["train"]["members"]] == [True, False, False]


@pytest.mark.parametrize("config, match", [
    ({"members": [{"seed": 1}]}, "at least 2 members"),
    ({"members": [{"seed": 1}, {"seed": 1}]}, r"members\[1\] is the same fine-tune as members\[0\]"),
    ({"members": [{"seed": 1}, {"seed": 2, "epochs": "x"}]}, r"members\[1\].*epochs"),
    ({"finetune": {"nope": 1}}, "nope"),
    ({"members": [{"seed": 1}, {"task": "trec"}]}, "cannot differ between members"),
    ({"weights": "best"}, "weights must be one of"),
])
def test_bad_ensemble_config_is_one_spec_error(tmp_path, tiny_bert_dir, easy_tasks, config, match):
    bad = [{"name": "ens", "type": "ensemble", "task": "senti", "config": config}]
    with pytest.raises(SpecError, match=match) as e:
        load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, {"senti": easy_tasks["senti"]}, bad))
    assert "\n" not in str(e.value)


def test_soup_method_is_validated(tmp_path, tiny_bert_dir, easy_tasks):
    bad = [{"name": "s", "type": "soup", "task": "senti", "config": {"method": "best"}}]
    with pytest.raises(SpecError, match="soup.method must be one of"):
        load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, {"senti": easy_tasks["senti"]}, bad))


def test_manifest_lists_members_by_relative_dir(chain_run):
    _, _, res = chain_run
    m = json.loads((Path(res["stages"][0]["artifact"]) / "manifest.json").read_text())
    assert m["ensemble"]["members"] == ["members/m0", "members/m1", "members/m2"]
