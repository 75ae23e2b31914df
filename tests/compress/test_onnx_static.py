"""Static (calibrated QDQ) ORT int8 on a tiny exported BERT: close to fp32, smaller, honest fallback."""
import pytest
import torch

from chain.artifact import Artifact
from chain.errors import SpecError
from tests.stage_runner import run_stages
from chain.task import builtin_task
from compress.formats import sqnr_db
from compress.onnx_export import onnx_logits, ort_session
from compress.onnx_static import OrtStaticInt8Config
from compress.stages import ExportOnnx, QuantizeOnnxStaticInt8

TEXTS = builtin_task("sst2").load("test").texts[:24]


@pytest.fixture(scope="module")
def onnx_fp32(tiny_bert_dir, tmp_path_factory):
    [res] = run_stages(Artifact.load(tiny_bert_dir), [ExportOnnx(name="onnx")], tmp_path_factory.mktemp("onnx"))
    assert res.status == "ok", res.reason
    return res.artifact


def _sqnr(a: Artifact, b: Artifact) -> float:
    from chain.model import load_tokenizer

    enc = dict(load_tokenizer(a)(TEXTS, padding=True, return_tensors="np"))
    ref = onnx_logits(ort_session(a.path / "model.onnx"), enc)
    got = onnx_logits(ort_session(b.path / "model.onnx"), enc)
    return sqnr_db(torch.from_numpy(ref), torch.from_numpy(got))


@pytest.mark.parametrize("calibration", ["minmax", "entropy"])
def test_static_int8_on_fused_graph(onnx_fp32, tmp_path, calibration):
    stage = QuantizeOnnxStaticInt8(OrtStaticInt8Config(calibration=calibration, calibration_samples=32))
    [res] = run_stages(onnx_fp32, [stage], tmp_path)
    assert res.status == "ok", res.reason
    m = res.artifact.manifest
    assert m["graph"] == "fused (no Attention fusion)" and m["fallback_reason"] is None
    assert {"QuantizeLinear", "DequantizeLinear", "SkipLayerNormalization"} <= set(m["onnx_ops"])
    assert "Attention" not in m["onnx_ops"]  # Q/K/V stay visible MatMuls, so they are quantized
    assert m["quantized_weight_fraction"] > 0.95  # only pooler/classifier Gemms stay fp32
    assert _sqnr(onnx_fp32, res.artifact) > 25
    assert res.artifact.size_mb() < 0.3 * onnx_fp32.size_mb()


def test_fused_failure_falls_back_to_unfused(onnx_fp32, tmp_path, monkeypatch):
    import compress.onnx_static as st

    real = st._quantize

    def fail_on_fused(src, dst, batches, cfg):
        if src.name == "_fused.onnx":
            raise RuntimeError("no quantizer for SkipLayerNormalization")
        real(src, dst, batches, cfg)

    monkeypatch.setattr(st, "_quantize", fail_on_fused)
    [res] = run_stages(onnx_fp32, [QuantizeOnnxStaticInt8(OrtStaticInt8Config(calibration_samples=16))], tmp_path)
    assert res.status == "ok", res.reason
    m = res.artifact.manifest
    assert m["graph"] == "unfused" and "RuntimeError: no quantizer" in m["fallback_reason"]
    assert "SkipLayerNormalization" not in m["onnx_ops"]
    assert _sqnr(onnx_fp32, res.artifact) > 25


@pytest.mark.parametrize("kw,msg", [({"calibration": "kl"}, "calibration"), ({"calibration_samples": 0}, "positive"),
                                    ({"percentile": 101}, "percentile"), ({"op_types": ()}, "op_types")])
def test_config_validation(kw, msg):
    with pytest.raises(SpecError, match=msg):
        OrtStaticInt8Config(**kw)
