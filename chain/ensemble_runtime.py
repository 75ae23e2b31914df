"""The ``ensemble`` artifact format: K member models whose logits are averaged at inference.

An ``ensemble`` artifact holds the tokenizer, each member's Hugging Face files hard-linked
under ``members/m<i>/`` (so it is sealed and sized like any artifact: K times a member) and
the weights in its manifest (``ensemble.members``, ``ensemble.weights``). It loads as one
``nn.Module`` (``EnsembleModule``), so evaluation, gates, bench timing and distillation
(``finetune.distill.teacher: <ensemble stage>``) run it unchanged, at K models' cost.
"""
from __future__ import annotations

import torch
from torch import nn

from .artifact import Artifact
from .errors import ModelError


class EnsembleModule(nn.Module):
    """sum_i w_i * logits_i(x) over the members; ``.config`` is the first member's."""

    def __init__(self, members: list[nn.Module], weights: list[float]):
        super().__init__()
        if len(members) != len(weights) or not members:
            raise ModelError(f"an ensemble needs one weight per member, got {len(members)} members and "
                             f"{len(weights)} weights")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.config = members[0].config

    def forward(self, labels=None, **inputs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = sum(w * m(**inputs).logits for w, m in zip(self.weights, self.members))  # (B, C)
        return SequenceClassifierOutput(logits=logits)


def ensemble_model(artifact: Artifact, trust_remote_code: bool = False) -> EnsembleModule:
    from .model import load_model

    spec = artifact.manifest.get("ensemble") or {}
    dirs, weights = spec.get("members"), spec.get("weights")
    if not dirs or not weights:
        raise ModelError(f"{artifact.path}: an ensemble manifest lists no members; re-run the ensemble stage")
    members = [load_model(Artifact.load(artifact.path / d), trust_remote_code=trust_remote_code) for d in dirs]
    return EnsembleModule(members, [float(w) for w in weights]).eval()


def ensemble_predictor(artifact: Artifact, threads: int, trust_remote_code: bool = False):
    from .predict import torch_predictor

    torch.set_num_threads(threads)
    return torch_predictor(ensemble_model(artifact, trust_remote_code), artifact.name)
