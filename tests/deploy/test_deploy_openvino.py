"""The ``openvino`` export target: OpenVINO IR in a bundle that optimum-intel and ``pipeline()``
load without chainpress, that ``Classifier`` (serve, predict) runs, with clear refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from chain.errors import ModelError, SpecError
from deploy.bundle import Bundle, verify_checksums
from deploy.export import ExportConfig, export
from deploy.runtime import Classifier

TEXTS = ["a gripping , funny and moving film .", "dull , flat and far too long .",
         "it 's not bad at all , but not great either , and the ending drags on and on for no reason ."]

CHILD = """
import json, sys
from optimum.intel import OVModelForSequenceClassification
from transformers import AutoTokenizer, pipeline
path, texts = sys.argv[1], json.loads(sys.argv[2])
model = OVModelForSequenceClassification.from_pretrained(path, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
tok = AutoTokenizer.from_pretrained(path)
logits = model(**tok(texts, padding=True, truncation=True, return_tensors="pt")).logits.numpy().tolist()
clf = pipeline("text-classification", model=model, tokenizer=tok)
print(json.dumps({"logits": logits, "labels": [r["label"] for r in clf(texts)]}))
"""


def onnx_logits(art_dir, texts=TEXTS) -> np.ndarray:
    from transformers import AutoTokenizer

    from compress.onnx_export import onnx_logits as run, ort_session

    enc = AutoTokenizer.from_pretrained(str(art_dir))(texts, padding=True, truncation=True, max_length=128,
                                                      return_tensors="np")
    return run(ort_session(art_dir / "model.onnx"), enc)


@pytest.fixture(scope="module")
def ov_bundle(onnx_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov") / "sst2-ov"
    report = export(onnx_artifact, out, "openvino", ExportConfig(labels=("bad", "good")))
    return out, report


def test_openvino_bundle_loads_in_optimum_intel_without_chainpress(ov_bundle, onnx_artifact, standalone):
    out, report = ov_bundle
    assert (out / "openvino_model.xml").is_file() and (out / "openvino_model.bin").is_file()
    assert not (out / "model.onnx").exists()
    got = standalone(CHILD, str(out), json.dumps(TEXTS), timeout=300)
    want = onnx_logits(onnx_artifact)
    np.testing.assert_allclose(np.array(got["logits"]), want, atol=1e-3)
    assert got["labels"] == [("bad", "good")[k] for k in want.argmax(-1)]
    assert report["model_info"]["precision"] == "f32" and report["model_info"]["validation"]["max_abs_diff"] <= 1e-3


def test_openvino_bundle_runs_in_classifier_and_is_checksummed(ov_bundle, onnx_artifact):
    out, _ = ov_bundle
    b = Bundle.load(out)
    assert b.meta["target"] == "openvino" and b.meta["model"] == "openvino_model.xml"
    assert b.meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and b.meta["outputs"] == ["logits"]
    assert verify_checksums(out) >= 5
    np.testing.assert_allclose(Classifier(b).logits(TEXTS), onnx_logits(onnx_artifact), atol=1e-3)
    card = (out / "README.md").read_text()
    assert "OVModelForSequenceClassification" in card and "library_name: openvino" in card


def test_openvino_artifact_is_copied_and_hf_is_converted(hf_artifact, onnx_artifact, tmp_path):
    from chain.artifact import Artifact, write_manifest
    from compress.openvino import save_ir
    from compress.openvino_source import to_openvino

    art = tmp_path / "02-openvino"
    art.mkdir()
    save_ir(to_openvino(Artifact.load(onnx_artifact), {}), art, Artifact.load(onnx_artifact))
    write_manifest(art, stage="openvino", stage_type="ExportOpenVino", format="openvino", num_labels=2,
                   task=Artifact.load(onnx_artifact).manifest["task"], openvino={"xml": "model.xml", "precision": "f32"},
                   parent=str(onnx_artifact), parent_stage="onnx")
    r = export(art, tmp_path / "from-ov", "openvino")
    assert r["model_info"]["how"].startswith("copied from the OpenVINO artifact")
    r = export(hf_artifact, tmp_path / "from-hf", "openvino")
    assert r["model_info"]["how"].startswith("converted by OpenVINO from the hf")
    want = onnx_logits(onnx_artifact)
    for d in ("from-ov", "from-hf"):
        np.testing.assert_allclose(Classifier(Bundle.load(tmp_path / d)).logits(TEXTS), want, atol=1e-3)


def test_openvino_target_refusals_are_one_clear_line(int8_artifact, onnx_artifact, tmp_path):
    with pytest.raises(ModelError, match="contrib ops.*quantize_openvino_int8"):
        export(int8_artifact, tmp_path / "a", "openvino")
    with pytest.raises(SpecError, match="NNCF.*quantize_openvino_int8"):
        export(onnx_artifact, tmp_path / "b", "openvino", ExportConfig(precision="int8"))
    with pytest.raises(SpecError, match="bf16 is for --target openvino"):
        export(onnx_artifact, tmp_path / "c", "bundle", ExportConfig(precision="bf16"))
    assert not any(tmp_path.iterdir())  # nothing half-written is left behind


def test_triton_repository_for_the_openvino_backend(onnx_artifact, tmp_path):
    from deploy.triton import parse_config

    r = export(onnx_artifact, tmp_path / "repo", "triton", ExportConfig(name="sst2_ov", backend="openvino"))
    mdir = tmp_path / "repo" / "sst2_ov"
    assert (mdir / "1" / "model.xml").is_file() and (mdir / "1" / "model.bin").is_file()
    assert not (mdir / "1" / "model.onnx").exists()
    assert r["config_check"]["parsed"] and r["config_check"]["backend"] == "openvino"
    cfg = parse_config((mdir / "config.pbtxt").read_text())
    assert [(i.name, list(i.dims)) for i in cfg.input] == [(n, [-1]) for n in
                                                           ("input_ids", "attention_mask", "token_type_ids")]
    assert {p for p in cfg.parameters} == {"INFERENCE_NUM_THREADS", "PERFORMANCE_HINT"}
    with pytest.raises(SpecError, match="backend must be"):
        ExportConfig(backend="tensorrt")
