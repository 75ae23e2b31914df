"""Quantized weight formats shared by compress/, the ONNX exporter and kernels/.

One format per scheme, produced once here and read unchanged everywhere else, so a
weight quantized in compress/ is bit-identical in PyTorch, in ONNX and in the Triton
kernels (no backend re-quantizes with its own rounding).

* ``Int8Weight`` -- symmetric per-output-channel int8:  w[n, k] ~= q[n, k] * scale[n]
* ``Int4Weight`` -- asymmetric group-wise uint4, laid out exactly like ONNX Runtime's
  ``com.microsoft.MatMulNBits`` (bits=4):  w[n, k] ~= (q[n, k] - zero[n, g]) * scale[n, g]
  with g = k // group_size; two 4-bit values per byte along K, the even k in the low
  nibble. ``qweight`` is (N, K // 2) uint8, i.e. MatMulNBits' B of shape
  (N, K // group_size, group_size // 2) flattened over its last two axes.

Weights follow ``nn.Linear``: shape (N, K) = (out_features, in_features).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Int8Weight:
    qweight: torch.Tensor  # (N, K) int8
    scales: torch.Tensor  # (N,) float32

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scales[:, None]


@dataclass
class Int4Weight:
    qweight: torch.Tensor  # (N, K // 2) uint8, low nibble = even k
    scales: torch.Tensor  # (N, K // group_size) float32
    zeros: torch.Tensor  # (N, K // group_size) uint8, values in [0, 15]
    group_size: int
    in_features: int  # K

    def unpack(self) -> torch.Tensor:
        """(N, K) uint8 codes in [0, 15]."""
        lo = self.qweight & 0x0F
        hi = self.qweight >> 4
        return torch.stack([lo, hi], dim=-1).reshape(self.qweight.shape[0], -1)

    def dequantize(self) -> torch.Tensor:
        q = self.unpack().float()  # (N, K)
        n, k = q.shape
        g = self.group_size
        q = q.view(n, k // g, g)
        w = (q - self.zeros.float()[..., None]) * self.scales[..., None]
        return w.reshape(n, k)


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Symmetric per-channel int8 (range [-127, 127], so negation is exact)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1).clamp(min=1e-8)
    scales = amax / 127.0
    q = torch.clamp(torch.round(w / scales[:, None]), -127, 127).to(torch.int8)
    return Int8Weight(q, scales)


def quantize_int4(weight: torch.Tensor, group_size: int = 32) -> Int4Weight:
    """Asymmetric min/max group-wise uint4, MatMulNBits layout.

    ``group_size`` must be a power of two >= 16 (MatMulNBits' block_size rule) and
    divide K.
    """
    if group_size < 16 or group_size & (group_size - 1):
        raise ValueError(f"group_size must be a power of two >= 16, got {group_size}")
    w = weight.detach().float()
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"in_features={k} is not a multiple of group_size={group_size}")
    wg = w.view(n, k // group_size, group_size)
    wmin = wg.amin(dim=-1).clamp(max=0.0)
    wmax = wg.amax(dim=-1).clamp(min=0.0)
    scales = ((wmax - wmin) / 15.0).clamp(min=1e-8)
    zeros = torch.clamp(torch.round(-wmin / scales), 0, 15)
    q = torch.clamp(torch.round(wg / scales[..., None]) + zeros[..., None], 0, 15)
    q = q.to(torch.uint8).view(n, k)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return Int4Weight(packed.contiguous(), scales, zeros.to(torch.uint8), group_size, k)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better; int8 ~ 40+, int4 ~ 20+)."""
    ref = reference.detach().float()
    noise = (ref - approx.detach().float()).pow(2).mean()
    signal = ref.pow(2).mean()
    return float(10 * torch.log10(signal / noise.clamp(min=1e-20)))
