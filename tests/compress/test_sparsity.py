"""sparsify_ on a tiny BERT: exact fractions, the 2:4 pattern, identity at 0, the honest manifest."""
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from chain.artifact import Artifact
from chain.errors import SpecError
from chain.registry import stage_class
from tests.stage_runner import run_stages
from compress.sparsity import SparsityConfig, sparsify_, speedup_expected
from compress.stages import Sparsify


def _model(hidden=64, inter=128):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=inter, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


X = {"input_ids": torch.randint(0, 120, (4, 13)), "attention_mask": torch.ones(4, 13, dtype=torch.long)}


@pytest.mark.parametrize("frac", [0.3, 0.5, 0.9])
def test_magnitude_exact_fraction_and_smallest_go(frac):
    m = _model()
    before = {n: mod.weight.detach().clone() for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}
    report = sparsify_(m, SparsityConfig(kind="magnitude", sparsity=frac))
    assert len(report["layers"]) == 13 and "classifier" not in report["layers"]
    for name, w0 in before.items():
        w = m.get_submodule(name).weight
        if name == "classifier":
            assert torch.equal(w, w0)
            continue
        assert int((w == 0).sum()) == round(frac * w.numel())  # exact count per layer
        kept = w0.abs()[w != 0]
        assert kept.min() >= w0.abs()[w == 0].max()  # every zeroed weight was no larger than any kept one
        assert torch.equal(w[w != 0], w0[w != 0])  # survivors untouched
    assert report["sparsity"] == pytest.approx(frac, abs=1e-4)


def test_two_four_pattern_in_every_group():
    m = _model()
    report = sparsify_(m, SparsityConfig(kind="2:4"))
    for name in report["layers"]:
        w = m.get_submodule(name).weight  # (N, K): groups of 4 along K, the input dim
        nz = (w != 0).view(w.shape[0], -1, 4).sum(-1)
        assert (nz <= 2).all(), name
        assert report["layers"][name] == pytest.approx(0.5)
    assert not report["skipped"]


def test_two_four_skips_layers_not_divisible_by_four():
    lin = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 4))
    report = sparsify_(lin, SparsityConfig(kind="2:4"))
    assert set(report["layers"]) == {"1"} and "not a multiple of 4" in report["skipped"]["0"]


def test_zero_sparsity_is_identity():
    m = _model()
    with torch.inference_mode():
        ref = m(**X).logits
    sparsify_(m, SparsityConfig(kind="magnitude", sparsity=0.0))
    with torch.inference_mode():
        assert torch.equal(m(**X).logits, ref)


def test_speedup_expected_is_honest():
    for kind in ("magnitude", "2:4"):
        for backend in ("pytorch", "onnxruntime"):
            v = speedup_expected(kind, backend)
            assert v["speedup_expected"] is False and "dense" in v["why"]
    assert speedup_expected("2:4", "pytorch", "cuda", storage="semi-structured")["speedup_expected"] is True
    assert speedup_expected("magnitude", "pytorch", "cuda", storage="csr")["speedup_expected"] is False


def test_stage_writes_dense_model_and_says_no_speedup(tiny_bert_dir, tmp_path):
    assert stage_class("sparsify") is Sparsify
    [res] = run_stages(Artifact.load(tiny_bert_dir), [Sparsify(SparsityConfig(kind="2:4"))], tmp_path)
    assert res.status == "ok", res.reason
    m = res.artifact.manifest
    assert m["speedup_expected"] is False and m["size_saving_expected"] is False and "dense" in m["why"]
    assert m["sparsity"]["sparsity"] == pytest.approx(0.5)
    from chain.model import load_model

    q = load_model(res.artifact).bert.encoder.layer[0].attention.self.query.weight
    assert (q != 0).view(q.shape[0], -1, 4).sum(-1).max() <= 2
    assert res.artifact.size_mb() == pytest.approx(Artifact.load(tiny_bert_dir).size_mb(), rel=0.01)


@pytest.mark.parametrize("kw,msg", [({"kind": "4:8"}, "kind"), ({"sparsity": 1.0}, r"\[0, 1\)"),
                                    ({"kind": "2:4", "sparsity": 0.75}, "fixed at 0.5")])
def test_config_validation(kw, msg):
    with pytest.raises(SpecError, match=msg):
        SparsityConfig(**kw)
