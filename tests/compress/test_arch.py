"""chain.arch: the declarations match the real models, check_stage refuses up front, no silent no-op."""
from __future__ import annotations

import json

import onnx
import pytest
import torch
from tiny_models import configs, save_tiny

from chain.errors import ModelError, SpecError
from chain.arch import ARCHS, arch_for, check_stage
from compress.prune import PruneConfig, prune_
from compress.walker import is_linear

MODEL_TYPES = list(configs())


def _model(mt: str):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(configs()[mt]).eval()


def _ids(n: int = 3, seq: int = 9):
    ids = torch.randint(1000, 2000, (n, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


@pytest.mark.parametrize("mt", MODEL_TYPES)
def test_declaration_matches_the_model(mt):
    model, arch = _model(mt), ARCHS[mt]
    assert arch_for(model) is arch and arch_for(model.config) is arch and arch_for({"model_type": mt}) is arch
    for p in arch.embeddings:
        assert isinstance(model.get_submodule(arch.full(model, p)), torch.nn.Embedding)
    for p in arch.embedding_modules:
        model.get_submodule(arch.full(model, p))
    blocks = model.get_submodule(arch.full(model, arch.blocks))
    a = arch.attention
    for block in blocks:
        for p in (a.q, a.k, a.v, a.o, *arch.ffn.up, arch.ffn.down):
            assert is_linear(block.get_submodule(p), arch.linear_kinds), (mt, p)
    # the head = every linear-like module outside the base model, as chain.heads defines it
    outside = {n for n, m in model.named_modules()
               if is_linear(m, arch.linear_kinds) and not n.startswith(model.base_model_prefix + ".")}
    assert outside == set(arch.head)
    heads = json.loads(model.config.to_json_string())[a.heads_attr]
    assert heads == 4 and arch.ort_fusion in ("bert", "gpt2", None)
    assert json.loads(model.config.to_json_string())[arch.layers_attr] == 2


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ModelError, match=r"model_type='t5'.*BERT, RoBERTa.*chain/arch.py"):
        arch_for({"model_type": "t5"})
    with pytest.raises(SpecError, match="quantize_int8: no architecture declaration"):
        check_stage("quantize_int8", {"model_type": "t5"}, None)


REFUSALS = [
    ("albert", "prune", PruneConfig(heads=0.5), ["ALBERT shares one layer across depth", "drop `prune`",
                                                 "drop_layers"]),
    ("gpt2", "prune", PruneConfig(ffn=0.5), ["GPT-2 fuses Q, K and V", "drop `prune`"]),
    ("modernbert", "prune", PruneConfig(drop_layers=[1]), ["ModernBERT", "drop `prune`"]),
    ("mpnet", "prune", PruneConfig(heads=0.5), ["pruning heads: MPNet", "set `heads: 0`"]),
    ("deberta-v2", "prune", PruneConfig(heads=0.5), ["DeBERTa-v2", "`heads: 0`"]),
    ("llama", "prune", PruneConfig(ffn=0.5, overrides={"model.layers.0": {"ffn": 0.25}}), ["Llama", "overrides"]),
    ("qwen2", "prune", PruneConfig(heads=0.25), ["Qwen2 prunes heads as whole KV groups", "heads >= 0.50"]),
    ("distilbert", "kernels", None, ["kernels: DistilBERT blocks are not BERT's", "drop `kernels`"]),
    ("llama", "kernels", None, ["Llama", "drop `kernels`"]),
    ("albert", "finetune", {"freeze": ["layers:1"]}, ["ALBERT shares one layer", "use `lora`"]),
    ("gpt2", "sparsify", None, ["GPT-2", "Conv1D", "drop `sparsify`"]),
    ("gpt2", "quantize_accuracy_aware", None, ["GPT-2", "Conv1D"]),
    ("llama", "quantize_onnx_static_int8", None, ["Llama is a decoder", "quantize_onnx_int8"]),
]


@pytest.mark.parametrize("mt,stage,cfg,parts", REFUSALS, ids=[f"{r[0]}-{r[1]}" for r in REFUSALS])
def test_check_stage_refuses_naming_arch_stage_and_what_to_do(mt, stage, cfg, parts):
    with pytest.raises(SpecError) as e:
        check_stage(stage, configs()[mt].to_dict(), cfg)
    for part in parts:
        assert part in str(e.value), str(e.value)


@pytest.mark.parametrize("mt,stage,cfg", [
    ("albert", "prune", PruneConfig(drop_layers=[1])), ("mpnet", "prune", PruneConfig(ffn=0.5)),
    ("qwen2", "prune", PruneConfig(heads=0.5)), ("roberta", "kernels", None), ("electra", "kernels", None),
    ("xlm-roberta", "kernels", None), ("gpt2", "finetune", {"freeze": ["embeddings", "layers:1"]}),
    ("bert", "prune", PruneConfig(heads=0.5, overrides={"bert.encoder.layer.0": {"heads": 0.0}})),
])
def test_check_stage_accepts_supported_combinations(mt, stage, cfg):
    check_stage(stage, configs()[mt], cfg)


def test_albert_drop_layers_shortens_the_shared_depth(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, x = _model("albert"), _ids()
    report = prune_(model, PruneConfig(drop_layers=[1]))
    assert report["dropped_layers"] == [1] and model.config.num_hidden_layers == 1
    y = model(**x).logits
    model.save_pretrained(tmp_path)
    assert torch.equal(AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()(**x).logits, y)


@pytest.mark.parametrize("mt", ["llama", "qwen2"])
def test_grouped_kv_heads_are_pruned_as_groups(mt, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, x = _model(mt), _ids()
    att = model.model.layers[0].self_attn
    with torch.no_grad():  # make KV group 0 (query heads 0-1, K/V head 0) the weakest: it must go
        att.q_proj.weight[:16] *= 1e-3
        att.k_proj.weight[:8] *= 1e-3
        att.v_proj.weight[:8] *= 1e-3
        att.o_proj.weight[:, :16] *= 1e-3
        kept_q = att.q_proj.weight[16:].clone()
    report = prune_(model, PruneConfig(heads=0.5, ffn=0.5))
    assert report["heads"] == {0: 1, 1: 1}  # one KV group of two per layer
    att = model.model.layers[0].self_attn
    assert (att.q_proj.out_features, att.k_proj.out_features, att.v_proj.out_features) == (16, 8, 8)
    assert torch.equal(att.q_proj.weight, kept_q) and att.o_proj.in_features == 16
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (2, 1, 8, 32)
    y = model(**x).logits
    model.save_pretrained(tmp_path)
    assert torch.equal(AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()(**x).logits, y)


def test_gpt2_int8_covers_conv1d_and_refuses_a_head_only_run(tmp_path):
    """No silent no-op: every Conv1D of GPT-2's body is quantized; quantizing nothing but the head raises."""
    from transformers import AutoModelForSequenceClassification

    from compress.torch_int8 import Int8DynamicConfig, load_int8, save_int8

    model, x = _model("gpt2"), _ids()
    fields = save_int8(model, tmp_path, Int8DynamicConfig())
    assert fields["quantized_layers"] == 8  # c_attn, c_proj, c_fc, mlp.c_proj x 2 layers
    assert fields["quantized_embeddings"] == ["transformer.wte"]
    assert fields["float_layers"]["score"].startswith("head") and "transformer.wpe" in fields["float_layers"]
    q = load_int8(type("A", (), {"path": tmp_path})())
    assert type(q.transformer.h[0].attn.c_attn).__name__ == "Linear" and hasattr(q.transformer.h[0].attn.c_attn,
                                                                                  "_packed_params")
    with torch.inference_mode():
        ref, got = model(**x).logits, q(**x).logits
    from compress.formats import sqnr_db
    assert sqnr_db(ref, got) > 20
    with pytest.raises(ModelError, match="no layer of this GPT-2 model's body would be quantized"):
        save_int8(model, tmp_path / "none", Int8DynamicConfig(skip=("transformer.*",)))
    # the artifact is refused loudly by plain transformers, never loaded as random weights
    with pytest.raises(OSError):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from chain.task import builtin_task
    from compress.onnx_export import export_onnx

    texts = builtin_task("sst2").load("dev").texts[:16]
    made = {}

    def get(mt):
        if mt not in made:
            d = tmp_path_factory.mktemp(mt)
            save_tiny(mt, d / "hf")
            export_onnx(d / "hf", d / "onnx", texts)
            made[mt] = d / "onnx"
        return made[mt]
    return get


def test_albert_int4_quantizes_the_shared_layer_on_every_pass(exported, tmp_path):
    from compress.onnx_int4 import OrtInt4Config, quantize_onnx_int4

    src = exported("albert")
    report = quantize_onnx_int4(src, tmp_path, OrtInt4Config(method="rtn"))  # structure, not fidelity
    ops = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    # mapping-in + 6 linears per pass x 2 passes + pooler; only the classifier stays fp32
    assert ops.count("MatMulNBits") == 14 and report["int4_matmuls"] == 14
    assert list(report["float_layers"]) == ["/classifier/Gemm"]
    body = [n.name for n in onnx.load(str(src / "model.onnx")).graph.node
            if n.op_type in ("MatMul", "Gemm") and "classifier" not in n.name]
    with pytest.raises(ModelError, match="quantize_onnx_int4: none of this ALBERT graph's"):
        quantize_onnx_int4(src, tmp_path, OrtInt4Config(exclude=tuple(body), method="rtn"))


def test_llama_int4_keeps_rmsnorm_valid_at_opset_21(exported, tmp_path):
    from compress.onnx_export import ort_session
    from compress.onnx_int4 import OrtInt4Config, quantize_onnx_int4

    quantize_onnx_int4(exported("llama"), tmp_path, OrtInt4Config(method="rtn"))
    model = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(model)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 21
    reduce_mean = [n for n in model.graph.node if n.op_type == "ReduceMean"]
    assert reduce_mean and all(len(n.input) == 2 and all(a.name != "axes" for a in n.attribute) for n in reduce_mean)
    ids = _ids()
    out = ort_session(tmp_path / "model.onnx").run(None, {k: v.numpy() for k, v in ids.items()})[0]
    assert out.shape == (3, 2) and torch.isfinite(torch.from_numpy(out)).all()


@pytest.mark.parametrize("mt,frozen_prefixes", [("gpt2", ("transformer.wte", "transformer.wpe")),
                                                ("llama", ("model.embed_tokens",)),
                                                ("distilbert", ("distilbert.embeddings",))])
def test_freeze_and_lora_defaults_follow_the_declaration(mt, frozen_prefixes):
    from chain.finetune import LoraSettings, apply_lora, freeze_

    model = _model(mt)
    n = freeze_(model, ["embeddings", "layers:1"])
    arch = ARCHS[mt]
    block0 = arch.full(model, arch.blocks) + ".0."
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {k for k, _ in model.named_parameters() if k.startswith(frozen_prefixes + (block0,))}
    assert n == sum(p.numel() for k, p in model.named_parameters() if k in frozen)
    peft_model = apply_lora(_model(mt), LoraSettings())
    lora = [k for k, _ in peft_model.named_parameters() if "lora_A" in k]
    assert lora and all(any(f".{t}." in k for t in arch.lora_targets) for k in lora)
