"""Keep the encoder near the parent's weights while a stage learns a new task.

L2-SP (Li et al., 2018, "Explicit inductive bias for transfer learning"): the stage's
loss becomes ``L_task + weight * sum_i (theta_i - theta_parent_i)^2`` over every trainable
parameter of the base model (the encoder; heads are free), the seeds' ``L_task + λ·L_prev``
with ``L_prev`` the squared distance to the previous stage. ``weight: 0`` adds exactly 0,
so it trains as plain fine-tuning does. EWC (Kirkpatrick et al., 2017) weighs each squared
difference by the parent's diagonal Fisher on its own task (``fisher_diagonal``).

The penalty is added in the Trainer's ``compute_loss`` (as ``chain.distill`` adds
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

    importance: list[torch.Tensor] | None = None  # EWC: the diagonal Fisher per pair; None = 1 (L2-SP)

    @classmethod
    def of(cls, model, fisher: dict[str, torch.Tensor] | None = None) -> "Anchor":
        """The trainable encoder weights of ``model`` (``fisher``: their importance, by name)."""
        named = [(n, p) for n, p in model.base_model.named_parameters() if p.requires_grad]  # no head
        return cls([(p, p.detach().clone()) for _, p in named],
                   None if fisher is None else [fisher[n].to(p.device) for n, p in named])

    def penalty(self) -> torch.Tensor:
        """sum_i F_i (theta_i - theta0_i)^2 over the anchored parameters (a 0-dim tensor)."""
        if not self.pairs:
            return torch.zeros(())
        if self.importance is None:
            return sum(((p - p0.to(p.device)) ** 2).sum() for p, p0 in self.pairs)
        return sum((f * (p - p0.to(p.device)) ** 2).sum() for (p, p0), f in zip(self.pairs, self.importance))

    def distance(self) -> float:
        """||theta - theta0|| now, unweighted (reported in the manifest: how far the stage moved)."""
        with torch.no_grad():
            return float(sum(((p - p0.to(p.device)) ** 2).sum() for p, p0 in self.pairs)) ** 0.5 if self.pairs else 0.0


def fisher_diagonal(model, rows: list[dict], collator) -> dict[str, torch.Tensor]:
    """{encoder parameter name: mean over ``rows`` of the squared per-example gradient} of the
    cross-entropy of ``model`` (the parent, with its own task's head) at each row's label."""
    import torch.nn.functional as F

    named = [(n, p) for n, p in model.base_model.named_parameters() if p.requires_grad]
    acc = {n: torch.zeros_like(p) for n, p in named}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it predicts
    for row in rows:
        batch = collator([row])
        labels = batch.pop("labels")
        loss = F.cross_entropy(model(**batch).logits, labels)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        for (n, _), g in zip(named, grads):
            if g is not None:
                acc[n] += g.detach() ** 2
    model.train(was_training)
    return {n: a / max(1, len(rows)) for n, a in acc.items()}


def l2sp_trainer_cls(base: type, anchor: Anchor, settings):
    """``base`` (a Trainer class) with ``settings.weight * anchor.penalty()`` added to its loss
    (L2-SP, or EWC when the anchor carries a Fisher)."""

    class L2SPTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            loss = loss + settings.weight * anchor.penalty().to(loss.device)
            return (loss, outputs) if return_outputs else loss

    return L2SPTrainer
