"""Fused residual add + LayerNorm vs plain PyTorch, under the Triton interpreter."""
import pytest
import torch
from kernel_testing import DTYPES, assert_close, poisoned

from kernels.residual_layernorm import ResidualLayerNorm, residual_layernorm, residual_layernorm_reference

SHAPES = [(6, 42, 123), (5, 384), (3, 1000), (1, 7), (130, 16)]  # (130, 16): rows past one program


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype):
    n = shape[-1]
    x = torch.randn(shape, dtype=dtype) * 2 + 1  # non-zero mean: the centring matters
    r = torch.randn(shape, dtype=dtype)
    w = torch.randn(n, dtype=dtype)
    b = torch.randn(n, dtype=dtype)
    eps = 1e-12 if dtype == torch.float32 else 1e-5
    print(f"shape={shape} dtype={dtype}")
    out = residual_layernorm(x, r, w, b, eps, out=poisoned(shape, dtype))
    assert_close(out, residual_layernorm_reference(x, r, w, b, eps), dtype, f"residual_layernorm {shape}")


def test_strided_rows():
    big = torch.randn(20, 200)
    x = big[:, 10:110]  # rows of 100 with stride 200
    r = torch.randn(20, 300)[:, :100]
    w, b = torch.randn(100), torch.randn(100)
    assert x.stride(0) == 200
    assert_close(residual_layernorm(x, r, w, b), residual_layernorm_reference(x, r, w, b), torch.float32)


def test_module_matches_layernorm_of_sum():
    ln = torch.nn.LayerNorm(96, eps=1e-12)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
        x, r = torch.randn(4, 9, 96), torch.randn(4, 9, 96)
        assert_close(ResidualLayerNorm(ln)(x, r), ln(x + r), torch.float32)


def test_bad_inputs_raise():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="residual shape"):
        residual_layernorm(x, torch.randn(3, 9), torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match="weight and bias"):
        residual_layernorm(x, x, torch.ones(9), torch.zeros(8))
    with pytest.raises(ValueError, match="up to 16384"):
        residual_layernorm(torch.randn(1, 20000), torch.randn(1, 20000), torch.ones(20000), torch.zeros(20000))
