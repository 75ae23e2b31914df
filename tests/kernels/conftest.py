"""Run the Triton kernels on CPU through the interpreter.

TRITON_INTERPRET must be set before any kernel module is imported: ``@triton.jit`` decides
at decoration time whether it builds an interpreted function. This file is imported by
pytest before the test modules of this directory, hence the assignment at the very top.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

_compiled_early = [m for m in ("kernels.attention", "kernels.bias_gelu", "kernels.int4_gemm", "kernels.int8_gemm",
                               "kernels.residual_layernorm") if m in sys.modules]
_std = sys.modules.get("triton.language.standard")  # triton's own @jit helpers (tl.zeros, ...)
if _std is not None and type(getattr(_std, "zeros", None)).__name__ == "JITFunction":
    _compiled_early.append("triton.language (imported without the interpreter, e.g. by bitsandbytes)")
if _compiled_early:  # imported by an earlier test directory without the interpreter flag
    raise RuntimeError(f"{_compiled_early} were imported before tests/kernels/conftest.py set TRITON_INTERPRET=1; "
                       "run tests/kernels in its own pytest process")


@pytest.fixture(autouse=True)
def _one_thread():
    """The CPU is shared; the interpreter gains nothing from intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
