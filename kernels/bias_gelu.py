"""Fused bias + erf-GELU: the epilogue of BERT's FFN up-projection.

Eager PyTorch runs ``gelu(x + b)`` as two passes (or cuBLAS adds the bias, then one GELU
pass); here the bias add and the GELU share one read of ``x``, computed in fp32.

Memory traffic for x of shape (M, N): reads M*N + N elements, writes M*N; eager
``F.gelu(x + b)`` reads 2*M*N + N and writes 2*M*N.

>>> h = torch.nn.functional.linear(x, w)   # (M, N), no bias
>>> y = bias_gelu(h, b)                    # == F.gelu(h + b)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn

from ._common import autotuning, bucket, check_device, check_float, device_guard


@triton.jit
def _bias_gelu_kernel(
    x_ptr,  # (M, N) contiguous input
    b_ptr,  # (N,) bias
    y_ptr,  # (M, N) contiguous output, may alias x
    n_elements,  # M * N
    N,  # row length, to index the bias
    SIZE_BUCKET,  # autotune key only
    BLOCK: tl.constexpr,  # elements per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    h = x + b
    y = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))  # erf GELU, as BERT's hidden_act="gelu"
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


_bias_gelu_tuned = triton.autotune(
    configs=[triton.Config({"BLOCK": b}, num_warps=w) for b in (1024, 2048, 4096) for w in (4, 8)],
    key=["N", "SIZE_BUCKET"],
    restore_value=["x_ptr"],  # out may alias x: benchmarking configs must not apply GELU twice
)(_bias_gelu_kernel)

_INTERPRET_BLOCK = 8192  # one config, large blocks: the interpreter's cost is per program


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``gelu(x + bias)`` (erf GELU) over the last dim of x (..., N); bias (N,). Returns x's dtype.

    ``out`` (same shape/dtype as x, contiguous) may be x itself to work in place.
    """
    check_device(x, bias)
    check_float(x, "x")
    n = x.shape[-1]
    if bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    x = x.contiguous()
    bias = bias.contiguous()
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor with x's shape and dtype")
    numel = x.numel()
    if numel == 0:
        return out
    args = (x, bias, out, numel, n, bucket(numel))
    with device_guard(x):
        if autotuning(x):
            _bias_gelu_tuned[lambda meta: (triton.cdiv(numel, meta["BLOCK"]),)](*args)
        else:
            _bias_gelu_kernel[(triton.cdiv(numel, _INTERPRET_BLOCK),)](*args, BLOCK=_INTERPRET_BLOCK)
    return out


def bias_gelu_reference(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch, computed in fp32 and rounded once (what the kernel computes)."""
    return torch.nn.functional.gelu(x.float() + bias.float()).to(x.dtype)


class LinearBiasGelu(nn.Module):
    """``gelu(linear(x))`` with the bias moved from the GEMM into the fused GELU pass."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is None:
            raise ValueError("LinearBiasGelu needs a linear layer with a bias")
        self.dense = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.linear(x, self.dense.weight)  # (..., N) fresh buffer
        return bias_gelu(h, self.dense.bias, out=h)
