"""Fused replacements for BERT-structured encoder modules (transformers 4.57), and the swap.

Which models qualify is decided from ``chain.arch`` (architectures declaring
``bert_blocks``: BERT, RoBERTa, XLM-R, ELECTRA) and then checked structurally, block by
block: each block must hold ``attention.self`` (query/key/value/dropout),
``attention.output`` and ``output`` (dense/LayerNorm/dropout) and ``intermediate``
(dense + activation), exactly BERT's children, so RoBERTa's copied modules are patched
while anything else is refused before the model is touched.

Each replacement keeps the original module (``.original``, not registered as a child, so
``state_dict`` keys do not change) and re-registers the original's children under the
same names (``query``, ``dense``, ``LayerNorm``, ...), so weights stay shared: ``revert``
puts back the very same objects. Quantized variants swap the linears for ``Int8Linear`` /
``Int4Linear`` and keep the fp weights only on ``.original`` (for an exact revert).

  BertSelfAttention / BertSdpaSelfAttention -> FusedBertSelfAttention (flash-style kernel)
  BertIntermediate                          -> FusedBertIntermediate (GEMM + bias-GELU kernel,
                                               or weight-only GEMM with a GELU epilogue)
  BertSelfOutput / BertOutput               -> FusedBertOutput (GEMM + residual-LayerNorm kernel)
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformers.activations import GELUActivation

from chain.arch import arch_for

from . import UnsupportedInputError, UnsupportedModelError
from .attention import fused_attention
from .bias_gelu import bias_gelu
from .int4_gemm import Int4Linear
from .int8_gemm import Int8Linear
from .residual_layernorm import residual_layernorm

SUPPORTED = ("Hugging Face encoders with BERT's blocks (model_type bert, roberta, xlm-roberta, electra, e.g. "
             "bert-base-uncased, all-MiniLM-L6-v2, roberta-base; the base model and its task heads) with absolute "
             "position embeddings, no decoder/cross-attention and erf GELU (hidden_act='gelu')")
# Children of each BERT block part, by name and type: what the fused modules re-register.
_SELF_ATTENTION = {"query": nn.Linear, "key": nn.Linear, "value": nn.Linear, "dropout": nn.Dropout}
_OUTPUT = {"dense": nn.Linear, "LayerNorm": nn.LayerNorm, "dropout": nn.Dropout}
_INTERMEDIATE = {"dense": nn.Linear}  # + intermediate_act_fn when the activation is a module
_USE_REFERENCE = "call kernels.revert(model) or run it inside `with kernels.reference_path(model):`"


def _check_runnable(module: nn.Module) -> None:
    if module.training:
        raise RuntimeError("kernels are inference-only (no dropout, no backward): call model.eval()")
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        raise UnsupportedInputError(f"Triton kernels cannot be traced or exported; {_USE_REFERENCE}")


def _keep_original(module: nn.Module, original: nn.Module) -> None:
    object.__setattr__(module, "original", original)  # plain attribute: not a child, not in state_dict
    module.training = original.training


def key_padding_mask(attention_mask: torch.Tensor | None, bsz: int, seq: int) -> torch.Tensor | None:
    """HF's extended mask -> (B, S) bool, True = attend.

    4.57 passes an additive mask (0 = attend, finfo.min = masked): (B, 1, 1, S) for eager
    attention, (B, 1, S, S) for sdpa with padding, None for sdpa without padding. Anything
    that is not a pure key-padding mask is refused. The check costs one host sync, so the
    result is cached on the mask tensor, which BertModel shares across all layers.
    """
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dim() != 4 or m.shape[0] != bsz or m.shape[1] != 1 or m.shape[3] != seq or m.shape[2] not in (1, seq):
        raise UnsupportedInputError(f"fused attention takes a (B, 1, 1, S) or (B, 1, S, S) padding mask, got "
                                    f"{tuple(m.shape)}; for other masks {_USE_REFERENCE}")
    version = None if m.is_inference() else m._version  # inference tensors have no version counter
    cached = getattr(m, "_kernels_keep", None)
    if cached is not None and cached[0] == version:
        return cached[1]
    if m.dtype == torch.bool:
        keep_all, soft = m, None
    else:
        keep_all = m == 0
        soft = ~(keep_all | (m == torch.finfo(m.dtype).min))  # additive values other than 0 / finfo.min
    keep = keep_all[:, 0, 0, :]  # (B, S)
    bad = (keep_all != keep[:, None, None, :]).any()  # query rows differ: not a key-padding mask
    if soft is not None:
        bad = bad | soft.any()
    if bad.item():
        raise UnsupportedInputError(f"attention mask is not a 0/1 key-padding mask; {_USE_REFERENCE}")
    m._kernels_keep = (version, keep)
    return keep


class FusedBertSelfAttention(nn.Module):
    """Q/K/V projections (cuBLAS or weight-only GEMM) + the fused attention kernel."""

    def __init__(self, original: nn.Module, make_linear: Callable[[nn.Linear, bool], nn.Module]):
        super().__init__()
        _keep_original(self, original)
        self.query = make_linear(original.query, False)
        self.key = make_linear(original.key, False)
        self.value = make_linear(original.value, False)
        self.dropout = original.dropout
        self.num_attention_heads = original.num_attention_heads
        self.attention_head_size = original.attention_head_size
        self.all_head_size = original.all_head_size

    def forward(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
                past_key_values=None, output_attentions=False, cache_position=None, **kwargs):
        _check_runnable(self)
        extra = [k for k, v in kwargs.items() if v is not None]
        if head_mask is not None or encoder_hidden_states is not None or past_key_values is not None \
                or output_attentions or extra:
            raise UnsupportedInputError("fused attention supports encoder self-attention only (no head_mask, "
                                        f"cross-attention, cache or output_attentions); {_USE_REFERENCE}")
        bsz, seq, _ = hidden_states.shape
        heads, dim = self.num_attention_heads, self.attention_head_size
        q = self.query(hidden_states).view(bsz, seq, heads, dim).transpose(1, 2)  # (B, H, S, D) view
        k = self.key(hidden_states).view(bsz, seq, heads, dim).transpose(1, 2)
        v = self.value(hidden_states).view(bsz, seq, heads, dim).transpose(1, 2)
        ctx = fused_attention(q, k, v, key_padding_mask(attention_mask, bsz, seq))  # (B, H, S, D)
        return ctx.transpose(1, 2).reshape(bsz, seq, self.all_head_size), None  # (B, S, H*D), no probs


class FusedBertIntermediate(nn.Module):
    """``gelu(dense(x))``: fp GEMM without bias + bias-GELU kernel, or a quantized GEMM with GELU."""

    def __init__(self, original: nn.Module, make_linear: Callable[[nn.Linear, bool], nn.Module]):
        super().__init__()
        _keep_original(self, original)
        self.dense = make_linear(original.dense, True)
        self.intermediate_act_fn = original.intermediate_act_fn

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        _check_runnable(self)
        if isinstance(self.dense, nn.Linear):
            h = nn.functional.linear(hidden_states, self.dense.weight)  # (B, S, I), fresh buffer
            return bias_gelu(h, self.dense.bias, out=h)
        return self.dense(hidden_states)  # Int8Linear / Int4Linear with the GELU epilogue


class FusedBertOutput(nn.Module):
    """``LayerNorm(dense(x) + residual)`` for BertSelfOutput and BertOutput."""

    def __init__(self, original: nn.Module, make_linear: Callable[[nn.Linear, bool], nn.Module]):
        super().__init__()
        _keep_original(self, original)
        self.dense = make_linear(original.dense, False)
        self.LayerNorm = original.LayerNorm
        self.dropout = original.dropout

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        _check_runnable(self)
        h = self.dense(hidden_states)
        ln = self.LayerNorm
        return residual_layernorm(h, input_tensor, ln.weight, ln.bias, ln.eps)


FUSED_TYPES = (FusedBertSelfAttention, FusedBertIntermediate, FusedBertOutput)


def _linear_factory(int8_weights: bool, int4_weights: bool, group_size: int):
    def make(linear: nn.Linear, fuse_gelu: bool) -> nn.Module:
        if int8_weights:
            return Int8Linear.from_linear(linear, gelu=fuse_gelu)
        if int4_weights:
            return Int4Linear.from_linear(linear, group_size=group_size, gelu=fuse_gelu)
        return linear  # shared with the original: same Parameter objects
    return make


def _blocks(model: nn.Module) -> list[nn.Module]:
    config = getattr(model, "config", None)
    try:
        arch = arch_for(model)
    except Exception:  # no declaration: not a model kernels.apply knows
        arch = None
    if arch is None or not arch.bert_blocks:
        name = arch.name if arch else f"model_type={getattr(config, 'model_type', None)!r}"
        raise UnsupportedModelError(f"kernels.apply supports {SUPPORTED}; got {type(model).__name__} ({name}), "
                                    "whose blocks are not BERT's")
    try:
        return list(model.get_submodule(arch.full(model, arch.blocks)))
    except AttributeError:
        raise UnsupportedModelError(f"{type(model).__name__} has no {arch.blocks}; supported: {SUPPORTED}") from None


def _check_structure(where: str, module: nn.Module, expected: dict[str, type]) -> None:
    children = dict(module.named_children())
    wrong = [n for n, t in expected.items() if not isinstance(children.get(n), t)]
    extra = sorted(set(children) - set(expected) - {"intermediate_act_fn"})
    if wrong or extra:
        raise UnsupportedModelError(f"{where} ({type(module).__name__}) is not structured like BERT's "
                                    f"(missing or different: {wrong}, unexpected: {extra}); supported: {SUPPORTED}")


def check_supported(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    blocks = _blocks(model)
    if config.is_decoder or getattr(config, "add_cross_attention", False):
        raise UnsupportedModelError(f"decoder / cross-attention encoders are not supported; supported: {SUPPORTED}")
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModelError(f"position_embedding_type={config.position_embedding_type!r} is not "
                                    f"supported; supported: {SUPPORTED}")
    for i, block in enumerate(blocks):
        for path, expected in (("attention.self", _SELF_ATTENTION), ("attention.output", _OUTPUT),
                               ("intermediate", _INTERMEDIATE), ("output", _OUTPUT)):
            try:
                part = block.get_submodule(path)
            except AttributeError:
                raise UnsupportedModelError(f"block {i} has no {path}; supported: {SUPPORTED}") from None
            _check_structure(f"block {i}.{path}", part, expected)


def _plan(model: nn.Module, make_linear) -> list[tuple[nn.Module, str, nn.Module]]:
    plan = []
    for block in _blocks(model):
        child = block.intermediate
        act = child.intermediate_act_fn
        if not (isinstance(act, GELUActivation) or act is nn.functional.gelu):
            raise UnsupportedModelError(f"activation {act!r} is not erf GELU; supported: {SUPPORTED}")
        if child.dense.bias is None:
            raise UnsupportedModelError("intermediate.dense without bias is not supported")
        plan.append((block.attention, "self", FusedBertSelfAttention(block.attention.self, make_linear)))
        plan.append((block.attention, "output", FusedBertOutput(block.attention.output, make_linear)))
        plan.append((block, "intermediate", FusedBertIntermediate(child, make_linear)))
        plan.append((block, "output", FusedBertOutput(block.output, make_linear)))
    return plan


def apply_(model: nn.Module, int8_weights: bool, int4_weights: bool, group_size: int) -> nn.Module:
    check_supported(model)
    if int8_weights and int4_weights:
        raise ValueError("choose at most one of int8_weights and int4_weights")
    if any(isinstance(m, FUSED_TYPES) for m in model.modules()):
        raise ValueError("kernels are already applied to this model; call kernels.revert(model) first")
    plan = _plan(model, _linear_factory(int8_weights, int4_weights, group_size))  # may raise: model untouched
    if not plan:
        raise UnsupportedModelError(f"no BERT encoder modules in {type(model).__name__}; supported: {SUPPORTED}")
    for parent, name, fused in plan:
        setattr(parent, name, fused)
    return model


def swap_out(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Put every original module back; return (parent, name, fused) to swap them in again."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FUSED_TYPES):
                setattr(parent, name, child.original)
                swapped.append((parent, name, child))
    return swapped
