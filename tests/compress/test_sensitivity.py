"""Accuracy-aware quantization on a tiny BERT: the sensitive layer is found and kept fp32."""
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from chain.artifact import Artifact, write_manifest
from chain.errors import SpecError
from chain.registry import stage_class
from tests.stage_runner import run_stages
from chain.task import Task
from compress.sensitivity import AccuracyAwareConfig, accuracy_aware_quantize_, layer_sensitivity
from compress.stages import AccuracyAwareQuantize

SENSITIVE = "bert.encoder.layer.1.intermediate.dense"


def _model():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def _synthetic_eval(model) -> float:
    """1.0 at fp32; quantizing SENSITIVE costs 0.5, any other layer 0.001."""
    quantized = [n for n, mod in model.named_modules()  # dynamic int8's class is also called Linear
                 if type(mod).__name__ in ("Linear", "WeightOnlyInt4Linear") and type(mod) is not nn.Linear]
    return 1.0 - sum(0.5 if n == SENSITIVE else 0.001 for n in quantized)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_sensitive_layer_is_first_and_kept(scheme):
    m = _model()
    cfg = AccuracyAwareConfig(scheme=scheme, budget=0.02)
    sens = layer_sensitivity(m, _synthetic_eval, cfg)
    assert sens["baseline"] == 1.0 and len(sens["layers"]) == 13  # classifier skipped
    assert sens["layers"][0]["layer"] == SENSITIVE and sens["layers"][0]["drop"] == pytest.approx(0.5)
    assert _synthetic_eval(m) == 1.0  # probing put every original fp32 Linear back
    report = accuracy_aware_quantize_(m, cfg, _synthetic_eval, sensitivity=sens)
    assert report["kept_fp32"] == [SENSITIVE] and report["within_budget"]
    assert report["steps"][0]["drop"] == pytest.approx(0.512) and report["drop"] == pytest.approx(0.012)
    assert type(m.get_submodule(SENSITIVE)) is nn.Linear
    assert type(m.get_submodule("bert.encoder.layer.0.intermediate.dense")) is not nn.Linear
    assert len(report["quantized"]) == 12


def test_real_numeric_sensitivity_finds_the_outlier_layer():
    """An outlier input column (fed by a near-zero channel) wrecks one layer's int8 per-row scale."""
    m = _model()
    with torch.no_grad():
        m.get_submodule(SENSITIVE).weight[:, 0] = 50.0  # scale ~0.4/row: the ~0.02 weights all round to 0
        ln = m.bert.encoder.layer[1].attention.output.LayerNorm  # SENSITIVE's input: channel 0 ~ 0
        ln.weight[0], ln.bias[0] = 1e-4, 0.0
    x = {"input_ids": torch.randint(0, 120, (8, 11)), "attention_mask": torch.ones(8, 11, dtype=torch.long)}
    # the encoder output, not logits: a random-init head barely moves (logits ~1e-2)
    with torch.inference_mode():
        ref = m.bert(**x).last_hidden_state

    def neg_mse(model):
        with torch.inference_mode():
            return -float((model.bert(**x).last_hidden_state - ref).pow(2).mean())

    sens = layer_sensitivity(m, neg_mse, AccuracyAwareConfig())
    assert sens["layers"][0]["layer"] == SENSITIVE
    assert sens["layers"][0]["drop"] > 100 * sens["layers"][1]["drop"]  # ~3000x measured


def test_max_kept_caps_restores_and_says_so():
    report = accuracy_aware_quantize_(_model(), AccuracyAwareConfig(budget=0.0, max_kept=0), _synthetic_eval)
    assert report["kept_fp32"] == [] and not report["within_budget"]


@pytest.fixture
def tuned_parent(tiny_bert, small_task_files):
    task = Task("small", {k: str(v) for k, v in small_task_files.items()}, 2)
    write_manifest(tiny_bert, stage="ft", format="hf", task=task.to_dict(), num_labels=2)
    return Artifact.load(tiny_bert)


def test_stage_on_real_dev_accuracy_budget_zero(tuned_parent, tmp_path):
    assert stage_class("quantize_accuracy_aware") is AccuracyAwareQuantize
    cfg = AccuracyAwareConfig(budget=0.0, embeddings=())
    [res] = run_stages(tuned_parent, [AccuracyAwareQuantize(cfg)], tmp_path)
    assert res.status == "ok", res.reason
    rep = res.artifact.manifest["accuracy_aware"]
    assert rep["dev_examples"] == 32 and len(rep["sensitivity"]) == 13
    assert rep["saved_drop"] <= 0 and rep["drop"] <= 0
    from chain.model import load_model

    mods = dict(load_model(res.artifact).named_modules())
    for name in rep["kept_fp32"]:
        assert type(mods[name]) is nn.Linear
    for name in rep["quantized"]:
        assert type(mods[name]).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert res.artifact.manifest["quantized_layers"] == len(rep["quantized"])


def test_stage_keeps_the_sensitive_layer_in_the_saved_artifact(tuned_parent, tmp_path, monkeypatch):
    import compress.stages as stages

    monkeypatch.setattr(stages, "accuracy_fn", lambda *a, **k: _synthetic_eval)  # same metric on the reloaded model
    [res] = run_stages(tuned_parent, [AccuracyAwareQuantize(AccuracyAwareConfig(budget=0.02))], tmp_path)
    assert res.status == "ok", res.reason
    rep = res.artifact.manifest["accuracy_aware"]
    assert rep["kept_fp32"] == [SENSITIVE] and rep["saved_drop"] == pytest.approx(0.012)
    from chain.model import load_model

    assert type(load_model(res.artifact).get_submodule(SENSITIVE)) is nn.Linear


def test_stage_refuses_int4_and_parents_without_task(tiny_bert_dir, tuned_parent, tmp_path):
    [res] = run_stages(tuned_parent, [AccuracyAwareQuantize(AccuracyAwareConfig(scheme="int4"))], tmp_path / "a")
    assert res.status == "failed" and "saves int8 only" in res.reason
    from chain.errors import SpecError

    with pytest.raises(SpecError, match="quantize_accuracy_aware stage calibrates or measures on a task"):
        run_stages(Artifact.load(tiny_bert_dir), [AccuracyAwareQuantize()], tmp_path / "b", task=None)


@pytest.mark.parametrize("kw,msg", [({"scheme": "fp8"}, "scheme"), ({"budget": -0.1}, "budget"),
                                    ({"max_kept": -1}, "max_kept"),
                                    ({"scheme": "int4", "group_size": 20}, "group_size"),
                                    ({"eval_samples": 0}, "eval_samples")])
def test_config_validation(kw, msg):
    with pytest.raises(SpecError, match=msg):
        AccuracyAwareConfig(**kw)
