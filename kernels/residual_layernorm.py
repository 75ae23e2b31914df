"""Fused residual add + LayerNorm: BERT's post-LN ``LayerNorm(dense(h) + residual)``.

Eager runs the add as one pass (writes the sum) and LayerNorm as another (reads it back);
here each row is loaded once, summed and normalised in fp32 registers.

Memory traffic for (M, N) inputs: reads 2*M*N + 2*N elements, writes M*N; eager reads
3*M*N + 2*N and writes 2*M*N. One program handles BLOCK_M full rows (N <= 16384).

>>> y = residual_layernorm(h, residual, ln.weight, ln.bias, ln.eps)  # == ln(h + residual)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn

from ._common import autotuning, bucket, check_device, check_float, device_guard

MAX_N = 16384  # a row lives in registers; beyond this it would spill


@triton.jit
def _residual_layernorm_kernel(
    x_ptr,  # (M, N) rows with stride stride_x
    r_ptr,  # (M, N) residual rows with stride stride_r
    w_ptr,  # (N,) LayerNorm weight
    b_ptr,  # (N,) LayerNorm bias
    y_ptr,  # (M, N) contiguous output
    M, N, stride_x, stride_r,
    eps,  # LayerNorm epsilon
    M_BUCKET,  # autotune key only
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # next power of two >= N
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    col_ok = cols < N
    mask = (rows < M)[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    h = x + r  # (BLOCK_M, BLOCK_N)
    mean = tl.sum(h, axis=1) / N
    hc = tl.where(mask, h - mean[:, None], 0.0)
    var = tl.sum(hc * hc, axis=1) / N  # biased variance, as nn.LayerNorm
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = hc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


def _prune(configs, named_args, **kwargs):
    # keep at most 16K fp32 values of h per program (register budget)
    block_n = kwargs["BLOCK_N"]
    kept = [c for c in configs if c.kwargs["BLOCK_M"] * block_n <= MAX_N]
    return kept or configs[:1]


_residual_layernorm_tuned = triton.autotune(
    configs=[triton.Config({"BLOCK_M": m}, num_warps=w) for m in (1, 2, 4, 8) for w in (2, 4, 8)],
    key=["N", "M_BUCKET"],
    prune_configs_by={"early_config_prune": _prune},
)(_residual_layernorm_kernel)

_INTERPRET_BLOCK_M = 64  # one config; few, large programs for the interpreter


def residual_layernorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       eps: float = 1e-5, out: torch.Tensor | None = None) -> torch.Tensor:
    """``layer_norm(x + residual)`` over the last dim N. x, residual (..., N); weight, bias (N,)."""
    check_device(x, residual, weight, bias)
    check_float(x, "x")
    n = x.shape[-1]
    if residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    if weight.shape != (n,) or bias.shape != (n,):
        raise ValueError(f"weight and bias must have shape ({n},)")
    if n > MAX_N:
        raise ValueError(f"residual_layernorm supports rows up to {MAX_N} features, got {n}")
    x2 = x.reshape(-1, n)  # (M, N): a view for the contiguous tensors BERT passes
    r2 = residual.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if r2.stride(-1) != 1:
        r2 = r2.contiguous()
    m = x2.shape[0]
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor with x's shape and dtype")
    if m == 0:
        return out
    block_n = max(16, triton.next_power_of_2(n))
    args = (x2, r2, weight.contiguous(), bias.contiguous(), out, m, n, x2.stride(0), r2.stride(0),
            float(eps), bucket(m))
    with device_guard(x):
        if autotuning(x):
            _residual_layernorm_tuned[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)](*args, BLOCK_N=block_n)
        else:
            block_m = max(1, min(_INTERPRET_BLOCK_M, MAX_N // block_n))
            _residual_layernorm_kernel[(triton.cdiv(m, block_m),)](*args, BLOCK_M=block_m, BLOCK_N=block_n)
    return out


def residual_layernorm_reference(x, residual, weight, bias, eps: float = 1e-5) -> torch.Tensor:
    """Plain PyTorch in fp32, rounded once to x's dtype."""
    h = x.float() + residual.float()
    return torch.nn.functional.layer_norm(h, (x.shape[-1],), weight.float(), bias.float(), eps).to(x.dtype)


class ResidualLayerNorm(nn.Module):
    """Wraps an ``nn.LayerNorm`` (kept as ``.ln``); ``forward(x, residual) = ln(x + residual)``."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        if ln.weight is None or ln.bias is None or len(ln.normalized_shape) != 1:
            raise ValueError("ResidualLayerNorm needs an affine LayerNorm over the last dim")
        self.ln = ln

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual_layernorm(x, residual, self.ln.weight, self.ln.bias, self.ln.eps)
