"""Chains on the tiny BERT: multi-task heads, forgetting matrix, gates, rollback, caching.

One output directory is shared by the module: specs that repeat a stage with the same
parent, config and task reuse its artifact (that is the cache under test), so each test
trains only what is new to it.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from chain.artifact import Artifact
from chain.executor import run_chain
from chain.heads import head_tasks
from chain.spec import load_spec
from tests.chain.conftest import make_spec

A = {"name": "a", "type": "finetune", "task": "senti"}
B = {"name": "b", "type": "finetune", "task": "topic", "gate": {"max_drop": 0.6}}
ONNX = {"name": "onnx", "type": "export_onnx", "parent": "b"}
BAD = {"name": "bad", "type": "finetune", "task": "senti", "parent": "b", "config": {"shuffle_labels": True, "head": "new"},
       "gate": {"min_accuracy": 0.8}}
Q = {"name": "q", "type": "quantize_int8", "gate": {"max_drop": 0.05}}


def _run(tmp, model, tasks, stages, out, name="spec", **kw):
    logs = []
    force = kw.pop("force", None)
    spec = load_spec(make_spec(tmp / f"{name}.yaml", model, tasks, stages, **kw))
    res = run_chain(spec, out, force=force, log=logs.append)
    return res, logs


def _snapshot(out: Path) -> dict:
    """Finished artifacts: name -> (inode, manifest 'created', model file mtime)."""
    snap = {}
    for d in (out / "artifacts").iterdir():
        if d.is_dir() and (d / "manifest.json").is_file():
            m = json.loads((d / "manifest.json").read_text())
            model = next(iter(sorted(d.glob("model.*"))), d / "manifest.json")
            snap[d.name] = (d.stat().st_ino, m["created"], model.stat().st_mtime_ns)
    return snap


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_bert_dir, easy_tasks):
    tmp = tmp_path_factory.mktemp("chainrun")
    out = tmp / "out"
    res, logs = _run(tmp, tiny_bert_dir, easy_tasks, [A, B, ONNX, BAD, Q], out, baseline=True)
    files = {name: (out / name).read_text() for name in ("results.json", "report.md")}  # later tests rewrite them
    return {"tmp": tmp, "out": out, "res": res, "logs": logs, "model": tiny_bert_dir, "tasks": easy_tasks,
            "files": files}


def test_chain_statuses_and_learning(work):
    res = work["res"]
    st = {s["name"]: s for s in res["stages"]}
    assert [s["status"] for s in res["stages"]] == ["ok", "ok", "ok", "rolled_back", "ok"]
    assert st["a"]["accuracy_by_task"]["senti"] >= 0.9  # the tiny model really learns the easy tasks
    assert st["b"]["accuracy_by_task"]["topic"] >= 0.9
    # b changed the label space (2 -> 3 labels) but still answers senti with a's head
    assert st["b"]["accuracy_by_task"]["senti"] is not None
    b_art = Artifact.load(st["b"]["artifact"])
    assert b_art.num_labels == 3 and head_tasks(b_art.path) == ["senti", "topic"]


def test_rolled_back_stage_keeps_parent_and_says_why(work):
    st = {s["name"]: s for s in work["res"]["stages"]}
    bad = st["bad"]
    assert bad["accuracy_by_task"]["senti"] < 0.8
    assert "below min_accuracy 0.8" in bad["reason"] and "rolled back to 'b'" in bad["reason"]
    # the next stage builds on the parent, as if the rolled-back stage had never happened
    assert st["q"]["parent"] == "b"
    q = Artifact.load(st["q"]["artifact"])
    assert q.manifest["parent_stage"] == "b" and q.manifest["parent"] == st["b"]["artifact"]
    assert q.format == "torch-int8" and head_tasks(q.path) == ["senti", "topic"]
    report = work["files"]["report.md"]
    assert "rolled_back" in report and "below min_accuracy 0.8" in report
    a_row = next(line for line in report.splitlines() if line.startswith("| a | finetune |"))
    assert a_row.split(" | ")[5] == f"{st['a']['wall_time_s']:.1f}"  # the stage's measured wall time


def test_rolled_back_last_stage_final_is_parent(work, tmp_path):
    res, logs = _run(work["tmp"], work["model"], work["tasks"], [A, B, {**BAD, "parent": None}], work["out"],
                     name="last")
    assert [s["status"] for s in res["stages"]] == ["cached", "cached", "rolled_back"]
    b = res["stages"][1]["artifact"]
    assert res["final"]["stage"] == "b" and res["final"]["artifact"] == b and res["final_artifact"] == b
    assert not any("running" in line for line in logs)  # all three were cached, rolled-back one included


def test_forgetting_matrix_and_results_file(work):
    res = json.loads(work["files"]["results.json"])
    fm = res["forgetting_matrix"]
    assert fm["rows"] == ["a", "b", "onnx", "bad", "q"] and fm["cols"] == ["senti", "topic"]
    a_row, b_row, onnx_row = fm["values"][:3]
    assert a_row[0] >= 0.9 and a_row[1] is None  # topic comes later
    assert None not in b_row
    # the ONNX export carries both heads (one output per task, compress.onnx_multitask): both evaluated
    assert onnx_row[0] == pytest.approx(b_row[0], abs=0.02) and onnx_row[1] == pytest.approx(b_row[1], abs=0.02)
    onnx = next(s for s in res["stages"] if s["name"] == "onnx")
    assert set(Artifact.load(onnx["artifact"]).manifest["heads"]) == {"senti", "topic"}
    f = {x["task"]: x for x in res["forgetting"]}
    assert f["senti"]["trained_at"] == "a" and f["topic"]["trained_at"] == "b"
    assert res["final"]["stage"] == "q" and set(res["final"]["accuracy"]) == {"senti", "topic"}
    base = res["baseline"]
    # the baseline replays the senti stages the chain kept (a), not the rolled-back one (bad)
    assert base["replayed"] == ["a"] and base["stage"] == "baseline-a" and base["task"] == "senti"
    assert base["status"] == "ok" and base["chain_stage"] == "b"  # bad rolled back to b
    assert base["gain_points"] == pytest.approx(100 * (base["chain_accuracy"] - base["accuracy"]), abs=0.01)
    assert "## Chain vs direct fine-tuning" in work["files"]["report.md"]
    # no synthetic test sentence occurs in any training set: no overlap rows, no report section
    assert res["overlap"] == [] and "## Train/test text overlap" not in work["files"]["report.md"]


def test_baseline_replays_the_final_task_stages_with_their_own_teacher(work):
    """topic -> senti -> senti distilled from the senti stage: the direct model gets the same
    two senti stages, the second distilled from the replayed first, never from the chain."""
    kd = {"name": "kd", "type": "finetune", "task": "senti", "config": {"distill": {"teacher": "a2"}}}
    a2 = {**A, "name": "a2"}
    topic = {"name": "t", "type": "finetune", "task": "topic"}
    res, logs = _run(work["tmp"], work["model"], work["tasks"], [topic, a2, kd], work["out"], name="kd",
                     baseline=True)
    base = res["baseline"]
    assert [s["status"] for s in res["stages"]] == ["ok", "ok", "ok"]
    assert base["replayed"] == ["a2", "kd"] and [r["name"] for r in base["rows"]] == ["baseline-a2", "baseline-kd"]
    first, second = (Artifact.load(r["artifact"]) for r in base["rows"])
    assert first.manifest["parent_stage"] == "source" and second.manifest["parent_stage"] == "baseline-a2"
    assert second.manifest["train"]["distilled_from"] == str(first.path)
    chain_a2 = next(s for s in res["stages"] if s["name"] == "a2")["artifact"]
    assert chain_a2 != str(first.path)
    assert base["chain_stage"] == "kd" and base["accuracy"] == base["rows"][-1]["accuracy_by_task"]["senti"]
    report = (work["out"] / "report.md").read_text()
    assert "`baseline-a2` -> `baseline-kd`" in report
    # --force on the first replay recomputes it and the replays after it, nothing of the chain
    res2, _ = _run(work["tmp"], work["model"], work["tasks"], [topic, a2, kd], work["out"], name="kd",
                   baseline=True, force="baseline-a2")
    assert [s["status"] for s in res2["stages"]] == ["cached"] * 3
    assert [r["status"] for r in res2["baseline"]["rows"]] == ["ok", "ok"]
    assert res2["baseline"]["accuracy"] == base["accuracy"]  # same seeds, same result


def test_rerun_reuses_everything(work):
    before = _snapshot(work["out"])
    res, logs = _run(work["tmp"], work["model"], work["tasks"], [A, B, ONNX, BAD, Q], work["out"], baseline=True)
    assert [s["status"] for s in res["stages"]] == ["cached"] * 3 + ["rolled_back", "cached"]
    assert res["stages"][3]["cached"] and res["baseline"]["status"] == "cached"
    assert not any("running" in line for line in logs)
    assert _snapshot(work["out"]) == before
    assert [s.get("accuracy") for s in res["stages"]] == [s.get("accuracy") for s in work["res"]["stages"]]


def test_force_recomputes_from_a_stage_on_deterministically(work):
    before = _snapshot(work["out"])
    res, logs = _run(work["tmp"], work["model"], work["tasks"], [A, B, ONNX, BAD, Q], work["out"], force="bad")
    after = _snapshot(work["out"])
    ran = sorted(re.search(r"stage (?:\d+/\d+ )?(\S+): running", line).group(1) for line in logs if ": running" in line)
    assert ran == ["bad", "q"]
    st = {s["name"]: s for s in res["stages"]}
    for name in ("a", "b", "onnx"):
        assert after[Path(st[name]["artifact"]).name] == before[Path(st[name]["artifact"]).name]
    for name in ("bad", "q"):
        d = f"{name}-{st[name]['attempts'][0]['key']}"
        assert after[d] != before[d]  # a new directory (inode) and a new manifest
    # same seed, same data, same CPU: the recomputed stages reproduce their metrics exactly
    assert [s.get("accuracy") for s in res["stages"]] == [s.get("accuracy") for s in work["res"]["stages"]]


def test_stop_ends_the_chain(work):
    stages = [A, B, {**BAD, "gate": {"min_accuracy": 0.8, "on_fail": "stop"}}, Q]
    res, logs = _run(work["tmp"], work["model"], work["tasks"], stages, work["out"], name="stop")
    assert [s["status"] for s in res["stages"]] == ["cached", "cached", "failed", "skipped"]
    assert "chain stopped" in res["stages"][2]["reason"] and "'bad'" in res["stages"][3]["reason"]
    assert res["final"]["stage"] == "b"


def test_retry_with_lower_learning_rate(work):
    # lr 1.0 wrecks the model (or diverges); the retry at 1.0 * 0.002 learns the task
    r = {"name": "r", "type": "finetune", "task": "senti", "config": {"learning_rate": 1.0},
         "gate": {"min_accuracy": 0.9, "on_fail": "retry", "retries": 1, "retry_lr_factor": 0.002}}
    res, logs = _run(work["tmp"], work["model"], work["tasks"], [r], work["out"], name="retry")
    st = res["stages"][0]
    assert st["status"] == "ok" and st["accuracy_by_task"]["senti"] >= 0.9
    assert [a["learning_rate"] for a in st["attempts"]] == pytest.approx([1.0, 0.002])
    assert [a["status"] for a in st["attempts"]] == ["gate_failed", "passed"]
    assert any("retrying with learning_rate 0.002" in line for line in logs)
    assert Artifact.load(st["artifact"]).manifest["config"]["learning_rate"] == pytest.approx(0.002)


def test_latency_gate(work):
    stages = [A, B, {**Q, "gate": {"max_latency_ms": 0.001}}]
    res, _ = _run(work["tmp"], work["model"], work["tasks"], stages, work["out"], name="lat")
    q = res["stages"][2]
    assert q["status"] == "rolled_back" and "over max_latency_ms 0.001" in q["reason"]
    assert q["gate_latency"]["p50_ms"] > 0 and q["gate_latency"]["parent_p50_ms"] > 0


def test_nan_loss_keeps_last_good_artifact_and_is_not_retried(tmp_path, tiny_bert_dir, easy_tasks):
    import shutil

    model = tmp_path / "nan-bert"
    shutil.copytree(tiny_bert_dir, model)
    state = load_file(str(model / "model.safetensors"))
    state["bert.pooler.dense.weight"] = torch.full_like(state["bert.pooler.dense.weight"], float("nan"))
    save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    res, _ = _run(tmp_path, model, easy_tasks, [A], out)
    a = res["stages"][0]
    assert a["status"] == "rolled_back" and "training diverged" in a["reason"] and "nan" in a["reason"].lower()
    assert res["final"]["stage"] == "source" and res["final"]["artifact"] == str(model)
    markers = list((out / "artifacts").glob("a-*.failed.json"))
    assert len(markers) == 1 and not [p for p in (out / "artifacts").iterdir() if p.name.startswith("a-") and p.is_dir()]
    res2, logs = _run(tmp_path, model, easy_tasks, [A], out)
    assert res2["stages"][0]["status"] == "rolled_back" and res2["stages"][0]["cached"]
    assert not any("running finetune" in line for line in logs)


def test_lora_is_merged_into_a_plain_model(work):
    from transformers import AutoModelForSequenceClassification

    lora = {"name": "lo", "type": "finetune", "task": "topic",
            "config": {"lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}}}
    res, _ = _run(work["tmp"], work["model"], work["tasks"], [A, lora], work["out"], name="lora")
    lo = res["stages"][1]
    assert lo["status"] == "ok", lo.get("reason")
    d = Path(lo["artifact"])
    after = load_file(str(d / "model.safetensors"))
    before = load_file(str(Path(res["stages"][0]["artifact"]) / "model.safetensors"))
    assert not any("lora" in k for k in after) and set(after) == set(before)
    q, k = "bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.self.key.weight"
    assert not torch.equal(before[q], after[q]) and torch.equal(before[k], after[k])  # only targeted layers moved
    assert lo["train"]["trainable_params"] < 0.2 * sum(v.numel() for v in after.values())
    model = AutoModelForSequenceClassification.from_pretrained(d)
    assert model.config.num_labels == 3 and lo["accuracy_by_task"]["topic"] > 0.34


def test_stage_crash_is_failed_and_dependents_skipped(work, monkeypatch):
    from chain import registry

    from chain.stage import Stage

    class Boom(Stage):
        def __init__(self, config=None, name="boom", parent=None):
            self.config, self.name, self.parent = config or {}, name, parent

        def run(self, parent, out_dir, ctx):
            raise RuntimeError("disk on fire")

    monkeypatch.setitem(registry._types, "boom", Boom)
    res, _ = _run(work["tmp"], work["model"], work["tasks"],
                  [A, {"name": "x", "type": "boom"}, {"name": "y", "type": "quantize_int8"},
                   {"name": "z", "type": "quantize_int8", "parent": "a"}], work["out"], name="boom")
    assert [s["status"] for s in res["stages"]] == ["cached", "failed", "skipped", "ok"]
    assert "RuntimeError: disk on fire" in res["stages"][1]["reason"]
    assert not [p for p in (work["out"] / "artifacts").iterdir() if p.name.startswith((".tmp", "x-"))]


def test_concurrent_run_is_refused(work):
    from chain.errors import SpecError
    from chain.executor import output_lock

    with output_lock(work["out"]):
        with pytest.raises(SpecError, match="another chainpress run"):
            _run(work["tmp"], work["model"], work["tasks"], [A], work["out"], name="lock")
    assert os.path.exists(work["out"] / ".lock")
