"""int8 / ONNX / ORT int8 stages on a tiny BERT, checked against PyTorch on real sentences."""
import numpy as np
import pytest
import torch

from chain.artifact import Artifact
from chain.errors import ExportValidationError
from chain.model import load_model, load_tokenizer
from tests.stage_runner import run_stages
from chain.task import builtin_task
from compress.formats import sqnr_db
from compress.onnx_export import OnnxExportConfig, compare_logits, ort_session
from compress.stages import ExportOnnx, QuantizeInt8, QuantizeOnnxInt8

TEXTS = builtin_task("sst2").load("test").texts[:24]


@pytest.fixture(scope="module")
def chain_out(tiny_bert_dir, tmp_path_factory):
    stages = [QuantizeInt8(name="int8"), ExportOnnx(name="onnx", parent="source"),
              QuantizeOnnxInt8(name="onnx-int8", parent="onnx")]
    res = run_stages(Artifact.load(tiny_bert_dir), stages, tmp_path_factory.mktemp("chain"))
    assert [r.status for r in res] == ["ok"] * 3, [r.reason for r in res]
    return {r.name: r.artifact for r in res}


def _logits(model, tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits


def test_int8_roundtrip_matches_fp32(tiny_bert_dir, chain_out):
    src = Artifact.load(tiny_bert_dir)
    tok = load_tokenizer(src)
    ref = _logits(load_model(src), tok, TEXTS)
    q = _logits(load_model(chain_out["int8"]), tok, TEXTS)
    assert sqnr_db(ref, q) > 20
    assert chain_out["int8"].size_mb() < 0.4 * src.size_mb()
    mods = dict(load_model(chain_out["int8"]).named_modules())
    assert type(mods["bert.encoder.layer.0.attention.self.query"]).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert type(mods["classifier"]) is torch.nn.Linear  # skipped by default


def test_onnx_loads_with_optimum_and_matches(tiny_bert_dir, chain_out):
    from optimum.onnxruntime import ORTModelForSequenceClassification

    ort_model = ORTModelForSequenceClassification.from_pretrained(chain_out["onnx"].path)
    tok = load_tokenizer(chain_out["onnx"])
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    ref = _logits(load_model(Artifact.load(tiny_bert_dir)), tok, TEXTS)
    np.testing.assert_allclose(ort_model(**enc).logits.numpy(), ref.numpy(), atol=1e-4)
    assert chain_out["onnx"].manifest["validation"]["max_abs_diff"] < 1e-4


def test_onnx_int8_close_to_fp32(chain_out):
    tok = load_tokenizer(chain_out["onnx"])
    fp32 = ort_session(chain_out["onnx"].path / "model.onnx")
    q = ort_session(chain_out["onnx-int8"].path / "model.onnx")
    enc = dict(tok(TEXTS, padding=True, return_tensors="np"))
    from compress.onnx_export import onnx_logits

    assert sqnr_db(torch.from_numpy(onnx_logits(fp32, enc)), torch.from_numpy(onnx_logits(q, enc))) > 15
    assert "MatMulInteger" in chain_out["onnx-int8"].manifest["onnx_ops"]
    assert chain_out["onnx-int8"].size_mb() < 0.3 * chain_out["onnx"].size_mb()


def test_validation_catches_a_mismatch(tiny_bert_dir, chain_out):
    """The exported graph checked against a perturbed model must fail, not warn."""
    model = load_model(Artifact.load(tiny_bert_dir))
    with torch.no_grad():
        model.classifier.bias += 0.01
    report = compare_logits(model, ort_session(chain_out["onnx"].path / "model.onnx"),
                            load_tokenizer(chain_out["onnx"]), TEXTS[:8], atol=1e-4)
    assert report["failures"] and report["max_abs_diff"] > 5e-3


def test_export_stage_raises_on_mismatch(tiny_bert_dir, tmp_path, monkeypatch):
    import compress.onnx_export as ox

    monkeypatch.setattr(ox, "compare_logits", lambda *a, **k: {"failures": ["batch 1 rows 0..0: max|diff|=1"],
                                                              "max_abs_diff": 1.0, "argmax_agreement": 0.0})
    with pytest.raises(ExportValidationError, match="does not match PyTorch"):
        ox.export_onnx(tiny_bert_dir, tmp_path, TEXTS, OnnxExportConfig())


def test_onnx_stage_needs_onnx_parent(tiny_bert_dir, tmp_path):
    from chain.errors import SpecError

    with pytest.raises(SpecError, match="quantize_onnx_int8 stage reads onnx models, but the source model is hf"):
        run_stages(Artifact.load(tiny_bert_dir), [QuantizeOnnxInt8()], tmp_path)  # refused before anything runs


def test_onnx_int8_with_int4_embeddings(chain_out, tmp_path):
    """embeddings: int4 -> the word-embedding Gather becomes GatherBlockQuantized: smaller, still close."""
    import onnx

    from compress.onnx_export import onnx_logits
    from compress.onnx_quantize import OrtInt8Config, quantize_onnx_int8

    quantize_onnx_int8(chain_out["onnx"].path, tmp_path, OrtInt8Config(embeddings="int4", embedding_block=32))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert "GatherBlockQuantized" in ops and "MatMulInteger" in ops
    assert (tmp_path / "model.onnx").stat().st_size < 0.8 * (chain_out["onnx-int8"].path / "model.onnx").stat().st_size
    tok = load_tokenizer(chain_out["onnx"])
    enc = dict(tok(TEXTS, padding=True, return_tensors="np"))
    fp32 = onnx_logits(ort_session(chain_out["onnx"].path / "model.onnx"), enc)
    q = onnx_logits(ort_session(tmp_path / "model.onnx"), enc)
    assert sqnr_db(torch.from_numpy(fp32), torch.from_numpy(q)) > 12


@pytest.mark.parametrize("bad", [dict(embeddings="int2"), dict(embedding_block=48)])
def test_onnx_int8_config_rejects_bad_embedding_settings(bad):
    from compress.onnx_quantize import OrtInt8Config

    with pytest.raises(ValueError, match="embedding"):
        OrtInt8Config(**bad)
