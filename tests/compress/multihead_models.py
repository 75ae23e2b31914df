"""A tiny BERT artifact carrying three task heads, as a Subj -> TREC -> SST-2 chain leaves it.

The model's own head is SST-2's; ``heads/`` also holds a Subj head (2 labels, other
weights) and a TREC head (6 labels), each with its label names, and the manifest names
SST-2 as the artifact's task, like a fine-tune stage's.
"""
from __future__ import annotations

from pathlib import Path

from tests.conftest import save_tiny_bert

TASKS = ("sst2", "subj", "trec")


def save_multihead(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    from chain.artifact import write_manifest
    from chain.heads import save_head, set_head_
    from chain.task import builtin_task

    save_tiny_bert(path, num_labels=2, seed=seed, initializer_range=0.3)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    sst2 = builtin_task("sst2")
    save_head(model, path, "sst2", labels=sst2.label_names())
    g = torch.Generator().manual_seed(seed + 1)
    hidden = model.config.hidden_size
    for task in ("subj", "trec"):
        t = builtin_task(task)
        n = t.num_labels
        other = AutoModelForSequenceClassification.from_pretrained(path).eval()
        set_head_(other, {"classifier.weight": torch.randn(n, hidden, generator=g) * 0.5,
                          "classifier.bias": torch.randn(n, generator=g) * 0.1}, n, t.label_names())
        save_head(other, path, task, labels=t.label_names())
    write_manifest(path, stage="sst2", stage_type="finetune", format="hf", num_labels=2,
                   labels=sst2.label_names(), task=sst2.to_dict(), parent=None)
    return path
