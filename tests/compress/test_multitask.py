"""Multi-task artifacts through every compress stage: heads carried, one output per task.

The source is a tiny BERT carrying SST-2 (own), Subj and TREC heads (``multihead_models``).
Each check can fail: a stage that drops a head leaves its task unevaluated (None), a
graph output that reads the wrong head disagrees with PyTorch, a quantizer that loses an
output raises.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.compress.multihead_models import TASKS, save_multihead
from tests.stage_runner import run_stages


@pytest.fixture(scope="module")
def multihead(tmp_path_factory):
    return save_multihead(tmp_path_factory.mktemp("mh") / "sst2")


@pytest.fixture(scope="module")
def evaluator():
    from chain.evaluate import EvalConfig, Evaluator
    from chain.task import builtin_task

    return Evaluator(EvalConfig(max_samples=48, threads=1), {t: builtin_task(t) for t in TASKS})


@pytest.fixture(scope="module")
def chain_out(multihead, tmp_path_factory):
    from compress.onnx_export import OnnxExportConfig
    from compress.onnx_int4 import OrtInt4Config
    from compress.onnx_quantize import OrtInt8Config
    from compress.prune import PruneConfig
    from compress.stages import ExportOnnx, Prune, QuantizeInt8, QuantizeOnnxInt4, QuantizeOnnxInt8

    stages = [Prune(PruneConfig(ffn=0.5, importance="l1"), name="pruned"),
              QuantizeInt8(name="int8", parent="pruned"),
              ExportOnnx(OnnxExportConfig(), name="onnx", parent="pruned"),
              ExportOnnx(OnnxExportConfig(multitask=False), name="onnx-single", parent="pruned"),
              QuantizeOnnxInt8(OrtInt8Config(), name="onnx-int8", parent="onnx"),
              QuantizeOnnxInt8(OrtInt8Config(), name="onnx-single-int8", parent="onnx-single"),
              QuantizeOnnxInt4(OrtInt4Config(), name="onnx-int4", parent="onnx")]
    res = run_stages(multihead, stages, tmp_path_factory.mktemp("run"))
    assert [r.status for r in res] == ["ok"] * len(stages), [(r.name, r.reason) for r in res]
    return {r.name: r.artifact for r in res}


def test_every_stage_evaluates_every_task(chain_out, evaluator, multihead):
    from chain.artifact import Artifact

    src = evaluator.accuracy(Artifact.load(multihead), list(TASKS))
    for name in ("pruned", "int8", "onnx", "onnx-int8", "onnx-int4"):
        acc = evaluator.accuracy(chain_out[name], list(TASKS))
        assert all(acc[t]["accuracy"] is not None for t in TASKS), (name, acc)
        assert acc["trec"]["examples"] == 48
    # fp32 ONNX computes exactly what the pruned PyTorch model does, head by head
    pruned, onnx = (evaluator.accuracy(chain_out[n], list(TASKS)) for n in ("pruned", "onnx"))
    assert {t: pruned[t]["accuracy"] for t in TASKS} == {t: onnx[t]["accuracy"] for t in TASKS}
    assert src["trec"]["accuracy"] is not None


def test_single_task_export_says_why_other_tasks_are_empty(chain_out, evaluator):
    acc = evaluator.accuracy(chain_out["onnx-single"], list(TASKS))
    assert acc["sst2"]["accuracy"] is not None
    assert acc["subj"]["accuracy"] is None and "no output for subj" in acc["subj"]["note"]


def test_multitask_graph_outputs_and_manifest(chain_out):
    import onnx

    for name in ("onnx", "onnx-int8", "onnx-int4"):
        art = chain_out[name]
        outs = [o.name for o in onnx.load(str(art.path / "model.onnx"), load_external_data=False).graph.output]
        assert outs == ["logits", "logits_sst2", "logits_subj", "logits_trec"], (name, outs)
        heads = art.manifest["heads"]
        assert heads["trec"]["labels"] == ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]
        assert heads["trec"]["num_labels"] == 6 and heads["subj"]["output"] == "logits_subj"
    v = chain_out["onnx"].manifest["head_validation"]
    assert set(v) == set(TASKS) and all(r["argmax_agreement"] == 1.0 for r in v.values())
    floats = chain_out["onnx-int8"].manifest["float_layers"]
    assert {"/classifier/Gemm", "/heads/subj/classifier/Gemm", "/heads/trec/classifier/Gemm"} <= set(floats)


def swapped_logits(model_dir, texts) -> tuple[dict, dict]:
    """(the tokenized ``texts``, {task: PyTorch logits with that task's head swapped in})."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from chain.heads import swap_head_

    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = {k: v.astype(np.int64) for k, v in tok(texts, padding=True, return_tensors="np").items()}
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    ref = {}
    for t in TASKS:
        swap_head_(model, model_dir, t)
        with torch.inference_mode():
            ref[t] = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    return enc, ref


def test_task_outputs_match_pytorch_heads(chain_out):
    """Each output of the int8 graph follows its own head: its logits are close to PyTorch's
    with that head swapped in, and far from the other heads'."""
    from chain.runtime import load_predictor
    from chain.task import builtin_task

    pruned, q = chain_out["pruned"], chain_out["onnx-int8"]
    enc, ref = swapped_logits(pruned.path, builtin_task("sst2").load("dev").texts[:16])
    for t in TASKS:
        got = load_predictor(q, 1, task=t)(enc)
        assert got.shape == ref[t].shape
        assert np.abs(got - ref[t]).max() < 0.25 * np.abs(ref[t]).max()
    assert not np.allclose(load_predictor(q, 1, task="subj")(enc), ref["sst2"], atol=0.1)


def test_unknown_task_output_is_refused(chain_out):
    from chain.errors import ModelError
    from chain.runtime import load_predictor

    with pytest.raises(ModelError, match="no output for task 'sst5'"):
        load_predictor(chain_out["onnx"], 1, task="sst5")


def test_pruning_keeps_heads_valid(chain_out, multihead):
    """Pruning shrinks FFN widths but not the hidden size every head reads."""
    import json

    from chain.heads import head_tasks, load_head

    cfg = json.loads((chain_out["pruned"].path / "config.json").read_text())
    assert cfg["intermediate_size"] < 128 and cfg["hidden_size"] == 64
    assert head_tasks(chain_out["pruned"].path) == sorted(TASKS)
    assert load_head(chain_out["pruned"].path, "trec")["classifier.weight"].shape == (6, 64)


def test_report_times_multi_vs_single_and_compares_accuracy(chain_out, tmp_path, capsys):
    import json

    from compress.multitask_report import main

    run_dir = chain_out["pruned"].path.parent.parent
    rc = main([str(run_dir), "--final", "pruned", "--out", str(tmp_path), "--calls-b1", "10", "--calls-b32", "10"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(next(tmp_path.glob("multitask-*.json")).read_text())
    assert report["tasks"] == ["sst2"] and report["accuracy"]["onnx-int8"]["sst2"]["accuracy"] is not None
    r = report["timing"]["32"]["onnx-int8 / onnx-single-int8"]
    assert r["median_ratio"] > 0 and r["ci95"][0] <= r["median_ratio"] <= r["ci95"][1]
    assert report["timing"]["outputs"]["onnx-int8"] == ["logits", "logits_sst2", "logits_subj", "logits_trec"]
    assert report["timing"]["outputs"]["onnx-single-int8"] == ["logits"]
    assert "| 32 | onnx-int8 / onnx-single-int8:" in next(tmp_path.glob("multitask-*.md")).read_text()


def test_report_bad_input_is_one_line(tmp_path, capsys):
    from compress.multitask_report import main

    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "results.json" in err and "\n" not in err


def test_openvino_ir_and_nncf_int8_keep_every_output(chain_out, evaluator, tmp_path):
    from compress.openvino import ExportOpenVino
    from compress.openvino_int8 import OpenVinoInt8Config, QuantizeOpenVinoInt8

    res = run_stages(chain_out["onnx"], [ExportOpenVino(name="ov"),
                                         QuantizeOpenVinoInt8(OpenVinoInt8Config(calibration_samples=16,
                                                                                 validation_samples=16,
                                                                                 min_agreement=0.8),
                                                              name="ov-int8", parent="source")], tmp_path)
    assert [r.status for r in res] == ["ok", "ok"], [(r.name, r.reason) for r in res]
    ov, ov8 = res[0].artifact, res[1].artifact
    assert set(ov.manifest["heads"]) == set(TASKS) and set(ov.manifest["validation"]["heads"]) == set(TASKS)
    assert ov.manifest["validation"]["heads"]["trec"]["max_abs_diff"] < 1e-3
    assert any("classifier" in p for p in ov8.manifest["float_layers"])
    import openvino

    ops = openvino.Core().read_model(str(ov8.path / "model.xml")).get_ops()
    fq = [op for op in ops if op.get_type_name() in ("FakeQuantize", "FakeConvert")]
    assert fq  # the body is quantized ...
    feeds_head = [op.get_friendly_name() for op in fq for out in op.outputs() for t in out.get_target_inputs()
                  if "classifier" in t.get_node().get_friendly_name()]
    assert feeds_head == []  # ... no head (own or copied) reads a quantized input
    onnx_acc = evaluator.accuracy(chain_out["onnx"], list(TASKS))
    ov_acc, ov8_acc = (evaluator.accuracy(a, list(TASKS)) for a in (ov, ov8))
    assert {t: ov_acc[t]["accuracy"] for t in TASKS} == {t: onnx_acc[t]["accuracy"] for t in TASKS}
    assert all(ov8_acc[t]["accuracy"] is not None for t in TASKS), ov8_acc


def test_openvino_from_hf_keeps_every_head(chain_out, tmp_path):
    """An HF artifact with three heads, converted and NNCF-quantized straight from PyTorch
    weights: one output per task (through the multi-task ONNX graph), each checked against
    PyTorch with that head swapped in, and the deploy openvino target serves them all."""
    from chain.runtime import load_predictor
    from chain.task import builtin_task
    from compress.openvino import ExportOpenVino
    from compress.openvino_int8 import OpenVinoInt8Config, QuantizeOpenVinoInt8
    from deploy.bundle import Bundle
    from deploy.export import export
    from deploy.runtime import Classifier

    pruned = chain_out["pruned"]  # hf, three heads
    res = run_stages(pruned, [ExportOpenVino(name="ov-hf"),
                              QuantizeOpenVinoInt8(OpenVinoInt8Config(calibration_samples=16, validation_samples=16,
                                                                      min_agreement=0.8),
                                                   name="ov8-hf", parent="source")], tmp_path / "run")
    assert [r.status for r in res] == ["ok", "ok"], [(r.name, r.reason) for r in res]
    ov, ov8 = res[0].artifact, res[1].artifact
    for art in (ov, ov8):
        assert set(art.manifest["heads"]) == set(TASKS) and set(art.manifest["validation"]["heads"]) == set(TASKS)
        assert not (art.path / "_multitask_onnx").exists()  # the intermediate graph is gone
    assert ov.manifest["validation"]["heads"]["trec"]["max_abs_diff"] < 1e-3
    assert any("classifier" in p for p in ov8.manifest["float_layers"])

    texts = builtin_task("sst2").load("dev").texts[:16]
    enc, ref = swapped_logits(pruned.path, texts)
    for t in TASKS:
        np.testing.assert_allclose(load_predictor(ov, 1, task=t)(enc), ref[t], atol=1e-3)
    export(pruned.path, tmp_path / "bundle", "openvino")
    clf = Classifier(Bundle.load(tmp_path / "bundle"))
    assert list(clf.tasks) == ["sst2", "subj", "trec"] and len(clf.tasks["trec"]["labels"]) == 6
    probs = clf.task_probabilities(texts)
    for t in TASKS:
        e = np.exp(ref[t] - ref[t].max(-1, keepdims=True))
        np.testing.assert_allclose(probs[t], e / e.sum(-1, keepdims=True), atol=1e-3)
