"""OpenVINO runtimes, IR export and NNCF int8 on a tiny BERT whose logits depend on the sentence.

The default tiny BERT (initializer_range 0.02) gives nearly the same logits for every
sentence, so its argmax never changes and an agreement check could not fail (a short
fine-tune did not change that). At initializer_range 0.3 the argmax depends on the
sentence (about one real SST-2 sentence in five goes to the other class), so an int8
error near the boundary flips a prediction. (With the bias moved so that half of them go
each way, NNCF int8 agreed on 0.938 of 128 sentences and the stage failed its 0.95 check.)
"""
import numpy as np
import pytest

from chain.artifact import Artifact
from chain.environment import int8_saturates
from chain.errors import SpecError
from chain.model import load_tokenizer
from chain.predict import encode_batches
from chain.runtime import load_predictor, runtimes
from chain.task import builtin_task
from compress.openvino_int8 import OpenVinoInt8Config, QuantizeOpenVinoInt8
from compress.openvino import (ExportOpenVino, OpenVinoExportConfig,
                               cpu_has_bf16, ir_path, resolve_precision)
from compress.stages import ExportOnnx, QuantizeOnnxInt8
from tests.conftest import save_tiny_bert
from tests.stage_runner import run_stages

# fp32 -> fp32: OpenVINO fuses and reorders sums, so not bit-exact; relative to the logit scale
F32_RTOL = 1e-4
BF16_RTOL = 5e-2  # 8-bit mantissa activations


@pytest.fixture(scope="module")
def chain_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("ov")
    src = save_tiny_bert(out / "bert", initializer_range=0.3)
    stages = [ExportOnnx(parent="source"),
              ExportOpenVino(parent="onnx"),
              ExportOpenVino(name="ov-from-hf", parent="source"),
              QuantizeOpenVinoInt8(parent="onnx", config=OpenVinoInt8Config(calibration_samples=128)),
              QuantizeOnnxInt8(parent="onnx"),
              QuantizeOpenVinoInt8(name="ov-of-ort-int8", parent="onnx-int8")]
    rows = {r.name: r for r in run_stages(src, stages, out / "run", eval_samples=128)}
    rows["source"] = Artifact.load(src)
    return rows


@pytest.fixture(scope="module")
def sentences():
    return builtin_task("sst2").load("test").texts[:96]


def logits(pred, tok, texts, bs=8):
    return np.concatenate([pred(enc) for _, enc in encode_batches(tok, texts, bs)])


@pytest.fixture(scope="module")
def reference(chain_rows, sentences):
    src = chain_rows["source"]
    tok = load_tokenizer(src)
    ref = logits(load_predictor(src, 1), tok, sentences)
    share = ref.argmax(-1).mean()
    assert 0.1 <= share <= 0.9, f"both classes must be predicted for agreement to mean anything ({share:.2f})"
    return tok, ref


def test_stages_ran_and_were_evaluated(chain_rows):
    for name in ("onnx", "openvino", "ov-from-hf", "openvino-int8"):
        r = chain_rows[name]
        assert r.status == "ok", (name, r.reason)
        assert r.row["format"] == ("onnx" if name == "onnx" else "openvino")
        assert r.row["accuracy"] is not None  # the executor evaluates an openvino artifact through its runtime
    assert chain_rows["openvino"].row["accuracy"] == chain_rows["onnx"].row["accuracy"]


def test_ort_contrib_int8_parent_is_refused_with_the_fix(chain_rows):
    r = chain_rows["ov-of-ort-int8"]
    assert r.status == "failed" and "contrib ops" in r.reason and "export_onnx" in r.reason


def test_runtimes_are_listed_per_format():
    assert {None, "openvino", "openvino-bf16"} <= set(runtimes("onnx"))
    assert None in runtimes("openvino") and "torch-bf16" in runtimes("hf")


@pytest.mark.parametrize("name,runtime", [("onnx", "openvino"), ("openvino", None), ("ov-from-hf", None)])
def test_f32_runtimes_match_pytorch(chain_rows, reference, sentences, name, runtime):
    tok, ref = reference
    pred = load_predictor(chain_rows[name].artifact, 2, runtime=runtime)
    assert pred.backend == "openvino-f32"
    got = logits(pred, tok, sentences)
    np.testing.assert_allclose(got, ref, atol=F32_RTOL * np.abs(ref).max())
    # batch 1 (no padding) agrees with the padded batch too: dynamic shapes are right
    got1 = logits(pred, tok, sentences[:16], bs=1)
    np.testing.assert_allclose(got1, ref[:16], atol=F32_RTOL * np.abs(ref).max())


def test_bf16_runtime_is_close_or_refused(chain_rows, reference, sentences):
    tok, ref = reference
    onnx = chain_rows["onnx"].artifact
    if not cpu_has_bf16():
        with pytest.raises(Exception, match="no native bf16"):
            load_predictor(onnx, 1, runtime="openvino-bf16")
        return
    got = logits(load_predictor(onnx, 1, runtime="openvino-bf16"), tok, sentences)
    assert np.abs(got - ref).max() <= BF16_RTOL * np.abs(ref).max()
    assert np.abs(got - ref).max() > 0  # it really ran in reduced precision
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.95


def test_nncf_int8_agrees_on_real_sentences(chain_rows, reference, sentences):
    tok, ref = reference
    art = chain_rows["openvino-int8"].artifact
    xml = ir_path(art).read_text()
    assert xml.count('type="FakeQuantize"') + xml.count('type="FakeConvert"') >= 4, "NNCF inserted no quantizers"
    got = logits(load_predictor(art, 1), tok, sentences)
    # Faithful int8 flips only sentences near the boundary and keeps the margins' order. On an
    # AVX2-only EPYC (overflow fix on) 5 of 96 flipped, all within 0.37 of it (margin std 1.28),
    # r 0.970; ORT int8 of the same graph: 2 flips, r 0.989.
    margin, got_margin = ref[:, 1] - ref[:, 0], got[:, 1] - got[:, 0]
    flipped = got.argmax(-1) != ref.argmax(-1)
    assert flipped.mean() <= 0.08 and np.all(np.abs(margin[flipped]) < 0.5 * margin.std()), margin[flipped]
    assert np.corrcoef(margin, got_margin)[0, 1] >= 0.95
    assert not np.allclose(got, ref, atol=1e-6)  # int8 is not the fp32 graph under another name
    assert art.manifest["quantization"]["overflow_fix"] == ("enable" if int8_saturates() else "first_layer_only")
    v = art.manifest["validation"]
    assert v["argmax_agreement"] >= 0.95 and v["compared"] > 0 and art.manifest["calibration_samples"] == 128
    assert art.size_mb() < chain_rows["openvino"].artifact.size_mb()


@pytest.fixture(scope="module")
def trained_rows(tmp_path_factory):
    """A tiny BERT trained 150 steps on SST-2 (hidden 32): 4-bit tables of a random-init parent
    at std 0.3 flip a tenth of its argmaxes, a trained parent's carry redundancy (tiny_models.py)."""
    from tests.compress.tiny_models import save_tiny

    out = tmp_path_factory.mktemp("ov-emb4")
    src = save_tiny("bert", out / "bert", train_steps=150)
    cfg = dict(calibration_samples=64, validation_samples=96)
    stages = [ExportOnnx(parent="source"),
              QuantizeOpenVinoInt8(parent="onnx", config=OpenVinoInt8Config(**cfg)),
              QuantizeOpenVinoInt8(name="emb4", parent="onnx", config=OpenVinoInt8Config(
                  **cfg, embeddings="int4", embedding_block=32)),
              QuantizeOpenVinoInt8(name="emb4-rows", parent="onnx", config=OpenVinoInt8Config(
                  **cfg, embeddings="int4", embedding_block=128))]  # hidden 32: per row
    rows = {r.name: r for r in run_stages(src, stages, out / "run", eval_samples=128)}
    rows["source"] = Artifact.load(src)
    return rows


@pytest.mark.parametrize("name", ["emb4", "emb4-rows"])
def test_int4_embeddings_shrink_the_nncf_graph_and_keep_its_answers(trained_rows, sentences, name):
    """4-bit embedding tables (groups of 32, or per row where 128 does not divide the hidden
    size) beside NNCF's int8 MatMuls: smaller than NNCF's int8 tables, checked like them."""
    row, int8 = trained_rows[name], trained_rows["openvino-int8"].artifact
    assert row.status == "ok", row.reason
    art = row.artifact
    xml = ir_path(art).read_text()
    assert 'element_type="u4"' in xml and 'element_type="u4"' not in ir_path(int8).read_text()
    assert xml.count('type="FakeQuantize"') >= 4  # the MatMuls are still NNCF int8
    # the word table is 30522 x 32: 0.98 MB at int8, about half at 4 bits (+ scales, zero points)
    assert art.size_mb() < int8.size_mb() - 0.3
    src = trained_rows["source"]
    tok = load_tokenizer(src)
    ref, got = logits(load_predictor(src, 1), tok, sentences), logits(load_predictor(art, 1), tok, sentences)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.95
    assert np.corrcoef(ref[:, 1] - ref[:, 0], got[:, 1] - got[:, 0])[0, 1] >= 0.95
    q = art.manifest["quantization"]
    assert q["embeddings"] == "int4" and q["embedding_group"] == (32 if name == "emb4" else "row")  # hidden 32
    assert q["u4_constants"] >= 2  # a table's values and zero points
    assert int8.manifest["quantization"]["embeddings"] == "int8"


def test_a_stricter_check_fails_the_stage(chain_rows, tmp_path):
    """The stage's check against the parent can fail: at min_agreement 1.0 and a 1-sentence
    calibration it either agrees perfectly or is a failed row naming the agreement."""
    [r] = run_stages(chain_rows["source"], [QuantizeOpenVinoInt8(parent="source", config=OpenVinoInt8Config(
        calibration_samples=1, min_agreement=1.0, validation_samples=64))], tmp_path / "out")
    if r.status == "ok":
        assert r.artifact.manifest["validation"]["gated_agreement"] == 1.0
    else:
        assert r.status == "failed" and "argmax agreement" in r.reason


@pytest.mark.parametrize("kw", [{"precision": "f16"}, {"preset": "fast"}, {"calibration_samples": 0},
                                {"min_agreement": 0}, {"overflow_fix": "on"}, {"embeddings": "int2"},
                                {"embedding_block": 100}])
def test_bad_int8_config_is_a_spec_error(kw):
    with pytest.raises(SpecError):
        OpenVinoInt8Config(**kw)


def test_bad_export_config_is_a_spec_error():
    with pytest.raises(SpecError, match="precision"):
        OpenVinoExportConfig(precision="int8")


def test_openvino_artifact_without_ir_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="expected one OpenVINO .xml"):
        load_predictor(Artifact(tmp_path, {"format": "openvino", "stage": "x"}), 1)


def test_auto_precision_is_decided_where_the_artifact_runs(chain_rows):
    art = chain_rows["openvino"].artifact
    auto = Artifact(art.path, {**art.manifest, "openvino": {**art.manifest["openvino"], "precision": "auto"}})
    want = "bf16" if cpu_has_bf16() else "f32"
    assert resolve_precision("auto") == want and resolve_precision("f32") == "f32"
    assert load_predictor(auto, 1).backend == f"openvino-{want}"


def test_the_check_gates_the_sentences_the_parent_decides(tiny_bert_dir):
    """Near ties flip under any int8 graph (SST-5: ORT int8 agreed on 0.914 at no accuracy cost);
    a flip the parent was sure of is what fails the check."""
    from compress.openvino import DECIDED_GAP, MIN_DECIDED, compare

    tok = load_tokenizer(Artifact.load(tiny_bert_dir))
    texts = [f"sentence number {i} of the check" for i in range(48)]

    def decided(enc):  # which rows the parent decides, read from their content
        return (enc["input_ids"] * enc["attention_mask"]).sum(-1) % 2 == 0

    def ref(enc):  # decided rows 3 vs 0; near ties 0.05 vs 0 (a top-two gap of 0.012 < DECIDED_GAP)
        d = decided(enc)
        return np.stack([np.where(d, 3.0, 0.05), np.zeros(len(d))], -1)

    def flips_ties(enc):
        d = decided(enc)
        return np.stack([np.where(d, 3.0, 0.0), np.where(d, 0.0, 0.05)], -1)

    ties = compare(ref, flips_ties, tok, texts)
    assert MIN_DECIDED <= ties["decided"] < ties["compared"] and DECIDED_GAP > 0.012
    assert ties["gated_agreement"] == ties["decided_agreement"] == 1.0
    assert ties["argmax_agreement"] == pytest.approx(ties["decided"] / ties["compared"], abs=1e-4)
    assert ties["argmax_agreement"] < 0.95  # the old gate would have failed this stage
    worst = compare(ref, lambda enc: ref(enc)[:, ::-1], tok, texts)
    assert worst["gated_agreement"] == 0.0 and worst["argmax_agreement"] == 0.0
