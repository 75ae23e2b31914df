"""Chain fixtures: synthetic tasks a 2-layer BERT learns in seconds, and spec writers.

Real SST slices are too hard for the tiny random BERT (it stays at chance), and a gate
test needs a stage that *does* learn, so that a broken one (shuffled labels) shows a
measurable drop. The synthetic tasks are keyword tasks over real WordPiece words.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_tsv

POS = ["good", "great", "excellent", "wonderful", "superb", "lovely"]
NEG = ["bad", "awful", "terrible", "boring", "poor", "dreadful"]
TOPICS = [["football", "goal", "team", "match"], ["bread", "cheese", "soup", "dinner"],
          ["guitar", "song", "piano", "concert"]]
FILLER = ["the", "a", "this", "was", "really", "quite", "film", "story", "and", "very", "it", "today"]


def _sentence(rng: random.Random, key_words: list[str]) -> str:
    words = rng.sample(FILLER, 3) + [rng.choice(key_words), rng.choice(key_words)]
    rng.shuffle(words)
    return " ".join(words)


def sentiment_rows(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    return [(y, _sentence(rng, POS if y else NEG)) for y in (i % 2 for i in range(n))]


def topic_rows(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    return [(y, _sentence(rng, TOPICS[y])) for y in (i % 3 for i in range(n))]


def write_task(root: Path, name: str, rows_fn, sizes=(("train", 128), ("dev", 32), ("test", 64))) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, (split, n) in enumerate(sizes):
        files[split] = str(write_tsv(root / f"{name}_{split}.tsv", rows_fn(n, seed=100 * i + len(name))))
    return files


@pytest.fixture(scope="session")
def easy_tasks(tmp_path_factory) -> dict:
    """{"senti": {...}, "topic": {...}}: task mappings for a spec (2 and 3 labels)."""
    root = tmp_path_factory.mktemp("easy")
    return {"senti": {"files": write_task(root, "senti", sentiment_rows), "num_labels": 2},
            "topic": {"files": write_task(root, "topic", topic_rows), "num_labels": 3}}


# Learnable on the tiny BERT (dev accuracy 1.0 for seeds 1-4) in 64 optimizer steps of 16 examples (~6 s on one busy core).
FAST_FT = {"epochs": 8, "learning_rate": 2.0e-3, "batch_size": 16, "max_length": 16, "warmup_ratio": 0.1,
           "show_progress": False}


def make_spec(path: Path, model: Path, tasks: dict, stages: list[dict], **top) -> Path:
    spec = {"name": "t", "model": str(model), "tasks": tasks, "defaults": {"finetune": dict(FAST_FT)},
            "eval": {"max_length": 16, "threads": 1}, "stages": stages, **top}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
