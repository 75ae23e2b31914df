"""Per-architecture facts every compression verb reads, declared once (like optimum's export configs).

Each ``Arch`` says where a model's parts live, by module path, so prune, quantize, the
ONNX quantizers, finetune's freeze/LoRA defaults and ``kernels.apply`` never guess from
BERT's names. Paths under ``embeddings``/``blocks`` are relative to the base model
(``model.base_model_prefix``); paths in ``Attention``/``FFN`` are relative to one block;
``head`` paths are relative to the task model (they stay float in every quantizer).

>>> arch = arch_for(model)                # or arch_for(config) / arch_for({"model_type": ...})
>>> arch.head                             # ('classifier.dense', 'classifier.out_proj')
>>> check_stage("prune", config_dict, PruneConfig(heads=0.5))   # SpecError if unsupported
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ModelError, SpecError


@dataclass(frozen=True)
class Attention:
    q: str  # module paths inside a block; q == k == v for a fused QKV projection
    k: str
    v: str
    o: str
    heads_attr: str = "num_attention_heads"  # config.json key of the head count
    kv_heads_attr: str | None = None  # grouped KV heads (Llama, Qwen2): pruned as whole groups
    hf_prune: str | None = None  # module whose HF ``prune_heads`` records config.pruned_heads
    head_dim_attr: str | None = None  # config key that must hold the head size once heads are sliced
    extra_rows: tuple[str, ...] = ()  # per-head projections sliced with Q/K (DeBERTa pos_*_proj)

    @property
    def fused(self) -> bool:
        return self.q == self.k


@dataclass(frozen=True)
class FFN:
    up: tuple[str, ...]  # projections whose output rows are the intermediate neurons (gate + up)
    down: str
    size_attr: str = "intermediate_size"


@dataclass(frozen=True)
class Arch:
    model_type: str
    name: str
    embeddings: tuple[str, ...]  # token-embedding tables (int8/int4 Gather targets)
    embedding_modules: tuple[str, ...]  # what finetune.freeze "embeddings" freezes
    blocks: str  # ModuleList of transformer blocks
    attention: Attention
    ffn: FFN
    head: tuple[str, ...]  # task-head modules, kept float by every quantizer
    decoder: bool = False
    layers_attr: str = "num_hidden_layers"
    shared_layers: bool = False  # ALBERT: one block applied at every depth
    linear_kinds: tuple[str, ...] = ("Linear",)  # module classes computing x @ W^T + b
    ort_fusion: str | None = "bert"  # onnxruntime.transformers optimizer model_type, None = no fusion
    bert_blocks: bool = False  # blocks are structurally BERT's (what kernels.apply patches)
    no_prune: str | None = None  # why heads/FFN pruning is impossible here, with what to do instead
    no_head_prune: str | None = None  # why heads (only) cannot be pruned here
    lora_targets: tuple[str, ...] = ()

    def full(self, model, path: str) -> str:
        """A base-model path as a qualified name in ``model`` (task model or bare base model)."""
        prefix = getattr(model, "base_model_prefix", "")
        return f"{prefix}.{path}" if prefix and hasattr(model, prefix) else path


_BERT_ATT = Attention("attention.self.query", "attention.self.key", "attention.self.value",
                      "attention.output.dense", hf_prune="attention")
_BERT_FFN = FFN(("intermediate.dense",), "output.dense")
_ROBERTA_HEAD = ("classifier.dense", "classifier.out_proj")


def _bert_like(model_type: str, name: str, head: tuple[str, ...]) -> Arch:
    return Arch(model_type, name, ("embeddings.word_embeddings",), ("embeddings",), "encoder.layer", _BERT_ATT,
                _BERT_FFN, head, bert_blocks=True, lora_targets=("query", "value"))


ARCHS: dict[str, Arch] = {a.model_type: a for a in (
    _bert_like("bert", "BERT", ("classifier",)),
    _bert_like("roberta", "RoBERTa", _ROBERTA_HEAD),
    _bert_like("xlm-roberta", "XLM-R", _ROBERTA_HEAD),
    _bert_like("electra", "ELECTRA", _ROBERTA_HEAD),
    Arch("distilbert", "DistilBERT", ("embeddings.word_embeddings",), ("embeddings",), "transformer.layer",
         Attention("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
                   heads_attr="n_heads", hf_prune="attention"),
         FFN(("ffn.lin1",), "ffn.lin2", size_attr="hidden_dim"), ("pre_classifier", "classifier"),
         layers_attr="n_layers", lora_targets=("q_lin", "v_lin")),
    Arch("albert", "ALBERT", ("embeddings.word_embeddings",), ("embeddings",), "encoder.albert_layer_groups.0.albert_layers",
         Attention("attention.query", "attention.key", "attention.value", "attention.dense"),
         FFN(("ffn",), "ffn_output"), ("classifier",), shared_layers=True,
         no_prune="ALBERT shares one layer across depth, so heads or FFN neurons cannot be removed from one "
                  "layer; drop `prune`, or prune only depth with `drop_layers`",
         lora_targets=("query", "value")),
    Arch("mpnet", "MPNet", ("embeddings.word_embeddings",), ("embeddings",), "encoder.layer",
         Attention("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o",
                   hf_prune="attention"), _BERT_FFN, _ROBERTA_HEAD, lora_targets=("q", "v"),
         no_head_prune="MPNet adds one relative-position bias with every head's slot to all layers, so a layer "
                       "cannot lose heads; set `heads: 0` and prune `ffn` or `drop_layers`"),
    Arch("deberta-v2", "DeBERTa-v2", ("embeddings.word_embeddings",), ("embeddings",), "encoder.layer",
         Attention("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
                   "attention.output.dense", head_dim_attr="attention_head_size",
                   extra_rows=("attention.self.pos_key_proj", "attention.self.pos_query_proj")),
         _BERT_FFN, ("pooler.dense", "classifier"), lora_targets=("query_proj", "value_proj"),
         no_head_prune="DeBERTa-v2 builds its attention output projection as hidden x hidden from the config, so "
                       "a checkpoint with fewer heads cannot be reloaded; set `heads: 0` and prune `ffn` or "
                       "`drop_layers`"),
    Arch("modernbert", "ModernBERT", ("embeddings.tok_embeddings",), ("embeddings",), "layers",
         Attention("attn.Wqkv", "attn.Wqkv", "attn.Wqkv", "attn.Wo"), FFN(("mlp.Wi",), "mlp.Wo"),
         ("head.dense", "classifier"), ort_fusion=None,
         no_prune="ModernBERT fuses Q, K and V in one `Wqkv` and gates its FFN inside one `Wi`, and its "
                  "layers alternate global/local attention by index; drop `prune` (quantize instead)",
         lora_targets=("Wqkv",)),
    Arch("gpt2", "GPT-2", ("wte",), ("wte", "wpe"), "h",
         Attention("attn.c_attn", "attn.c_attn", "attn.c_attn", "attn.c_proj", heads_attr="n_head"),
         FFN(("mlp.c_fc",), "mlp.c_proj", size_attr="n_inner"), ("score",), decoder=True, layers_attr="n_layer",
         linear_kinds=("Linear", "Conv1D"), ort_fusion="gpt2",
         no_prune="GPT-2 fuses Q, K and V in one Conv1D `c_attn`; drop `prune` (quantize instead)",
         lora_targets=("c_attn",)),
    *(Arch(mt, name, ("embed_tokens",), ("embed_tokens",), "layers",
           Attention("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     kv_heads_attr="num_key_value_heads", head_dim_attr="head_dim"),
           FFN(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"), ("score",), decoder=True, ort_fusion=None,
           lora_targets=("q_proj", "v_proj"))
      for mt, name in (("llama", "Llama"), ("qwen2", "Qwen2"))),
)}


def arch_for(obj) -> Arch:
    """The declaration for a model, a transformers config or a config.json dict; ModelError if none."""
    if isinstance(obj, dict):
        model_type = obj.get("model_type")
    else:
        model_type = getattr(getattr(obj, "config", obj), "model_type", None)
    if model_type not in ARCHS:
        raise ModelError(f"no architecture declaration for model_type={model_type!r}; chainpress supports "
                         f"{', '.join(a.name for a in ARCHS.values())} (add an entry to chain/arch.py)")
    return ARCHS[model_type]


def head_skip(arch: Arch) -> tuple[str, ...]:
    """Glob patterns matching the head modules in a task model (and after a wrapper prefix)."""
    return tuple(p for h in arch.head for p in (h, f"*.{h}"))


DEFAULT_SKIP = ("classifier", "*.classifier")  # for modules without an architecture declaration


def body_skip(model) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(skip globs = the declared head, linear kinds) for ``model``; BERT's defaults without a declaration."""
    try:
        arch = arch_for(model)
    except ModelError:
        return DEFAULT_SKIP, ("Linear",)
    return head_skip(arch), arch.linear_kinds


def _get(cfg, key: str, default=None):
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def check_stage(stage_type: str, model_config, stage_config=None) -> None:
    """Raise ``SpecError`` if ``stage_type`` cannot run on this architecture, saying what to do instead.

    ``model_config`` is the model's config.json (dict) or a transformers config; ``stage_config``
    the stage's typed config (PruneConfig, FineTuneConfig, ...) or None.
    """
    try:
        arch = arch_for(model_config)
    except ModelError as e:
        raise SpecError(f"{stage_type}: {e}") from None
    where = f"{stage_type}: {arch.name}"
    if stage_type == "finetune" and stage_config is not None:
        freeze = _get(stage_config, "freeze") or []
        if arch.shared_layers and any(str(p).startswith("layers:") for p in freeze):
            raise SpecError(f"{where} shares one layer across depth, so `freeze: layers:K` would freeze every "
                            "depth; freeze `embeddings` only, or use `lora`")
    elif stage_type == "prune" and stage_config is not None:
        heads, ffn, drop = (_get(stage_config, k, 0) for k in ("heads", "ffn", "drop_layers"))
        overrides = _get(stage_config, "overrides") or {}
        wants_structures = heads or ffn or any(v for ov in overrides.values() for v in ov.values())
        if arch.no_prune and (wants_structures or not arch.shared_layers):
            raise SpecError(f"pruning: {arch.no_prune}")
        if arch.no_head_prune and (heads or any(ov.get("heads") for ov in overrides.values())):
            raise SpecError(f"pruning heads: {arch.no_head_prune}")
        if not arch.attention.hf_prune and overrides:
            raise SpecError(f"{where} stores one head count and one FFN width for every layer; per-layer "
                            "`overrides` cannot be saved; drop `overrides` and give one fraction")
        kv = arch.attention.kv_heads_attr
        if heads and kv:
            groups = _get(model_config, kv) or _get(model_config, arch.attention.heads_attr)
            if round(groups * heads) < 1:
                raise SpecError(f"{where} prunes heads as whole KV groups and has {groups} groups per layer; "
                                f"heads={heads} removes none; use heads >= {1 / groups:.2f} or drop it")
    elif stage_type == "kernels" and not arch.bert_blocks:
        raise SpecError(f"{where} blocks are not BERT's (the fused kernels patch BERT, RoBERTa, XLM-R and "
                        "ELECTRA encoders); drop `kernels`, or use export_onnx + quantize_onnx_int8 for speed")
    elif stage_type == "sparsify" and "Conv1D" in arch.linear_kinds:
        raise SpecError(f"{where} keeps its body in Conv1D layers, which sparsify does not rewrite; drop "
                        "`sparsify` (use quantize_int8 or quantize_onnx_int8)")
    elif stage_type == "quantize_accuracy_aware" and "Conv1D" in arch.linear_kinds:
        raise SpecError(f"{where} keeps its body in Conv1D layers, which the accuracy-aware search does not "
                        "rank; use quantize_int8 with `skip` globs instead")
    elif stage_type == "quantize_onnx_static_int8" and arch.decoder:
        raise SpecError(f"{where} is a decoder; calibrated QDQ int8 is validated on encoders only; use "
                        "quantize_onnx_int8 (dynamic) or quantize_onnx_int4")
