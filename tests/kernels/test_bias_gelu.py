"""Fused bias + erf-GELU vs plain PyTorch, under the Triton interpreter."""
import pytest
import torch
from kernel_testing import DTYPES, assert_close, poisoned

from kernels.bias_gelu import LinearBiasGelu, bias_gelu, bias_gelu_reference

# irregular: none a multiple of the block size; (3, 3000) spans programs in the middle of a row
SHAPES = [(6, 42, 123), (1, 1), (3, 3000), (2, 5, 7)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype):
    x = torch.randn(shape, dtype=dtype) * 3  # reach both GELU tails
    b = torch.randn(shape[-1], dtype=dtype)
    print(f"shape={shape} dtype={dtype}")
    out = bias_gelu(x, b, out=poisoned(shape, dtype))
    assert_close(out, bias_gelu_reference(x, b), dtype, f"bias_gelu {shape}")
    # and against the op BERT runs (erf GELU, not the tanh approximation)
    assert_close(out, torch.nn.functional.gelu((x.float() + b.float()), approximate="none").to(dtype), dtype)


def test_in_place_and_default_out():
    x = torch.randn(4, 77)
    b = torch.randn(77)
    ref = bias_gelu_reference(x, b)
    assert_close(bias_gelu(x, b), ref, torch.float32)
    y = x.clone()
    assert bias_gelu(y, b, out=y) is y
    assert_close(y, ref, torch.float32)


def test_non_contiguous_input():
    base = torch.randn(10, 64)
    x = base.t()  # (64, 10) strided view
    b = torch.randn(10)
    assert_close(bias_gelu(x, b), bias_gelu_reference(x, b), torch.float32)


def test_linear_bias_gelu_module_matches_linear_then_gelu():
    lin = torch.nn.Linear(48, 70)
    x = torch.randn(3, 5, 48)
    with torch.no_grad():
        ref = torch.nn.functional.gelu(lin(x))
        out = LinearBiasGelu(lin)(x)
    assert_close(out, ref, torch.float32)


def test_bad_shapes_and_dtypes_raise():
    with pytest.raises(ValueError, match="bias must have shape"):
        bias_gelu(torch.randn(3, 8), torch.randn(7))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        bias_gelu(torch.ones(3, 8, dtype=torch.int32), torch.ones(8, dtype=torch.int32))
    with pytest.raises(ValueError, match="out must be"):
        bias_gelu(torch.randn(3, 8), torch.randn(8), out=torch.empty(3, 9))


def test_cpu_tensor_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="need CUDA tensors"):
        bias_gelu(torch.randn(3, 8), torch.randn(8))
