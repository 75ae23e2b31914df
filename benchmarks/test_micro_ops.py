"""Micro-benchmarks of single ops and kernels (pytest-benchmark), at MiniLM-L6 shapes.

CPU rows: the plain-PyTorch reference ops our kernels replace, and fp32 vs dynamic-int8
linear (the op behind the ``int8`` stage). CUDA rows: the Triton kernels, synchronised
inside the timed function so the timer sees the GPU work. Gate them like this (see
docs/gating.md):

    python -m pytest benchmarks --benchmark-enable --benchmark-autosave           # on main: baseline
    python -m pytest benchmarks --benchmark-enable --benchmark-compare \\
        --benchmark-compare-fail=median:15%                                        # on the change

Shapes: 8 sentences x 64 tokens = 512 rows, hidden 384, FFN 1536, 12 heads of 32.
"""
import pytest
import torch

ROWS, HIDDEN, FFN, HEADS, SEQ = 512, 384, 1536, 12, 64
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="Triton kernels need a CUDA GPU")


@pytest.fixture(autouse=True)
def one_thread(benchmark):
    """Fixed, recorded thread count: micro-benchmarks compare ops, not thread scaling."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    benchmark.extra_info["torch_threads"] = 1
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


def _sync(fn):
    if not CUDA:
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


# ---- CPU: the reference ops and the int8 linear ----

@pytest.mark.benchmark(group="linear 512x384->1536")
def test_linear_fp32(benchmark):
    lin, x = torch.nn.Linear(HIDDEN, FFN).eval(), torch.randn(ROWS, HIDDEN)
    with torch.inference_mode():
        out = benchmark(lin, x)
    assert out.shape == (ROWS, FFN)


@pytest.mark.benchmark(group="linear 512x384->1536")
def test_linear_int8_dynamic(benchmark):
    from compress.torch_int8 import quantize_int8_dynamic_

    model = torch.nn.Sequential(torch.nn.Linear(HIDDEN, FFN)).eval()
    x = torch.randn(ROWS, HIDDEN)
    with torch.inference_mode():
        ref = model(x)
        quantize_int8_dynamic_(model)
        out = benchmark(model, x)
    assert (out - ref).norm() / ref.norm() < 0.05  # still the same op


@pytest.mark.benchmark(group="bias+gelu 512x1536")
def test_bias_gelu_reference(benchmark):
    from kernels.bias_gelu import bias_gelu_reference

    x, b = torch.randn(ROWS, FFN), torch.randn(FFN)
    assert benchmark(bias_gelu_reference, x, b).shape == (ROWS, FFN)


@pytest.mark.benchmark(group="residual+layernorm 512x384")
def test_residual_layernorm_reference(benchmark):
    from kernels.residual_layernorm import residual_layernorm_reference

    x, r, w, b = torch.randn(ROWS, HIDDEN), torch.randn(ROWS, HIDDEN), torch.ones(HIDDEN), torch.zeros(HIDDEN)
    assert benchmark(residual_layernorm_reference, x, r, w, b).shape == (ROWS, HIDDEN)


@pytest.mark.benchmark(group="attention 8x12x64x32")
def test_attention_reference(benchmark):
    from kernels.attention import attention_reference

    q, k, v = (torch.randn(ROWS // SEQ, HEADS, SEQ, HIDDEN // HEADS) for _ in range(3))
    mask = torch.ones(ROWS // SEQ, SEQ)
    assert benchmark(attention_reference, q, k, v, mask).shape == q.shape


# ---- CUDA: the Triton kernels (fp16) ----

@needs_cuda
@pytest.mark.benchmark(group="bias+gelu 512x1536")
def test_bias_gelu_triton(benchmark):
    from kernels.bias_gelu import bias_gelu

    x, b = torch.randn(ROWS, FFN, device="cuda", dtype=torch.half), torch.randn(FFN, device="cuda", dtype=torch.half)
    bias_gelu(x, b)  # autotune outside the timed calls
    assert benchmark(_sync(lambda: bias_gelu(x, b))).shape == (ROWS, FFN)


@needs_cuda
@pytest.mark.benchmark(group="residual+layernorm 512x384")
def test_residual_layernorm_triton(benchmark):
    from kernels.residual_layernorm import residual_layernorm

    x, r = (torch.randn(ROWS, HIDDEN, device="cuda", dtype=torch.half) for _ in range(2))
    w, b = torch.ones(HIDDEN, device="cuda", dtype=torch.half), torch.zeros(HIDDEN, device="cuda", dtype=torch.half)
    residual_layernorm(x, r, w, b)
    assert benchmark(_sync(lambda: residual_layernorm(x, r, w, b))).shape == (ROWS, HIDDEN)


@needs_cuda
@pytest.mark.benchmark(group="attention 8x12x64x32")
def test_attention_triton(benchmark):
    from kernels.attention import fused_attention

    q, k, v = (torch.randn(ROWS // SEQ, HEADS, SEQ, HIDDEN // HEADS, device="cuda", dtype=torch.half)
               for _ in range(3))
    mask = torch.ones(ROWS // SEQ, SEQ, device="cuda")
    fused_attention(q, k, v, mask)
    assert benchmark(_sync(lambda: fused_attention(q, k, v, mask))).shape == q.shape


@needs_cuda
@pytest.mark.benchmark(group="linear 512x384->1536")
def test_linear_int8_triton(benchmark):
    from compress.formats import quantize_int8
    from kernels.int8_gemm import int8_linear

    w = quantize_int8(torch.randn(FFN, HIDDEN))
    w.qweight, w.scales = w.qweight.cuda(), w.scales.cuda()
    x = torch.randn(ROWS, HIDDEN, device="cuda", dtype=torch.half)
    int8_linear(x, w)
    assert benchmark(_sync(lambda: int8_linear(x, w))).shape == (ROWS, FFN)
