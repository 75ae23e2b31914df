"""Small pieces: gates, heads, the stage registry, cache keys, stale-directory cleanup."""
from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from chain import registry
from chain.artifact import Artifact, clean_stale, staging_dir, write_manifest
from chain.errors import SpecError
from chain.executor import stage_key
from chain.finetune import FineTuneConfig
from chain.gates import GateConfig, check_gate
from chain.heads import copy_heads, head_state, head_tasks, load_head, save_head, set_head_


def test_gate_max_drop_per_task_and_floor():
    g = GateConfig(max_drop={"a": 0.01, "b": 0.2}, min_accuracy=0.8)
    reasons = check_gate(g, "s", {"a": 0.85, "b": 0.70, "c": 0.1}, {"a": 0.90, "b": 0.85, "c": 0.9}, own_task="a")
    assert reasons == ["accuracy on a dropped 0.0500 (0.9000 -> 0.8500) vs the parent, more than max_drop 0.01"]
    assert check_gate(g, "s", {"a": 0.79}, {}, own_task="a") == ["accuracy on a is 0.7900, below min_accuracy 0.8"]
    assert check_gate(None, "s", {"a": 0.0}, {"a": 1.0}, "a") == []
    # a task the parent could not be measured on (new task, or no head) is not a drop
    assert check_gate(GateConfig(max_drop=0.0), "s", {"a": 0.5, "b": None}, {"b": 0.9}, "a") == []


def test_gate_latency_and_validation():
    g = GateConfig(max_latency_ms=5)
    assert "latency 6.00 ms is over max_latency_ms 5" in check_gate(g, "s", {}, {}, "a", latency_ms=6.0)[0]
    assert g.needs_latency and not GateConfig().needs_latency
    for kw, msg in [({"min_accuracy": 1.5}, "accuracy fraction"), ({"retries": -1}, "retries"),
                    ({"retry_lr_factor": 1.0}, "retry_lr_factor"), ({"max_latency_ms": 0}, "positive")]:
        with pytest.raises(SpecError, match=msg):
            GateConfig(**kw)


def _tiny(num_labels=2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32,
                                                    num_labels=num_labels)).eval()


def test_heads_round_trip_and_resize(tmp_path):
    two, five = _tiny(2), _tiny(5)
    assert set(head_state(two)) == {"classifier.weight", "classifier.bias"}
    save_head(two, tmp_path / "x", "subj")
    save_head(five, tmp_path / "x", "sst5")
    assert head_tasks(tmp_path / "x") == ["sst5", "subj"]
    set_head_(five, load_head(tmp_path / "x", "subj"), num_labels=2)
    assert five.classifier.out_features == 2 and five.num_labels == 2
    ids = torch.tensor([[1, 5, 7, 2]])
    two.bert.load_state_dict(five.bert.state_dict())
    assert torch.equal(five(input_ids=ids).logits, two(input_ids=ids).logits)
    assert copy_heads(tmp_path / "x", tmp_path / "y", skip="sst5") == ["subj"]
    assert load_head(tmp_path / "y", "sst5") is None
    with pytest.raises(ValueError, match="cannot name a head file"):
        save_head(two, tmp_path, "../evil")


@dataclass
class _Cfg:
    x: int = 1


@dataclass
class _Stage:
    config: _Cfg = field(default_factory=_Cfg)
    name: str = "s"
    parent: str | None = None

    def run(self, parent, out_dir, ctx):
        return {"format": "hf"}


def test_registry_register_decorator_and_plugins(monkeypatch):
    registry.load_plugins()  # before the copy: plugins loaded into it would vanish with it, _loaded staying True
    monkeypatch.setattr(registry, "_types", dict(registry._types))
    registry.register_stage("mine", _Stage)
    assert registry.stage_class("mine") is _Stage and registry.config_class(_Stage) is _Cfg
    assert _Stage.type_name == "mine"
    # compress, kernels and bench types come from their plugins (entry points), never named in chain
    assert {"finetune", "prune", "kernels", "peer_torch_compile", "mine"} <= set(registry.known_types())
    with pytest.raises(SpecError, match="unknown stage type 'nope'; known types: .*mine.*prune"):
        registry.stage_class("nope")
    with pytest.raises(SpecError, match="letters, digits"):
        registry.register_stage("a b", _Stage)


def test_a_plugin_that_fails_to_import_is_named(monkeypatch):
    import importlib.metadata as md

    class EP:
        name, value = "broken", "no_such_module_xyz"

        def load(self):
            import no_such_module_xyz  # noqa: F401

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(md, "entry_points", lambda group: [EP()])
    with pytest.raises(registry.PluginError, match="plugin 'broken' .*no_such_module_xyz.*failed to import"):
        registry.stage_class("finetune")
    monkeypatch.setattr(registry, "_loaded", True)


def test_builtin_types_resolve_lazily():
    from chain.finetune import FineTune
    from compress.stages import ExportOnnx, QuantizeInt8, QuantizeOnnxInt8

    assert registry.stage_class("finetune") is FineTune
    assert [registry.stage_class(t) for t in ("quantize_int8", "export_onnx", "quantize_onnx_int8")] == \
        [QuantizeInt8, ExportOnnx, QuantizeOnnxInt8]


def test_stage_key_tracks_what_changes_the_result():
    cfg = FineTuneConfig(task="sst2")
    k = stage_key("p1", "finetune", cfg, "fp", ("show_progress",))
    assert k == stage_key("p1", "finetune", FineTuneConfig(task="sst2", show_progress=False), "fp", ("show_progress",))
    assert len({k, stage_key("p2", "finetune", cfg, "fp"), stage_key("p1", "finetune", cfg, "fp2"),
                stage_key("p1", "finetune", FineTuneConfig(task="sst2", seed=1), "fp"),
                stage_key("p1", "other", cfg, "fp")}) == 5


def test_stage_key_reads_a_task_dict_by_its_data_not_its_paths(tmp_path):
    """A clone moved to another folder keeps its cache (the task dict a spec puts in every
    fine-tune's config once tied each key to the checkout's path); other data does not."""
    import shutil

    from chain.task import builtin_task

    src = builtin_task("trec")
    moved = tmp_path / "moved"
    moved.mkdir()
    for split, path in src.files.items():
        shutil.copy(path, moved / f"{split}.tsv")
    here = src.to_dict()
    there = {**here, "files": {s: str(moved / f"{s}.tsv") for s in src.files}}
    exclude = [{"task": there, "split": "test"}]

    def key(task, ex):
        return stage_key("p", "finetune", FineTuneConfig(task=task, exclude=ex), "fp")
    assert key(here, [{"task": here, "split": "test"}]) == key(there, exclude)
    (moved / "train.tsv").write_text((moved / "train.tsv").read_text() + "5\tHow many more ?\n")
    assert key(here, exclude) != key(there, exclude)


def test_clean_stale_removes_partials_and_restores_interrupted_replace(tmp_path):
    root = tmp_path / "artifacts"
    with staging_dir(root / "a-1") as tmp:
        write_manifest(tmp, stage="a", format="hf")
    (root / ".tmp-b-2-deadbeef").mkdir()
    (root / ".tmp-b-2-deadbeef" / "model.safetensors").write_text("half")
    os.rename(root / "a-1", root / ".old-a-1-0123abcd")  # killed between the two renames of a replace
    (root / "c-3").mkdir()
    (root / "c-3" / "manifest.json.part").write_text("{")
    removed = clean_stale(root)
    assert removed == [".tmp-b-2-deadbeef"]
    assert sorted(p.name for p in root.iterdir()) == ["a-1", "c-3"]
    assert Artifact.load(root / "a-1").manifest["stage"] == "a" and not (root / "c-3" / "manifest.json.part").exists()


def test_cpu_steal_reads_proc_stat(tmp_path, monkeypatch):
    """steal is the 8th value of /proc/stat's cpu line, in clock ticks; no file gives None."""
    import chain.environment as env

    stat = tmp_path / "stat"
    stat.write_text("cpu  19714 0 7963 3134739 604 0 161 5732 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    real = env.Path
    monkeypatch.setattr(env, "Path", lambda p: real(stat) if p == "/proc/stat" else real(p))
    assert env.cpu_steal_s() == 5732 / os.sysconf("SC_CLK_TCK")
    stat.unlink()
    assert env.cpu_steal_s() is None
