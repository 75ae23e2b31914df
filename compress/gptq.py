"""GPTQ int4 codes (Frantar et al., 2022) for an ONNX graph's MatMul weights, in the Int4Weight format.

Round-to-nearest int4 rounds each weight on its own. GPTQ quantizes a layer's input columns
one at a time and spreads each column's rounding error over the columns not yet quantized,
weighted by the inverse of the layer's input Hessian H = X^T X (X: the layer's inputs on
calibration sentences), so the error that reaches the outputs on real inputs is what is
minimised. Scales and zero points are set per group from the error-updated columns when
the group starts, so the result is an ordinary ``Int4Weight``: MatMulNBits and the Triton
int4 GEMM run it unchanged. Why not ORT's GPTQ: it needs neural-compressor, and would not
give chainpress' shared format.

The Hessians come from one ORT run of the fp32 graph with every MatMul input added as an
output (padding tokens excluded); MatMuls that read the same tensor (Q, K, V) share one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .formats import Int4Weight


def gptq_int4(weight: torch.Tensor, hessian: torch.Tensor, group_size: int = 32,
              damp: float = 0.01) -> Int4Weight:
    """(N, K) ``weight`` quantized with input Hessian (K, K) ``hessian``; asymmetric uint4 groups along K."""
    w = weight.detach().double().clone()
    n, k = w.shape
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0  # inputs never active on the calibration data: their weights cannot matter there
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=h.dtype)
    # upper Cholesky factor of H^-1: row i holds how column i's error moves the later columns
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.empty(n, k, dtype=torch.uint8)
    scales = torch.empty(n, k // group_size, dtype=torch.float64)
    zeros = torch.empty(n, k // group_size, dtype=torch.float64)
    for i in range(k):
        g = i // group_size
        if i % group_size == 0:  # the same min/max rule as formats.quantize_int4, on the updated columns
            grp = w[:, i:i + group_size]
            lo, hi = grp.amin(dim=1).clamp(max=0.0), grp.amax(dim=1).clamp(min=0.0)
            scales[:, g] = ((hi - lo) / 15.0).clamp(min=1e-8)
            zeros[:, g] = torch.clamp(torch.round(-lo / scales[:, g]), 0, 15)
        s, z = scales[:, g], zeros[:, g]
        q = torch.clamp(torch.round(w[:, i] / s) + z, 0, 15)
        codes[:, i] = q.to(torch.uint8)
        err = (w[:, i] - (q - z) * s) / hinv[i, i]
        w[:, i:] -= err[:, None] * hinv[i, i:][None, :]
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return Int4Weight(packed.contiguous(), scales.float(), zeros.to(torch.uint8), group_size, k)


def matmul_hessians(model_path: Path, inputs: list[str], batches: list[dict]) -> dict[str, torch.Tensor]:
    """{tensor name: X^T X} over non-padding tokens of ``batches``, for each name in ``inputs``."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    known = {o.name for o in model.graph.output}
    for name in inputs:
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor named
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name for i in sess.get_inputs()}
    out: dict[str, torch.Tensor] = {}
    for enc in batches:
        got = sess.run(inputs, {k: v for k, v in enc.items() if k in feeds})
        mask = enc["attention_mask"].reshape(-1).astype(bool) if "attention_mask" in enc else None
        for name, x in zip(inputs, got):
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).reshape(-1, x.shape[-1])
            if mask is not None and x.shape[0] == mask.size:  # (batch, seq, K): padding rows are no real input
                x = x[torch.from_numpy(mask)]
            out[name] = out.get(name, 0) + x.T @ x
    return out
