"""Weight-only int8 GEMM: y = x @ dequant(W)ᵀ + bias (optional erf-GELU epilogue).

Reads ``compress.formats.Int8Weight`` as is: qweight (N, K) int8, scales (N,) fp32, w ~= q*s.
The int8 tile is converted to x's dtype inside the K loop (exact: |q| <= 127) and fed to
tl.dot; the per-channel scale is constant along K, so it is applied once to the fp32
accumulator in the epilogue together with bias and GELU.

Memory traffic: reads M*K activations + N*K bytes of weights + N scales (+ N bias), writes
M*N. At small M (decode, batch-1 encoders) the weight read dominates: half the bytes of an
fp16 GEMM, so the ceiling is ~2x over cuBLAS fp16 at copy bandwidth.

>>> w = quantize_int8(linear.weight)
>>> y = int8_linear(x, w, linear.bias)   # x (..., K) -> (..., N)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn

from compress.formats import Int8Weight, quantize_int8

from ._common import autotuning, bucket, check_device, check_float, device_guard, dot_in_f32, input_precision


@triton.jit
def _int8_gemm_kernel(
    x_ptr,  # (M, K) activations
    w_ptr,  # (N, K) int8 codes
    s_ptr,  # (N,) fp32 per-channel scales
    b_ptr,  # (N,) bias (unused if not HAS_BIAS)
    y_ptr,  # (M, N) output
    M, N, K,
    sxm, sxk, swn, swk, sym, syn,
    M_BUCKET,  # autotune key only
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr,
    DOT_F32: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_k = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    m_ok = offs_m < M
    n_ok = offs_n < N
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * sxm + offs_k[None, :] * sxk  # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + offs_n[None, :].to(tl.int64) * swn + offs_k[:, None] * swk  # (BLOCK_K, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        q = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0)
        if DOT_F32:
            x = x.to(tl.float32)
        acc += tl.dot(x, q.to(x.dtype), input_precision=PREC)  # dequant: int8 -> x dtype, in registers
        x_ptrs += BLOCK_K * sxk
        w_ptrs += BLOCK_K * swk
    acc *= tl.load(s_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if GELU:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * sym + offs_n[None, :] * syn,
             acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


_int8_gemm_tuned = triton.autotune(
    configs=[
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
        for bm, bn, bk, w, st in [
            (16, 32, 256, 4, 4), (16, 64, 128, 4, 4), (16, 128, 128, 4, 3),  # small M: weight-bound
            (32, 64, 128, 4, 4), (64, 128, 64, 4, 3), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3),
        ]
    ],
    key=["M_BUCKET", "N", "K"],
)(_int8_gemm_kernel)

_INTERPRET_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}


def int8_linear(x: torch.Tensor, weight: Int8Weight, bias: torch.Tensor | None = None, gelu: bool = False,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.dequantize().T + bias`` (then erf-GELU if ``gelu``); x (..., K) -> (..., N)."""
    qw, scales = weight.qweight, weight.scales
    check_device(x, qw, scales, *(() if bias is None else (bias,)))
    check_float(x, "x")
    if qw.dtype != torch.int8 or qw.dim() != 2:
        raise TypeError(f"Int8Weight.qweight must be a 2-D int8 tensor, got {qw.dtype} {tuple(qw.shape)}")
    n, k = qw.shape
    if x.shape[-1] != k or scales.shape != (n,) or (bias is not None and bias.shape != (n,)):
        raise ValueError(f"shape mismatch: x (..., {x.shape[-1]}), qweight ({n}, {k}), scales "
                         f"{tuple(scales.shape)}, bias {None if bias is None else tuple(bias.shape)}")
    x2 = x.reshape(-1, k)  # (M, K)
    m = x2.shape[0]
    if out is None:
        out = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    elif out.shape != (*x.shape[:-1], n) or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError("out must be contiguous with shape (..., N) and x's dtype")
    if m == 0:
        return out
    y2 = out.view(m, n)
    args = (x2, qw, scales, scales if bias is None else bias, y2, m, n, k,
            *x2.stride(), *qw.stride(), *y2.stride(), bucket(m))
    meta = dict(HAS_BIAS=bias is not None, GELU=gelu, DOT_F32=dot_in_f32(x.dtype), PREC=input_precision(x.dtype))
    with device_guard(x):
        if autotuning(x):
            _int8_gemm_tuned[lambda c: (triton.cdiv(m, c["BLOCK_M"]), triton.cdiv(n, c["BLOCK_N"]))](*args, **meta)
        else:
            grid = (triton.cdiv(m, _INTERPRET_BLOCKS["BLOCK_M"]), triton.cdiv(n, _INTERPRET_BLOCKS["BLOCK_N"]))
            _int8_gemm_kernel[grid](*args, **meta, **_INTERPRET_BLOCKS)
    return out


def int8_linear_reference(x, weight: Int8Weight, bias=None, gelu: bool = False) -> torch.Tensor:
    """Plain PyTorch: dequantize to fp32, matmul, rounded once to x's dtype."""
    y = x.float() @ weight.dequantize().T
    if bias is not None:
        y = y + bias.float()
    return (torch.nn.functional.gelu(y) if gelu else y).to(x.dtype)


class Int8Linear(nn.Module):
    """Drop-in for ``nn.Linear`` holding an ``Int8Weight``; ``gelu=True`` fuses BERT's activation."""

    def __init__(self, weight: Int8Weight, bias: torch.Tensor | None, gelu: bool = False):
        super().__init__()
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("scales", weight.scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.gelu = gelu
        self.out_features, self.in_features = weight.qweight.shape

    @classmethod
    def from_linear(cls, linear: nn.Linear, gelu: bool = False) -> "Int8Linear":
        return cls(quantize_int8(linear.weight), linear.bias, gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, Int8Weight(self.qweight, self.scales), self.bias, self.gelu)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gelu={self.gelu}"
