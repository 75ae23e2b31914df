"""``soup``: the members' weights averaged into one model (Wortsman et al. 2022, "Model soups").

``uniform`` averages every member; ``greedy`` sorts them by dev accuracy and adds one to
the soup only if the soup's dev accuracy does not drop. Members share the parent and (see
``chain.ensemble_members``) the same initial head, so their weights lie in one basin and
the average is a model, not noise. The artifact is a normal Hugging Face model: one
model's latency and size, and every compression stage can follow it.

    - {name: soup, type: soup, task: sst2, config: {method: greedy, members: [{seed: 1}, {seed: 2}]}}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .artifact import Artifact
from .ensemble_config import SoupConfig
from .ensemble_members import dev_split, logits_on, member_summary, train_members
from .heads import copy_heads, save_head
from .registry import register_stage
from .stage import RunContext, Stage


def average_states(states: list[dict]) -> dict:
    """Mean of each floating-point tensor; integer buffers (position ids) from the first."""
    import torch

    out = {}
    for name, first in states[0].items():
        if torch.is_floating_point(first):
            out[name] = torch.stack([s[name].float() for s in states]).mean(0).to(first.dtype)
        else:
            out[name] = first.clone()
    return out


def greedy_order(dev_acc: list[float]) -> list[int]:
    """Members by dev accuracy, best first (ties: the earlier member)."""
    return sorted(range(len(dev_acc)), key=lambda i: (-dev_acc[i], i))


@register_stage("soup")
@dataclass
class Soup(Stage):
    """K members fine-tuned from the parent (cached one by one), weights averaged (uniform or greedy)."""
    trains_on_task: ClassVar[bool] = True
    not_in_key: ClassVar[tuple[str, ...]] = ("show_progress",)

    config: SoupConfig = field(default_factory=SoupConfig)
    name: str = "soup"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext | None = None) -> dict:
        from .model import load_model, load_tokenizer

        ctx = ctx or RunContext()
        cfg = self.config
        members = train_members(parent, cfg, out_dir, ctx, self.name)
        task = members[0].config.get_task()
        dev = dev_split(cfg)
        y = np.asarray(dev.labels)
        tok = load_tokenizer(members[0].artifact, ctx.trust_remote_code)
        model = load_model(members[0].artifact, trust_remote_code=ctx.trust_remote_code)
        states = [load_model(m.artifact, trust_remote_code=ctx.trust_remote_code).state_dict() for m in members]
        max_len = members[0].config.max_length

        def dev_accuracy(state: dict) -> float:
            model.load_state_dict(state)
            return float((logits_on(model, tok, dev.texts, max_len).argmax(-1) == y).mean())

        member_acc = [float((m.dev_logits().argmax(-1) == y).mean()) for m in members]
        if cfg.method == "uniform":
            chosen = list(range(len(members)))
            soup_acc = dev_accuracy(average_states(states))
            tried = [{"members": chosen, "dev_accuracy": soup_acc, "kept": True}]
        else:
            order = greedy_order(member_acc)
            chosen, soup_acc = [order[0]], member_acc[order[0]]
            tried = [{"members": list(chosen), "dev_accuracy": soup_acc, "kept": True}]
            for i in order[1:]:
                acc = dev_accuracy(average_states([states[j] for j in chosen + [i]]))
                kept = acc >= soup_acc
                tried.append({"members": chosen + [i], "dev_accuracy": acc, "kept": kept})
                if kept:
                    chosen, soup_acc = chosen + [i], acc
        model.load_state_dict(average_states([states[j] for j in chosen]))
        names = task.label_names()
        model.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
        copy_heads(parent.path, out_dir, skip=task.name)
        save_head(model, out_dir, task.name, labels=names)
        return {"format": "hf", "num_labels": task.num_labels, "labels": members[0].artifact.manifest["labels"],
                "task": task.to_dict(), "task_fingerprint": task.fingerprint(),
                "soup": {"method": cfg.method, "ingredients": chosen, "steps": tried,
                         "member_dev_accuracy": member_acc, "dev_accuracy": soup_acc},
                "train": {"dev_accuracy": soup_acc, "dev_examples": len(dev), "members": member_summary(members)}}
