"""Launch-time helpers shared by the kernel files (device checks, config choice, dtypes).

Every choice here is made per call, never at import: a process can hold CUDA tensors and
interpreter (CPU) tensors, and TRITON_INTERPRET may be set after ``kernels`` is imported.
"""
from __future__ import annotations

import contextlib
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_device(*tensors: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter."""
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"all tensors must be on one device, got {dev} and {t.device}")
    if dev.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"Triton kernels need CUDA tensors (got {dev}); set TRITON_INTERPRET=1 before importing "
            "kernels to run them on CPU with the (slow) interpreter"
        )


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's (multi-GPU hosts)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def check_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def autotuning(t: torch.Tensor) -> bool:
    """Autotune only on a real GPU: under the interpreter every config would run (slowly)."""
    return t.is_cuda and not interpreting()


def dot_in_f32(dtype: torch.dtype) -> bool:
    """The Triton 3.9 interpreter returns garbage for tl.dot on bfloat16 operands (measured:
    errors ~1e10 on a 16x16 product); there we upcast to fp32, which gives the same products
    (a bf16 x bf16 product is exact in fp32). On GPU bf16 goes to the tensor cores."""
    return dtype == torch.bfloat16 and interpreting()


def input_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow torch's TF32 flag, so a patched fp32 model matches the unpatched one."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def bucket(n: int) -> int:
    """Autotune key for a varying size (tokens in a batch): retune per power of two, not per value."""
    return 1 << max(0, (int(n) - 1).bit_length())
