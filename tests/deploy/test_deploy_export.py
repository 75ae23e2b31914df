"""Every export target loads in its own runtime, in a process that imports no chainpress
module, and gives the artifact's logits; the files say what they are and are checksummed."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from chain.errors import ModelError, SpecError
from deploy.bundle import Bundle, verify_checksums
from deploy.export import ExportConfig, export
from deploy.portable import nonstandard_ops, op_domains

TEXTS = ["a gripping , funny and moving film .", "dull , flat and far too long .", "what is the capital of peru ?",
         "it 's not bad at all , but not great either , and the ending drags on and on for no reason ."]

# One child process, where chainpress cannot be imported, loads every export the way a
# user of that runtime would (optimum + pipeline, plain onnxruntime on .onnx and .ort,
# Triton's protobuf + onnxruntime) and prints what each gave; one interpreter start
# (~10 s of imports on a loaded 2-core VM) instead of five.
CHILD = """
import json, sys
from pathlib import Path
import numpy as np, onnxruntime as ort
from transformers import AutoTokenizer
jobs, texts, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), {}

def run_ort(model, tokdir, feed_names=None):
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    enc = AutoTokenizer.from_pretrained(tokdir)(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    names = feed_names or [i.name for i in s.get_inputs()]
    return s.run(None, {n: enc[n].astype(np.int64) for n in names})[0].tolist()

for key, (kind, path) in jobs.items():
    if kind == "optimum":
        from optimum.onnxruntime import ORTModelForSequenceClassification
        from transformers import pipeline
        model = ORTModelForSequenceClassification.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        logits = model(**tok(texts, padding=True, truncation=True, return_tensors="pt")).logits.numpy().tolist()
        clf = pipeline("text-classification", model=model, tokenizer=tok)
        out[key] = {"logits": logits, "pipeline": [r["label"] for r in clf(texts)]}
    elif kind in ("onnx", "ort"):
        out[key] = {"logits": run_ort(str(Path(path) / ("model." + kind)), path)}
    elif kind == "triton":
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as pb
        (mdir,) = [p for p in Path(path).iterdir() if p.is_dir()]
        cfg = text_format.Parse((mdir / "config.pbtxt").read_text(), pb.ModelConfig())
        out[key] = {"name": cfg.name, "backend": cfg.backend, "max_batch_size": cfg.max_batch_size,
            "inputs": [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input],
            "outputs": [(o.name, list(o.dims), o.label_filename) for o in cfg.output],
            "delay": cfg.dynamic_batching.max_queue_delay_microseconds,
            "preferred": list(cfg.dynamic_batching.preferred_batch_size),
            "instances": [(g.count, pb.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group],
            "labels": (mdir / "labels.txt").read_text().split(chr(10))[:-1],
            "logits": run_ort(str(mdir / "1" / "model.onnx"), str(mdir / "tokenizer"), [i.name for i in cfg.input])}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exports(bundle_dir, hf_artifact, int8_artifact, onnx_artifact, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("exports")
    out = {"bundle": bundle_dir}
    out["hf_bundle"] = d / "hf-bundle"
    out["hf_report"] = export(hf_artifact, out["hf_bundle"], "bundle", ExportConfig(labels=("bad", "good")))
    out["portable"] = d / "portable"
    out["portable_report"] = export(int8_artifact, out["portable"], "portable", ExportConfig(ort_format=True))
    out["portable_fp32"] = d / "portable-fp32"
    export(int8_artifact, out["portable_fp32"], "portable", ExportConfig(precision="fp32"))
    out["triton"] = d / "repo"
    out["triton_report"] = export(onnx_artifact, out["triton"], "triton", ExportConfig(
        name="sst2_tiny", max_batch_size=16, instances=2, max_queue_delay_us=500))
    return out


@pytest.fixture(scope="module")
def loaded(exports, standalone) -> dict:
    jobs = {"bundle": ("optimum", str(exports["bundle"])), "hf_bundle": ("optimum", str(exports["hf_bundle"])),
            "portable_onnx": ("onnx", str(exports["portable"])), "portable_ort": ("ort", str(exports["portable"])),
            "portable_fp32": ("onnx", str(exports["portable_fp32"])), "triton": ("triton", str(exports["triton"]))}
    return standalone(CHILD, json.dumps(jobs), json.dumps(TEXTS), timeout=300)


def artifact_logits(art_dir, texts=TEXTS) -> np.ndarray:
    from transformers import AutoTokenizer

    from compress.onnx_export import onnx_logits, ort_session

    enc = AutoTokenizer.from_pretrained(str(art_dir))(texts, padding=True, truncation=True, max_length=128,
                                                      return_tensors="np")
    return onnx_logits(ort_session(art_dir / "model.onnx"), enc)


def torch_logits(hf_dir, texts=TEXTS) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    m = AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    enc = AutoTokenizer.from_pretrained(str(hf_dir))(texts, padding=True, truncation=True, max_length=128,
                                                     return_tensors="pt")
    with torch.inference_mode():
        return m(**enc).logits.numpy()


def test_bundle_loads_in_optimum_and_pipeline_without_chainpress(loaded, onnx_artifact):
    want = artifact_logits(onnx_artifact)
    np.testing.assert_allclose(np.array(loaded["bundle"]["logits"]), want, atol=1e-5)
    names = ["negative", "positive"]
    assert loaded["bundle"]["pipeline"] == [names[k] for k in want.argmax(-1)]


def test_bundle_is_self_describing_relative_and_checksummed(bundle_dir, onnx_artifact):
    b = Bundle.load(bundle_dir)
    assert b.labels == ["negative", "positive"] and b.max_length == 128
    assert b.meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and b.meta["outputs"] == ["logits"]
    assert json.loads((bundle_dir / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    assert [s["stage"] for s in b.meta["lineage"]] == ["finetune", "onnx"]
    ref = b.reference
    assert ref["task"] == "sst2" and ref["split"] == "dev" and ref["examples"] == 872
    assert abs(sum(ref["label_freq"]) - 1) < 1e-4 and abs(sum(ref["confidence_freq"]) - 1) < 1e-4
    card = (bundle_dir / "README.md").read_text()
    assert "| onnx | ExportOnnx | sst2 | 0.5100 |" in card and "0 = negative" in card
    for f in bundle_dir.iterdir():  # no path of the exporting machine leaks into the bundle
        if f.suffix in (".json", ".md", ".txt", ".sha256"):
            assert str(onnx_artifact.parent) not in f.read_text() and "/tmp" not in f.read_text(), f.name
    assert verify_checksums(bundle_dir) == len([f for f in bundle_dir.iterdir()]) - 1
    r = subprocess.run(["sha256sum", "-c", "checksums.sha256"], cwd=bundle_dir, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_tampered_bundle_is_refused(bundle_dir, tmp_path):
    import shutil

    d = tmp_path / "b"
    shutil.copytree(bundle_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["id2label"]["0"] = "oops"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="config.json changed"):
        Bundle.load(d)


def test_bundle_from_hf_artifact_is_exported_and_checked(exports, loaded, hf_artifact):
    assert exports["hf_report"]["model_info"]["validation"]["argmax_agreement"] == 1.0
    ref = torch_logits(hf_artifact)
    np.testing.assert_allclose(np.array(loaded["hf_bundle"]["logits"]), ref, atol=1e-4)
    assert loaded["hf_bundle"]["pipeline"] == [("bad", "good")[k] for k in ref.argmax(-1)]


def test_bad_export_input_is_a_clear_error(onnx_artifact, tmp_path):
    with pytest.raises(SpecError, match="unknown export target"):
        export(onnx_artifact, tmp_path / "x", "tensorrt")
    with pytest.raises(SpecError, match="2 names"):
        export(onnx_artifact, tmp_path / "x", "bundle", ExportConfig(labels=("a", "b", "c")))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious.txt").write_text("keep me")
    with pytest.raises(ModelError, match="not an earlier export"):
        export(onnx_artifact, tmp_path / "full", "bundle")
    assert (tmp_path / "full" / "precious.txt").read_text() == "keep me"
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_int8_artifact_has_contrib_ops_and_portable_has_none(exports, loaded, int8_artifact, hf_artifact):
    assert "com.microsoft" in op_domains(int8_artifact / "model.onnx")  # the problem this target solves
    info = exports["portable_report"]["model_info"]
    p = exports["portable"]
    assert info["precision"] == "int8" and nonstandard_ops(p / "model.onnx") == []
    assert "MatMulInteger" in op_domains(p / "model.onnx")["ai.onnx"]
    assert info["validation"]["against"] == "PyTorch (finetune)" and info["validation"]["argmax_agreement"] >= 0.95
    ref = torch_logits(hf_artifact)
    for key in ("portable_onnx", "portable_ort"):
        assert np.abs(np.array(loaded[key]["logits"]) - ref).max() < 0.05, key  # int8 rounding, tiny model
    np.testing.assert_allclose(loaded["portable_ort"]["logits"], loaded["portable_onnx"]["logits"], atol=1e-5)
    assert Bundle.load(p).meta["target"] == "portable"


def test_portable_fp32_matches_pytorch(exports, loaded, hf_artifact):
    assert nonstandard_ops(exports["portable_fp32"] / "model.onnx") == []
    np.testing.assert_allclose(np.array(loaded["portable_fp32"]["logits"]), torch_logits(hf_artifact), atol=1e-4)


def test_triton_repository_parses_with_tritonclient_protobuf_and_runs(exports, loaded, onnx_artifact):
    assert exports["triton_report"]["config_check"]["parsed"] is True
    got = loaded["triton"]
    assert got["name"] == "sst2_tiny" and got["backend"] == "onnxruntime" and got["max_batch_size"] == 16
    assert got["inputs"] == [[n, "TYPE_INT64", [-1]] for n in ("input_ids", "attention_mask", "token_type_ids")]
    assert got["outputs"] == [["logits", [2], "labels.txt"]] and got["labels"] == ["negative", "positive"]
    assert got["delay"] == 500 and got["preferred"] == [4, 8, 16] and got["instances"] == [[2, "KIND_CPU"]]
    np.testing.assert_allclose(np.array(got["logits"]), artifact_logits(onnx_artifact), atol=1e-5)
    verify_checksums(exports["triton"])
    assert not list(exports["triton"].rglob(".bundle*")) and not list(exports["triton"].parent.glob(".tmp-*"))


def test_triton_config_that_disagrees_with_the_graph_is_an_error(onnx_artifact):
    from chain.errors import ExportValidationError
    from deploy.triton import check_config, graph_io, render_config

    inputs, outputs = graph_io(onnx_artifact / "model.onnx")
    text = render_config("m", inputs, outputs, ExportConfig(), 2)
    assert check_config(text, inputs, outputs, 2)["parsed"]
    with pytest.raises(ExportValidationError, match="input_ids"):
        check_config(text.replace("TYPE_INT64", "TYPE_INT32", 1), inputs, outputs, 2)
    with pytest.raises(ExportValidationError, match="does not parse"):
        check_config(text.replace("max_batch_size", "max_batch_sise"), inputs, outputs, 2)
