import pytest
import torch

from compress.formats import quantize_int4, quantize_int8, sqnr_db


@pytest.mark.parametrize("shape", [(6, 42), (384, 1536), (17, 96)])
def test_int8_sqnr(shape):
    w = torch.randn(shape)
    q = quantize_int8(w)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() <= 127
    assert sqnr_db(w, q.dequantize()) > 35


@pytest.mark.parametrize("group", [16, 32, 128])
def test_int4_sqnr_and_layout(group):
    w = torch.randn(24, 256)
    q = quantize_int4(w, group)
    assert q.qweight.shape == (24, 128) and q.scales.shape == (24, 256 // group)
    assert sqnr_db(w, q.dequantize()) > 15
    codes = q.unpack()
    assert torch.equal(codes[:, 0], q.qweight[:, 0] & 0xF) and torch.equal(codes[:, 1], q.qweight[:, 0] >> 4)


def test_int4_rejects_bad_groups():
    with pytest.raises(ValueError, match="power of two"):
        quantize_int4(torch.randn(4, 48), 24)
    with pytest.raises(ValueError, match="multiple"):
        quantize_int4(torch.randn(4, 48), 32)
