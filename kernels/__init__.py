"""chainpress.kernels: Triton fused kernels for BERT-structured encoders (inference only).

Importing this package imports neither triton nor CUDA and changes no torch flag; the
kernel modules load on first use. Kernels run on CUDA tensors, or on CPU tensors under
the Triton interpreter (``TRITON_INTERPRET=1`` set before first use; slow, for tests).

>>> ok, why = kernels.available()
>>> kernels.apply(model.eval())                      # fp16/fp32 fused kernels
>>> kernels.apply(model.eval(), int4_weights=True)   # + weight-only int4 GEMMs (group 32)
>>> with kernels.reference_path(model):              # plain PyTorch modules, e.g. for
...     torch.onnx.export(model, ...)                # ONNX export (Triton does not export)
>>> kernels.revert(model)                            # back to the original modules

Ops (each ``kernels.<name>``): ``bias_gelu``, ``residual_layernorm``, ``fused_attention``,
``int8_linear``, ``int4_linear``, with ``*_reference`` plain-PyTorch twins, and the
modules ``Int8Linear``, ``Int4Linear``, ``LinearBiasGelu``, ``ResidualLayerNorm``.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from contextlib import contextmanager


class UnsupportedModelError(ValueError):
    """The model is not one ``kernels.apply`` can patch; the message lists what is supported."""


class UnsupportedInputError(ValueError):
    """A patched module got inputs the fused path does not handle (the message says what to do)."""


def available() -> tuple[bool, str]:
    """Whether the fused kernels can run here, and why (for "skipped: ..." reports)."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "Triton interpreter (TRITON_INTERPRET=1): CPU, correct but slow"
    import torch

    if torch.cuda.is_available():
        return True, f"CUDA device: {torch.cuda.get_device_name()}"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels slowly on CPU)"


def apply(model, *, int8_weights: bool = False, int4_weights: bool = False, group_size: int = 32):
    """Swap the encoder modules of a model with BERT's blocks for fused ones, in place; returns model.

    Accepted: the architectures ``chain.arch`` declares with BERT's blocks (BERT, RoBERTa,
    XLM-R, ELECTRA), each block checked structurally.

    With ``int8_weights`` (per-channel) or ``int4_weights`` (``group_size`` groups) every
    encoder linear also becomes a weight-only GEMM reading ``compress.formats``; the fp
    weights stay on the replaced modules so ``revert`` is exact. Inference only: patched
    modules raise in training mode. Raises ``UnsupportedModelError`` for any other model,
    naming what differs (before touching the model). Export (ONNX, TorchScript) needs the plain modules: use
    ``reference_path`` or ``revert``.
    """
    from .bert import apply_

    return apply_(model, int8_weights, int4_weights, group_size)


def revert(model):
    """Put back the original modules ``apply`` replaced (the same objects); returns model."""
    from .bert import swap_out

    swap_out(model)
    return model


@contextmanager
def reference_path(model):
    """Temporarily run ``model`` with its original PyTorch modules (e.g. for ONNX export)."""
    from .bert import swap_out

    swapped = swap_out(model)
    try:
        yield model
    finally:
        for parent, name, fused in swapped:
            setattr(parent, name, fused)


_LAZY = {
    "bias_gelu": "bias_gelu", "bias_gelu_reference": "bias_gelu", "LinearBiasGelu": "bias_gelu",
    "residual_layernorm": "residual_layernorm", "residual_layernorm_reference": "residual_layernorm",
    "ResidualLayerNorm": "residual_layernorm",
    "fused_attention": "attention", "attention_reference": "attention",
    "int8_linear": "int8_gemm", "int8_linear_reference": "int8_gemm", "Int8Linear": "int8_gemm",
    "int4_linear": "int4_gemm", "int4_linear_reference": "int4_gemm", "Int4Linear": "int4_gemm",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")


__all__ = ["UnsupportedModelError", "UnsupportedInputError", "available", "apply", "revert", "reference_path",
           *_LAZY]
