"""``ensemble``: K fine-tunes of the parent whose logits are averaged, at K models' cost.

The members are trained (or reused) by ``chain.ensemble_members``; this stage only picks
the weights (``uniform``, or ``dev``: a grid search over the simplex on the dev split) and
writes an ``ensemble`` artifact (``chain.ensemble_runtime``). Its row is the ensemble as it
runs: accuracy, K members' latency and size. A fine-tune stage with
``distill: {teacher: <this stage>}`` turns it into one student.

    - {name: ens, type: ensemble, task: sst2,
       config: {finetune: {epochs: 1, max_length: 64}, members: [{seed: 1}, {seed: 2}, {seed: 3}]}}
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .artifact import Artifact
from .ensemble_config import EnsembleConfig
from .ensemble_members import dev_split, link_member, member_summary, train_members
from .registry import register_stage
from .stage import RunContext, Stage


def simplex(k: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of ``k`` non-negative multiples of ``step`` summing to 1."""
    n = round(1 / step)
    return [tuple(c / n for c in combo) for combo in itertools.product(range(n + 1), repeat=k) if sum(combo) == n]


def combine(logits: list[np.ndarray], weights) -> np.ndarray:
    return sum(w * x for w, x in zip(weights, logits))  # (N, C)


def tune_weights(logits: list[np.ndarray], labels: list[int], step: float) -> tuple[tuple[float, ...], float]:
    """(weights, dev accuracy) maximising dev accuracy; ties go to the weights nearest uniform,
    so a grid with no better point returns the plain average (a candidate even off the grid)."""
    y = np.asarray(labels)
    k = len(logits)
    best, best_key = None, None
    for w in [(1 / k,) * k] + simplex(k, step):
        acc = float((combine(logits, w).argmax(-1) == y).mean())
        key = (acc, -float(np.sum((np.asarray(w) - 1 / k) ** 2)))
        if best_key is None or key > best_key:
            best, best_key = w, key
    return best, best_key[0]


@register_stage("ensemble")
@dataclass
class Ensemble(Stage):
    """K members fine-tuned from the parent (cached one by one), logits averaged (uniform or dev-tuned)."""
    trains_on_task: ClassVar[bool] = True
    output_format: ClassVar[str] = "ensemble"
    not_in_key: ClassVar[tuple[str, ...]] = ("show_progress",)

    config: EnsembleConfig = field(default_factory=EnsembleConfig)
    name: str = "ensemble"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext | None = None) -> dict:
        from .model import load_tokenizer

        ctx = ctx or RunContext()
        cfg = self.config
        members = train_members(parent, cfg, out_dir, ctx, self.name)
        task = members[0].config.get_task()
        dev = dev_split(cfg)
        tok = load_tokenizer(members[0].artifact, ctx.trust_remote_code)
        dev_logits = [m.dev_logits() for m in members]
        y = np.asarray(dev.labels)
        k = len(members)
        if cfg.weights == "dev":
            weights, dev_acc = tune_weights(dev_logits, dev.labels, cfg.weight_step)
        else:
            weights = (1 / k,) * k
            dev_acc = float((combine(dev_logits, weights).argmax(-1) == y).mean())
        tok.save_pretrained(out_dir)
        dirs = []
        for i, m in enumerate(members):
            dirs.append(f"members/m{i}")
            link_member(m.artifact, out_dir / dirs[-1])
        return {"format": "ensemble", "num_labels": task.num_labels, "labels": members[0].artifact.manifest["labels"],
                "task": task.to_dict(), "task_fingerprint": task.fingerprint(),
                "ensemble": {"combine": "logits", "weighting": cfg.weights, "members": dirs,
                             "weights": [round(float(w), 6) for w in weights], "dev_accuracy": dev_acc,
                             "member_dev_accuracy": [float((x.argmax(-1) == y).mean()) for x in dev_logits]},
                "train": {"dev_accuracy": dev_acc, "dev_examples": len(dev), "members": member_summary(members)}}
