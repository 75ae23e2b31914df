"""Fused encoder attention: softmax(Q Kᵀ·scale + padding mask)·V with an online softmax.

Flash-attention style forward for bidirectional encoders: one program owns BLOCK_M query
rows of one (batch, head), streams K/V in BLOCK_N-key tiles and keeps a running max, sum
and output in registers, so the (S, S) score matrix is never written to memory. Variable
lengths in a batch come from a (B, S) 0/1 key-padding mask.

Memory traffic for (B, H, S, D) inputs: reads Q once and K, V once per query block,
i.e. B*H*S*D*(1 + 2*ceil(S/BLOCK_M)) elements + B*S mask entries, writes B*H*S*D. Eager
attention also writes and re-reads the B*H*S*S scores and probabilities (3x more bytes
than Q, K, V together at S=128, D=64).

Padding semantics follow Hugging Face BERT, which adds finfo.min to masked scores: masked
keys get zero weight, and a row whose keys are all masked averages V uniformly (no NaN).

>>> out = fused_attention(q, k, v, mask)   # q, k, v (B, H, S, D); mask (B, S) of 0/1
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import autotuning, bucket, check_device, check_float, device_guard, dot_in_f32, input_precision


@triton.jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr,  # (B, H, S, D) each, any strides
    mask_ptr,  # (B, S) key-padding mask, nonzero = attend (unused if not HAS_MASK)
    o_ptr,  # (B, H, S, D) output, any strides
    sqb, sqh, sqs, sqd, skb, skh, sks, skd, svb, svh, svs, svd,
    smb, sms, sob, soh, sos, sod,
    H, S, D,
    qk_scale,  # softmax scale * log2(e): the kernel works in base 2
    S_BUCKET,  # autotune key only
    HAS_MASK: tl.constexpr,
    DOT_F32: tl.constexpr,  # upcast dot operands (interpreter bf16 workaround)
    PREC: tl.constexpr,  # tl.dot input precision for fp32 ("ieee" or "tf32")
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per inner step
    BLOCK_D: tl.constexpr,  # head dim rounded up to a power of two >= 16
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    d_ok = offs_d < D
    q_base = q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_base = k_ptr + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_base = v_ptr + b.to(tl.int64) * svb + h.to(tl.int64) * svh

    q = tl.load(q_base + offs_m[:, None] * sqs + offs_d[None, :] * sqd,
                mask=(offs_m < S)[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    if DOT_F32:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (base-2 logits)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # running numerator @ V

    for start in range(0, S, BLOCK_N):
        keys = start + offs_n  # (BLOCK_N,)
        key_ok = keys < S
        kt = tl.load(k_base + keys[None, :] * sks + offs_d[:, None] * skd,
                     mask=key_ok[None, :] & d_ok[:, None], other=0.0)  # (BLOCK_D, BLOCK_N)
        if DOT_F32:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PREC) * qk_scale  # (BLOCK_M, BLOCK_N)
        if HAS_MASK:
            keep = tl.load(mask_ptr + b.to(tl.int64) * smb + keys * sms, mask=key_ok, other=0)
            s = tl.where(keep[None, :] != 0, s, -1.0e30)  # HF: score + finfo.min
        s = tl.where(key_ok[None, :], s, float("-inf"))  # past the sequence: exactly zero weight
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: each tile has >= 1 in-range key
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + keys[:, None] * svs + offs_d[None, :] * svd,
                    mask=key_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        if DOT_F32:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new

    out = acc / l_i[:, None]
    o_base = o_ptr + b.to(tl.int64) * sob + h.to(tl.int64) * soh
    tl.store(o_base + offs_m[:, None] * sos + offs_d[None, :] * sod, out.to(o_ptr.dtype.element_ty),
             mask=(offs_m < S)[:, None] & d_ok[None, :])


_attention_tuned = triton.autotune(
    configs=[
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
        for bm in (64, 128) for bn in (32, 64) for w in (4, 8) for st in (2, 3)
    ],
    key=["S_BUCKET", "D"],
)(_attention_kernel)

_INTERPRET_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64}  # interpreter cost is per program: 2.6x faster than 32


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    scale: float | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ·scale + padding)·v for q, k, v (B, H, S, D); mask (B, S), nonzero = attend.

    Returns (B, H, S, D) in q's dtype. Unless ``out`` is given, it is a view of a contiguous
    (B, S, H, D) buffer, so ``out.transpose(1, 2).reshape(B, S, H * D)`` (what BERT needs
    next) is free. ``scale`` defaults to 1/sqrt(D).
    """
    check_device(q, k, v)
    check_float(q, "q")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one (B, H, S, D) shape, got {q.shape}, {k.shape}, {v.shape}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError("q, k and v must share a dtype")
    bsz, heads, seq, dim = q.shape
    if dim > 256:
        raise ValueError(f"head dim up to 256 supported, got {dim}")
    if mask is not None:
        check_device(q, mask)
        if mask.shape != (bsz, seq):
            raise ValueError(f"mask must have shape (B, S) = ({bsz}, {seq}), got {tuple(mask.shape)}")
        if mask.dtype == torch.bool:
            mask = mask.view(torch.uint8)  # same bytes; Triton loads uint8 portably
    if out is None:
        out = torch.empty((bsz, seq, heads, dim), dtype=q.dtype, device=q.device).transpose(1, 2)
    elif out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError("out must have q's shape and dtype")
    if q.numel() == 0:
        return out
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    mask_arg = mask if mask is not None else q  # any pointer; never read when HAS_MASK=False
    mask_strides = mask.stride() if mask is not None else (0, 0)
    args = (q, k, v, mask_arg, out, *q.stride(), *k.stride(), *v.stride(), *mask_strides, *out.stride(),
            heads, seq, dim, scale * 1.4426950408889634, bucket(seq))
    meta = dict(HAS_MASK=mask is not None, DOT_F32=dot_in_f32(q.dtype), PREC=input_precision(q.dtype),
                BLOCK_D=max(16, triton.next_power_of_2(dim)))
    with device_guard(q):
        if autotuning(q):
            _attention_tuned[lambda c: (triton.cdiv(seq, c["BLOCK_M"]), bsz * heads)](*args, **meta)
        else:
            grid = (triton.cdiv(seq, _INTERPRET_BLOCKS["BLOCK_M"]), bsz * heads)
            _attention_kernel[grid](*args, **meta, **_INTERPRET_BLOCKS)
    return out


def attention_reference(q, k, v, mask=None, scale=None) -> torch.Tensor:
    """Materialised-scores attention in fp32 with HF's additive finfo.min padding."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, S, S)
    if mask is not None:
        s = s + (1.0 - (mask != 0).float())[:, None, None, :] * torch.finfo(torch.float32).min
    return (torch.softmax(s, dim=-1) @ v.float()).to(q.dtype)
