"""bench.flops: the work of a batch counted from the model's shapes, and a measured peak."""
import numpy as np
import pytest
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2ForSequenceClassification

from bench.flops import achieved, batch_ops, markdown, peak_fp32, peak_int8, precision_of


def test_bert_ops_match_a_hand_count():
    h, i, layers, labels = 32, 64, 2, 3
    model = BertForSequenceClassification(BertConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=4,
                                                     intermediate_size=i, vocab_size=100, num_labels=labels))
    b, n = 4, 10
    per_layer = 2 * b * n * (4 * h * h + 2 * h * i) + 4 * b * n * n * h  # q k v o, ffn in/out, QK^T and AV
    head = 2 * b * (h * h + h * labels)  # pooler and classifier: one vector per sentence
    assert batch_ops(model, b, n) == pytest.approx(layers * per_layer + head)
    # a pruned model is counted with its own, smaller shapes
    model.prune_heads({0: [0, 1]})
    assert batch_ops(model, b, n) < layers * per_layer + head


def test_gpt2_conv1d_and_fused_qkv():
    h = 16
    model = GPT2ForSequenceClassification(GPT2Config(n_embd=h, n_layer=1, n_head=2, n_inner=32, vocab_size=50,
                                                     n_positions=32, num_labels=2, pad_token_id=0))
    b, n = 2, 8
    linears = 2 * b * n * (h * 3 * h + h * h + 2 * h * 32) + 2 * b * h * 2  # c_attn, c_proj, mlp; score head
    assert batch_ops(model, b, n) == pytest.approx(linears + 4 * b * n * n * h)


def test_achieved_uses_the_timed_batches_and_peaks_are_measured():
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=100))
    batches = [{"input_ids": np.zeros((32, 12), dtype=np.int64)}, {"input_ids": np.zeros((32, 20), dtype=np.int64)}]
    got = achieved(model, batches, samples_per_s=320.0)  # 10 batches/s
    mean_ops = (batch_ops(model, 32, 12) + batch_ops(model, 32, 20)) / 2
    assert got["achieved_gops"] == pytest.approx(mean_ops * 10 / 1e9, abs=0.06) and got["mean_padded_length"] == 16
    assert peak_fp32(1, n=256, repeats=2) > 0 and peak_int8(1, n=256, repeats=2) > 0
    assert precision_of({"name": "recovered-onnx-int8"}) == "int8" and precision_of({"name": "onnx"}) == "fp32"
    md = "\n".join(markdown({"row": "x", "precision": "int8", "gops_per_batch": 1.0, "mean_padded_length": 16.0,
                             "achieved_gops": 50.0, "peak": "p", "peak_gops": 100.0, "threads": 2,
                             "fraction_of_peak": 0.5}))
    assert "50% of peak" in md
