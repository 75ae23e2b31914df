"""The default chain on a model it cannot fully handle: refused stages become skipped rows.

A newcomer running ``python -m bench --model gpt2-dir`` should get every stage the
architecture supports, not an error asking them to edit a chain they never wrote; their
own ``--spec`` is refused up front instead (they chose those stages).
"""
from __future__ import annotations

import pytest

from bench.spec import BenchConfig, bench_spec, drop_unsupported


@pytest.fixture
def tiny_gpt2(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg = GPT2Config(n_embd=16, n_layer=1, n_head=2, n_inner=32, n_positions=64, vocab_size=100, num_labels=2,
                     pad_token_id=0)
    GPT2ForSequenceClassification(cfg).save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2"


def test_refused_stages_and_their_descendants_are_skipped(tiny_gpt2):
    spec = bench_spec(BenchConfig(model=str(tiny_gpt2), quick=True, peers=False))
    before = [s.name for s in spec.stages]
    cut, skipped = drop_unsupported(spec)
    why = {name: reason for name, _, _, reason in skipped}
    # GPT-2 cannot be pruned (fused c_attn) nor take the BERT kernels
    assert why["pruned"].startswith("not for this architecture") and "GPT-2" in why["pruned"]
    assert why["kernels"].startswith("not for this architecture")
    for child in ("recovered", "recovered-onnx", "recovered-onnx-int8"):
        assert why[child].startswith("built on "), why[child]
    kept = [s.name for s in cut.stages]
    assert kept == [n for n in before if n not in why] and {"finetune", "onnx", "onnx-int8"} <= set(kept)
    # every kept stage names its parent explicitly, and no parent is a dropped stage
    assert all(s.parent and s.parent not in why for s in cut.stages)


def test_a_supported_model_keeps_the_whole_chain():
    spec = bench_spec(BenchConfig(quick=True, peers=False))  # the embedded MiniLM (BERT)
    cut, skipped = drop_unsupported(spec)
    assert skipped == [] and cut is spec
