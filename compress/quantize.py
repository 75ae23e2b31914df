"""``quantize_(model, config)``: one verb, typed configs, one registry, one walker.

>>> quantize_(model, BnbNF4Config())                                  # every eligible Linear
>>> quantize_(model, Int8DynamicConfig(), overrides={"*.layer.5.*": None})  # keep layer 5 fp32

A config's type picks the transform in ``_REGISTRY``; ``overrides`` maps qualified-name
globs to another config (or ``None`` = leave that module alone); the first matching
glob wins. Every transform swaps one linear-like module (``nn.Linear``, or a kind the
architecture declares such as GPT-2's ``Conv1D``, seen through ``walker.as_linear``) for a
module computing the same function with quantized weights. The architecture's head
modules (``chain.arch``) stay float unless ``skip`` is given explicitly.
"""
from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from chain.arch import DEFAULT_SKIP, body_skip
from .formats import Int4Weight, quantize_int4, quantize_int8
from .torch_int8 import Int8DynamicConfig, _dq_linear
from .walker import as_linear, linear_layers, set_module


@dataclass
class Int4WeightOnlyConfig:
    """Group-wise uint4 weights (chainpress Int4Weight, the MatMulNBits/Triton format)."""
    group_size: int = 32

    def __post_init__(self) -> None:
        quantize_int4(torch.zeros(1, self.group_size), self.group_size)


@dataclass
class BnbInt8Config:
    """bitsandbytes LLM.int8 (``Linear8bitLt``): outlier columns above ``threshold`` stay fp16/32."""
    threshold: float = 6.0


@dataclass
class Bnb4bitConfig:
    """bitsandbytes ``Linear4bit``: NF4 (default) or FP4, block-wise absmax."""
    quant_type: str = "nf4"
    blocksize: int = 64
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {self.quant_type!r}")
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise ValueError(f"blocksize must be a power of two in 32..4096, got {self.blocksize}")


class WeightOnlyInt4Linear(nn.Module):
    """Reference int4 linear: dequantize the stored codes, then an fp32 matmul.

    The numerics of MatMulNBits (accuracy_level 0) and of ``kernels.int4_gemm``; on
    CUDA, ``kernels.apply(model, int4_weights=True)`` runs the fused kernel instead.
    """

    def __init__(self, w: Int4Weight, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = w.in_features, w.qweight.shape[0]
        self.group_size = w.group_size
        self.register_buffer("qweight", w.qweight)
        self.register_buffer("scales", w.scales)
        self.register_buffer("zeros", w.zeros)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def weight_format(self) -> Int4Weight:
        return Int4Weight(self.qweight, self.scales, self.zeros, self.group_size, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight_format().dequantize().to(x.dtype), self.bias)


def _int8_dynamic(lin: nn.Linear, cfg: Int8DynamicConfig) -> nn.Module:
    return _dq_linear(quantize_int8(lin.weight), lin.bias)


def _int4(lin: nn.Linear, cfg: Int4WeightOnlyConfig) -> nn.Module:
    return WeightOnlyInt4Linear(quantize_int4(lin.weight, cfg.group_size), lin.bias)


def _bnb_int8(lin: nn.Linear, cfg: BnbInt8Config) -> nn.Module:
    import bitsandbytes as bnb

    m = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                            has_fp16_weights=False, threshold=cfg.threshold)
    m.weight = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    if lin.bias is not None:
        m.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    return m.to(lin.weight.device)  # the move is what quantizes


def _bnb_4bit(lin: nn.Linear, cfg: Bnb4bitConfig) -> nn.Module:
    import bitsandbytes as bnb

    m = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                          compute_dtype=getattr(torch, cfg.compute_dtype), quant_type=cfg.quant_type)
    m.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type=cfg.quant_type,
                                 blocksize=cfg.blocksize)
    if lin.bias is not None:
        m.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    return m.to(lin.weight.device)


_REGISTRY: dict[type, Callable[[nn.Linear, object], nn.Module]] = {
    Int8DynamicConfig: _int8_dynamic,
    Int4WeightOnlyConfig: _int4,
    BnbInt8Config: _bnb_int8,
    Bnb4bitConfig: _bnb_4bit,
}


def register(config_type: type, transform: Callable[[nn.Linear, object], nn.Module]) -> None:
    _REGISTRY[config_type] = transform


def quantize_(model: nn.Module, config, overrides: dict[str, object] | None = None,
              skip: tuple[str, ...] | None = None, filter_fn=None) -> dict[str, str]:
    """Quantize eligible linear layers in place; return {qualified name: config type}.

    ``skip=None`` keeps the architecture's head float; pass globs to choose yourself.
    """
    if type(config) not in _REGISTRY:
        raise TypeError(f"no quantization registered for {type(config).__name__}; "
                        f"known: {[t.__name__ for t in _REGISTRY]}")
    overrides = overrides or {}
    head, kinds = body_skip(model)
    skip = head if skip is None else skip
    done = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, mod in linear_layers(model, skip, filter_fn, kinds):
            lin = as_linear(mod)
            cfg = next((c for pat, c in overrides.items() if fnmatch.fnmatchcase(name, pat)), config)
            if cfg is None:
                continue
            if type(cfg) not in _REGISTRY:
                raise TypeError(f"override for {name}: no quantization registered for {type(cfg).__name__}")
            set_module(model, name, _REGISTRY[type(cfg)](lin, cfg))
            done[name] = type(cfg).__name__
    return done
