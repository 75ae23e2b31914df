"""Keep the encoder near the parent's weights while a stage learns a new task.

L2-SP (Li et al., 2018, "Explicit inductive bias for transfer learning"): the stage's
loss becomes ``L_task + weight * sum_i (theta_i - theta_parent_i)^2`` over every trainable
parameter of the base model (the encoder; heads are free), the seeds' ``L_task + λ·L_prev``
with ``L_prev`` the squared distance to the previous stage. ``weight: 0`` adds exactly 0,
so it trains as plain fine-tuning does.

The penalty is added in the Trainer's ``compute_loss`` (as ``_distill_trainer_cls`` adds
its KL term), so Trainer's loop, DDP and checkpoints are untouched.

>>> anchor = Anchor.of(model)          # before training: a copy of the parent's encoder
>>> trainer_cls = l2sp_trainer_cls(Trainer, anchor, L2SPSettings(weight=0.01))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Anchor:
    """Pairs (live parameter, its value at the start of the stage) over the encoder."""
    pairs: list[tuple[torch.nn.Parameter, torch.Tensor]]

    @classmethod
    def of(cls, model) -> "Anchor":
        base = model.base_model  # the encoder, without the task head
        return cls([(p, p.detach().clone()) for p in base.parameters() if p.requires_grad])

    def penalty(self) -> torch.Tensor:
        """sum_i (theta_i - theta0_i)^2 over the anchored parameters (a 0-dim tensor)."""
        if not self.pairs:
            return torch.zeros(())
        return sum(((p - p0.to(p.device)) ** 2).sum() for p, p0 in self.pairs)

    def distance(self) -> float:
        """||theta - theta0|| now (reported in the manifest: how far the stage moved)."""
        with torch.no_grad():
            return float(self.penalty()) ** 0.5


def l2sp_trainer_cls(base: type, anchor: Anchor, settings):
    """``base`` (a Trainer class) with ``settings.weight * anchor.penalty()`` added to its loss."""

    class L2SPTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            loss = loss + settings.weight * anchor.penalty().to(loss.device)
            return (loss, outputs) if return_outputs else loss

    return L2SPTrainer
