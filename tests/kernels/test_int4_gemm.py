"""Weight-only int4 GEMM (compress.formats.Int4Weight, MatMulNBits layout) vs dequantize-then-matmul.

Under the interpreter BLOCK_K = 32: group 16 takes the per-element scale gather path,
groups >= 32 the one-scale-per-tile path; K = 80 leaves a partial last K tile.
"""
import pytest
import torch
from kernel_testing import DTYPES, assert_close, poisoned

from compress.formats import Int4Weight, quantize_int4, sqnr_db
from kernels.int4_gemm import Int4Linear, int4_linear, int4_linear_reference

SHAPES = [(1, 70, 96, 16), (13, 123, 160, 32), (37, 50, 256, 64), (5, 40, 256, 128), (66, 45, 80, 16)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("gelu", [False, True], ids=["plain", "gelu"])
def test_matches_dequantized_matmul(shape, dtype, gelu):
    m, n, k, group = shape
    w = torch.randn(n, k) * 0.05
    wq = quantize_int4(w, group)
    x = torch.randn(m, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype) * 0.1
    print(f"M,N,K,G={shape} dtype={dtype} gelu={gelu}")
    out = int4_linear(x, wq, bias, gelu=gelu, out=poisoned((m, n), dtype))
    ref = x.float() @ wq.dequantize().T + bias.float()  # x @ W.dequantize().T + b
    ref = torch.nn.functional.gelu(ref) if gelu else ref
    assert_close(out, ref.to(dtype), dtype, f"int4 {shape}")
    if not gelu:  # quantization noise vs the unquantized fp32 matmul (~22 dB measured at G=32)
        assert sqnr_db(x.float() @ w.T + bias.float(), out) > 17


def test_nibble_order_and_zero_points():
    """Hand-built codes: the even k sits in the low nibble, w = (q - zero) * scale."""
    n, k, group = 2, 32, 16
    codes = torch.arange(k, dtype=torch.uint8).remainder(16).repeat(n, 1)  # q[n, k] = k % 16
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    scales = torch.tensor([[1.0, 2.0], [0.5, 1.0]])
    zeros = torch.tensor([[0, 8], [3, 15]], dtype=torch.uint8)
    wq = Int4Weight(packed, scales, zeros, group, k)
    x = torch.eye(k)[:20]  # picks single columns of W: y[i, n] = w[n, i]
    out = int4_linear(x, wq)
    expected = ((codes.float().view(n, 2, group) - zeros.float()[..., None]) * scales[..., None]).view(n, k)
    assert torch.equal(out, expected[:, :20].T.contiguous())


def test_module_from_linear_matches_reference():
    lin = torch.nn.Linear(128, 48)
    mod = Int4Linear.from_linear(lin, group_size=32, gelu=True)
    x = torch.randn(2, 5, 128)
    with torch.no_grad():
        ref = int4_linear_reference(x, quantize_int4(lin.weight, 32), lin.bias, gelu=True)
        assert_close(mod(x), ref, torch.float32)
    assert set(dict(mod.named_buffers())) == {"qweight", "scales", "zeros"}


def test_bad_inputs_raise():
    wq = quantize_int4(torch.randn(8, 64), 32)
    with pytest.raises(ValueError, match="x must be"):
        int4_linear(torch.randn(2, 63), wq)
    with pytest.raises(ValueError, match="group_size"):
        int4_linear(torch.randn(2, 64), Int4Weight(wq.qweight, wq.scales, wq.zeros, 24, 64))
    with pytest.raises(ValueError, match="do not fit"):
        int4_linear(torch.randn(2, 64), Int4Weight(wq.qweight, wq.scales[:, :1], wq.zeros, 32, 64))
