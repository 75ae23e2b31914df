"""Shared helpers for the kernel tests (tolerances, poisoned outputs)."""
import torch

# Per-dtype tolerances on the relative error ||out - ref|| / ||ref||. bf16 is loose because the
# Triton 3.9 interpreter truncates fp32 -> bf16 instead of rounding to nearest (measured: half
# of all values differ from torch's .bfloat16() by one ulp), so a bf16 output can be 1 ulp off.
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp(min=1e-30))


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
    assert torch.isfinite(out).all(), f"{what}: non-finite values (unwritten poisoned elements?)"
    err = rel_err(out, ref)
    assert err <= RTOL[dtype], f"{what}: relative error {err:.2e} > {RTOL[dtype]:.0e} for {dtype}"


def poisoned(shape, dtype, device="cpu") -> torch.Tensor:
    """An output buffer full of NaN: any element the kernel fails to write fails the test."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)
