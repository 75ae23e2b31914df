"""Weight-only int4 (group-wise, asymmetric) GEMM: y = x @ dequant(W)ᵀ + bias (optional GELU).

Reads ``compress.formats.Int4Weight`` as is (ONNX MatMulNBits layout): qweight (N, K//2)
uint8 with the even k in the low nibble, scales (N, K//G) fp32, zeros (N, K//G) uint8,
w[n, k] ~= (q[n, k] - zero[n, k//G]) * scale[n, k//G]. Each K tile is unpacked
(shift + mask), dequantized in registers and fed to tl.dot; nothing is written back.
When BLOCK_K <= G a tile lies in one group and loads one scale/zero per column; otherwise
scale/zero are gathered per element (cache hits: each is reused G times).

Memory traffic: reads M*K activations + N*K/2 bytes of codes + N*K/G*(4 + 1) bytes of
scales/zeros, writes M*N. At G=32 that is 0.66 bytes per weight, vs 2 for fp16.

>>> w = quantize_int4(linear.weight, group_size=32)
>>> y = int4_linear(x, w, linear.bias)   # x (..., K) -> (..., N)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn

from compress.formats import Int4Weight, quantize_int4

from ._common import autotuning, bucket, check_device, check_float, device_guard, dot_in_f32, input_precision


@triton.jit
def _int4_gemm_kernel(
    x_ptr,  # (M, K) activations
    q_ptr,  # (N, K // 2) uint8 packed codes
    s_ptr,  # (N, K // G) scales
    z_ptr,  # (N, K // G) uint8 zero points
    b_ptr,  # (N,) bias (unused if not HAS_BIAS)
    y_ptr,  # (M, N) output
    M, N, K,
    sxm, sxk, sqn, sqk, ssn, ssg, szn, szg, sym, syn,
    M_BUCKET,  # autotune key only
    GROUP: tl.constexpr,  # group size G (power of two >= 16)
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr,
    DOT_F32: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_k = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    m_ok = offs_m < M
    n_ok = offs_n < N
    row_n = offs_n.to(tl.int64)
    shift = ((offs_k % 2) * 4).to(tl.uint8)[:, None]  # (BLOCK_K, 1): even k -> low nibble
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k  # (BLOCK_K,)
        k_ok = ks < K
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * sxm + ks[None, :] * sxk,
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        w_mask = k_ok[:, None] & n_ok[None, :]
        packed = tl.load(q_ptr + row_n[None, :] * sqn + (ks // 2)[:, None] * sqk, mask=w_mask, other=0)
        q = ((packed >> shift) & 0xF).to(tl.float32)  # (BLOCK_K, BLOCK_N) codes in [0, 15]
        if BLOCK_K <= GROUP:  # the whole tile is in group k0 // G: one scale/zero per column
            g = k0 // GROUP
            s = tl.load(s_ptr + row_n * ssn + g * ssg, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            z = tl.load(z_ptr + row_n * szn + g * szg, mask=n_ok, other=0).to(tl.float32)[None, :]
        else:
            g = (ks // GROUP)[:, None]
            s = tl.load(s_ptr + row_n[None, :] * ssn + g * ssg, mask=w_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + row_n[None, :] * szn + g * szg, mask=w_mask, other=0).to(tl.float32)
        w = (q - z) * s  # (BLOCK_K, BLOCK_N) dequantized in registers
        if DOT_F32:
            x = x.to(tl.float32)
        acc += tl.dot(x, w.to(x.dtype), input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if GELU:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * sym + offs_n[None, :] * syn,
             acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


_int4_gemm_tuned = triton.autotune(
    configs=[
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
        for bm, bn, bk, w, st in [
            (16, 32, 128, 4, 4), (16, 64, 64, 4, 4), (16, 128, 32, 4, 4),  # small M: weight-bound
            (32, 64, 64, 4, 4), (64, 128, 32, 4, 3), (128, 128, 32, 8, 3), (128, 64, 64, 8, 3),
        ]
    ],
    key=["M_BUCKET", "N", "K", "GROUP"],
)(_int4_gemm_kernel)

_INTERPRET_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}


def int4_linear(x: torch.Tensor, weight: Int4Weight, bias: torch.Tensor | None = None, gelu: bool = False,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.dequantize().T + bias`` (then erf-GELU if ``gelu``); x (..., K) -> (..., N)."""
    qw, scales, zeros, g = weight.qweight, weight.scales, weight.zeros, int(weight.group_size)
    check_device(x, qw, scales, zeros, *(() if bias is None else (bias,)))
    check_float(x, "x")
    k = int(weight.in_features)
    n = qw.shape[0]
    if qw.dtype != torch.uint8 or zeros.dtype != torch.uint8:
        raise TypeError("Int4Weight.qweight and .zeros must be uint8")
    if g < 16 or g & (g - 1) or k % g:
        raise ValueError(f"group_size must be a power of two >= 16 dividing K={k}, got {g}")
    if qw.shape != (n, k // 2) or scales.shape != (n, k // g) or zeros.shape != (n, k // g):
        raise ValueError(f"Int4Weight shapes: qweight {tuple(qw.shape)}, scales {tuple(scales.shape)}, "
                         f"zeros {tuple(zeros.shape)} do not fit N={n}, K={k}, G={g}")
    if x.shape[-1] != k or (bias is not None and bias.shape != (n,)):
        raise ValueError(f"x must be (..., {k}) and bias ({n},); got {tuple(x.shape)}, "
                         f"{None if bias is None else tuple(bias.shape)}")
    x2 = x.reshape(-1, k)  # (M, K)
    m = x2.shape[0]
    if out is None:
        out = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    elif out.shape != (*x.shape[:-1], n) or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError("out must be contiguous with shape (..., N) and x's dtype")
    if m == 0:
        return out
    y2 = out.view(m, n)
    args = (x2, qw, scales, zeros, scales if bias is None else bias, y2, m, n, k,
            *x2.stride(), *qw.stride(), *scales.stride(), *zeros.stride(), *y2.stride(), bucket(m))
    meta = dict(GROUP=g, HAS_BIAS=bias is not None, GELU=gelu, DOT_F32=dot_in_f32(x.dtype),
                PREC=input_precision(x.dtype))
    with device_guard(x):
        if autotuning(x):
            _int4_gemm_tuned[lambda c: (triton.cdiv(m, c["BLOCK_M"]), triton.cdiv(n, c["BLOCK_N"]))](*args, **meta)
        else:
            grid = (triton.cdiv(m, _INTERPRET_BLOCKS["BLOCK_M"]), triton.cdiv(n, _INTERPRET_BLOCKS["BLOCK_N"]))
            _int4_gemm_kernel[grid](*args, **meta, **_INTERPRET_BLOCKS)
    return out


def int4_linear_reference(x, weight: Int4Weight, bias=None, gelu: bool = False) -> torch.Tensor:
    """Plain PyTorch: dequantize to fp32, matmul, rounded once to x's dtype."""
    y = x.float() @ weight.dequantize().T
    if bias is not None:
        y = y + bias.float()
    return (torch.nn.functional.gelu(y) if gelu else y).to(x.dtype)


class Int4Linear(nn.Module):
    """Drop-in for ``nn.Linear`` holding an ``Int4Weight``; ``gelu=True`` fuses BERT's activation."""

    def __init__(self, weight: Int4Weight, bias: torch.Tensor | None, gelu: bool = False):
        super().__init__()
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("zeros", weight.zeros)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.group_size, self.gelu = weight.group_size, gelu
        self.out_features, self.in_features = weight.qweight.shape[0], weight.in_features

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32, gelu: bool = False) -> "Int4Linear":
        return cls(quantize_int4(linear.weight, group_size), linear.bias, gelu)

    def int4_weight(self) -> Int4Weight:
        return Int4Weight(self.qweight, self.scales, self.zeros, self.group_size, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int4_linear(x, self.int4_weight(), self.bias, self.gelu)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, gelu={self.gelu}")
