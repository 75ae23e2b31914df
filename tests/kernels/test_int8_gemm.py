"""Weight-only int8 GEMM (compress.formats.Int8Weight) vs dequantize-then-matmul."""
import pytest
import torch
from kernel_testing import DTYPES, assert_close, poisoned

from compress.formats import Int8Weight, quantize_int8, sqnr_db
from kernels.int8_gemm import Int8Linear, int8_linear, int8_linear_reference

SHAPES = [(1, 70, 96), (13, 123, 101), (252, 50, 64), (40, 33, 300)]  # (M, N, K); K=101, 300: K-tail tiles


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("gelu", [False, True], ids=["plain", "gelu"])
def test_matches_dequantized_matmul(shape, dtype, gelu):
    m, n, k = shape
    w = torch.randn(n, k) * 0.05
    wq = quantize_int8(w)
    x = torch.randn(m, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype) * 0.1
    print(f"M,N,K={shape} dtype={dtype} gelu={gelu}")
    out = int8_linear(x, wq, bias, gelu=gelu, out=poisoned((m, n), dtype))
    ref = x.float() @ wq.dequantize().T + bias.float()  # x @ W.dequantize().T + b
    ref = torch.nn.functional.gelu(ref) if gelu else ref
    assert_close(out, ref.to(dtype), dtype, f"int8 {shape}")
    if not gelu:  # quantization noise vs the unquantized fp32 matmul
        assert sqnr_db(x.float() @ w.T + bias.float(), out) > 35


def test_no_bias_and_leading_dims():
    wq = quantize_int8(torch.randn(40, 64))
    x = torch.randn(2, 3, 64)
    out = int8_linear(x, wq)
    assert out.shape == (2, 3, 40)
    assert_close(out, int8_linear_reference(x, wq), torch.float32)


def test_module_from_linear_matches_reference():
    lin = torch.nn.Linear(96, 48)
    mod = Int8Linear.from_linear(lin, gelu=True)
    x = torch.randn(7, 96)
    with torch.no_grad():
        ref = int8_linear_reference(x, quantize_int8(lin.weight), lin.bias, gelu=True)
        assert_close(mod(x), ref, torch.float32)
        assert sqnr_db(torch.nn.functional.gelu(lin(x)), mod(x)) > 35
    assert set(dict(mod.named_buffers())) == {"qweight", "scales"}


def test_bad_inputs_raise():
    wq = quantize_int8(torch.randn(8, 16))
    with pytest.raises(ValueError, match="shape mismatch"):
        int8_linear(torch.randn(2, 15), wq)
    with pytest.raises(TypeError, match="2-D int8"):
        int8_linear(torch.randn(2, 16), Int8Weight(wq.qweight.to(torch.int16), wq.scales))
