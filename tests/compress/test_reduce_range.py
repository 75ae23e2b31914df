"""reduce_range follows the CPU: 7-bit weights exactly where u8s8 int8 sums saturate."""
from __future__ import annotations

import pytest

import chain.environment as env
from compress.onnx_quantize import OrtInt8Config, resolve_reduce_range
from compress.onnx_static import OrtStaticInt8Config


@pytest.mark.parametrize("flags, saturates", [
    (["avx2", "fma"], True),                       # AVX2-only EPYC / older Xeon: VPMADDUBSW int16 sums
    (["avx2", "avx512f", "avx512_vnni"], False),   # VNNI accumulates in int32
    (["avx2", "avx_vnni"], False),
    (["avx2", "avx512f", "amx_int8"], False),
    ([], False),                                   # not x86 or unreadable: no known flaw, keep 8 bits
])
def test_int8_saturates_reads_the_flags(monkeypatch, flags, saturates):
    monkeypatch.setattr(env, "cpu_flags", lambda: flags)
    assert env.int8_saturates() is saturates
    assert resolve_reduce_range(None) is saturates
    assert resolve_reduce_range(True) is True and resolve_reduce_range(False) is False  # explicit wins


def test_configs_default_to_auto():
    assert OrtInt8Config().reduce_range is None and OrtStaticInt8Config().reduce_range is None
