"""Fused encoder attention vs materialised-scores attention, under the Triton interpreter.

The interpreter runs one config with 64-row / 64-key tiles, so S in (77, 100, 130) crosses
tile edges in both the query and the key direction (S = 130: three tiles each way).
"""
import math

import pytest
import torch
from kernel_testing import DTYPES, assert_close, poisoned

from kernels.attention import attention_reference, fused_attention

SHAPES = [(2, 3, 45, 40), (3, 2, 77, 64), (1, 1, 1, 16), (2, 2, 100, 32), (2, 1, 130, 16)]  # (B, H, S, D)


def padding_mask(bsz: int, seq: int) -> torch.Tensor:
    """(B, S) bool with variable lengths: always one full row and one length-1 row."""
    lengths = torch.randint(1, seq + 1, (bsz,))
    lengths[0] = seq
    lengths[-1] = 1 if bsz > 1 else lengths[-1]
    return torch.arange(seq)[None, :] < lengths[:, None]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_with_padding(shape, dtype):
    bsz, heads, seq, dim = shape
    q, k, v = (torch.randn(shape, dtype=dtype) for _ in range(3))
    mask = padding_mask(bsz, seq)
    print(f"shape={shape} dtype={dtype} lengths={mask.sum(1).tolist()}")
    out = fused_attention(q, k, v, mask, out=poisoned(shape, dtype))
    ref = attention_reference(q, k, v, mask)
    assert_close(out, ref, dtype, f"attention {shape}")
    # padded keys must not leak: changing K/V beyond each length leaves the output unchanged
    k2, v2 = k.clone(), v.clone()
    k2[~mask[:, None, :, None].expand_as(k2)] = 100.0
    v2[~mask[:, None, :, None].expand_as(v2)] = -100.0
    assert torch.equal(fused_attention(q, k2, v2, mask), out)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32], ids=str)
def test_mask_dtypes_and_no_mask(mask_dtype):
    q, k, v = (torch.randn(2, 2, 50, 24) for _ in range(3))
    mask = padding_mask(2, 50)
    out = fused_attention(q, k, v, mask.to(mask_dtype))
    assert_close(out, attention_reference(q, k, v, mask), torch.float32)
    assert_close(fused_attention(q, k, v), attention_reference(q, k, v), torch.float32)


def test_bert_layout_views_and_custom_scale():
    """BERT hands over (B, S, H, D) buffers transposed to (B, H, S, D): strided, not contiguous."""
    bsz, seq, heads, dim = 2, 37, 3, 16
    q, k, v = (torch.randn(bsz, seq, heads, dim).transpose(1, 2) for _ in range(3))
    assert not q.is_contiguous()
    mask = padding_mask(bsz, seq)
    out = fused_attention(q, k, v, mask, scale=0.3)
    assert_close(out, attention_reference(q, k, v, mask, scale=0.3), torch.float32)
    # the default output is a view of a (B, S, H, D) buffer, so the merge of heads is free
    assert out.transpose(1, 2).is_contiguous()


def test_fully_masked_row_matches_hf_semantics():
    """HF adds finfo.min to masked scores: an all-masked row averages V uniformly, no NaN."""
    q, k, v = (torch.randn(2, 2, 40, 16) for _ in range(3))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1] = False
    out = fused_attention(q, k, v, mask)
    assert_close(out, attention_reference(q, k, v, mask), torch.float32)
    assert torch.allclose(out[1], v[1].mean(dim=1, keepdim=True).expand_as(out[1]), atol=1e-5)


def test_matches_torch_sdpa():
    q, k, v = (torch.randn(2, 4, 33, 32) for _ in range(3))
    mask = padding_mask(2, 33)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    assert_close(fused_attention(q, k, v, mask), ref, torch.float32)
    # the default scale is 1/sqrt(D), as in BERT and SDPA
    assert torch.equal(fused_attention(q, k, v, mask), fused_attention(q, k, v, mask, scale=1 / math.sqrt(32)))


def test_bad_inputs_raise():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="share one"):
        fused_attention(q, q, torch.randn(1, 2, 9, 16))
    with pytest.raises(ValueError, match="mask must have shape"):
        fused_attention(q, q, q, torch.ones(1, 9))
    with pytest.raises(TypeError, match="share a dtype"):
        fused_attention(q, q.half(), q)
