"""Configs of the ``ensemble`` and ``soup`` stages: K fine-tuned members and how they combine.

Both stages train the same members (``MembersConfig``): the fine-tune recipe shared by all
(``finetune``) plus one override per member (``members``: a seed, a learning rate, ...).
A member's cache key is its full fine-tune config and the parent, never the combination,
so an ``ensemble`` and two ``soup`` stages over the same members train them once.

>>> MembersConfig(finetune={"epochs": 1}, members=[{"seed": 1}, {"seed": 2}]).member_configs()[1].seed
2
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .errors import SpecError
from .finetune_config import FineTuneConfig

WEIGHTINGS = ("uniform", "dev")
SOUP_METHODS = ("uniform", "greedy")
# set per stage, never per member: a member on another task is not a member of this ensemble
NOT_PER_MEMBER = ("task", "processes", "show_progress", "exclude")


@dataclass
class MembersConfig:
    task: str | dict = "sst2"  # filled from the stage's `task:`
    finetune: dict = field(default_factory=dict)  # FineTuneConfig fields every member shares
    members: list[dict] = field(default_factory=lambda: [{"seed": 1}, {"seed": 2}, {"seed": 3}])
    # Seed of the classification head every member starts from when the parent has none for
    # the task: members then differ only by their own seed (data order, dropout) and
    # overrides, so their weights can be averaged head included (a soup needs a shared start).
    head_seed: int = 0
    # Decontamination, as FineTuneConfig.exclude (a spec's `decontaminate: true` fills it)
    exclude: list[dict] = field(default_factory=list)
    show_progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.finetune, dict):
            raise SpecError(f"ensemble.finetune must be a mapping of fine-tune settings, got {self.finetune!r}")
        if not isinstance(self.members, list) or len(self.members) < 2:
            raise SpecError(f"ensemble.members must list at least 2 members (each a mapping of fine-tune "
                            f"overrides, e.g. {{seed: 1}}), got {self.members!r}")
        for key in NOT_PER_MEMBER:
            if key in self.finetune:
                raise SpecError(f"ensemble.finetune.{key}: set by the stage, not here")
        seen = {}
        for i, m in enumerate(self.members):
            if not isinstance(m, dict):
                raise SpecError(f"ensemble.members[{i}] must be a mapping of fine-tune overrides, got {m!r}")
            bad = sorted(set(m) & set(NOT_PER_MEMBER))
            if bad:
                raise SpecError(f"ensemble.members[{i}]: {bad} cannot differ between members")
            blob = json.dumps({**self.finetune, **m}, sort_keys=True, default=str)
            if blob in seen:
                raise SpecError(f"ensemble.members[{i}] is the same fine-tune as members[{seen[blob]}]; give each "
                                "member its own seed or settings")
            seen[blob] = i
        if isinstance(self.head_seed, bool) or not isinstance(self.head_seed, int):
            raise SpecError(f"ensemble.head_seed must be an integer, got {self.head_seed!r}")
        self.member_configs()  # every member's fine-tune config validates now, not after K-1 trainings

    def member_configs(self) -> list[FineTuneConfig]:
        out = []
        for i, m in enumerate(self.members):
            try:
                out.append(FineTuneConfig(**{**self.finetune, **m, "task": self.task, "exclude": self.exclude,
                                             "show_progress": self.show_progress}))
            except TypeError as e:
                raise SpecError(f"ensemble.members[{i}]: {e}") from None
            except SpecError as e:
                raise SpecError(f"ensemble.members[{i}]: {e}") from None
        return out

    # What the chain's contamination check (chain.overlap) reads of a stage that trains: the
    # first member's data (members differ in seed and settings, not in their training texts
    # unless they subsample)
    def get_task(self):
        return self.member_configs()[0].get_task()

    @property
    def seed(self) -> int:
        return self.member_configs()[0].seed

    @property
    def dev_fraction(self) -> float:
        return self.member_configs()[0].dev_fraction

    @property
    def max_train_samples(self) -> int | None:
        return self.member_configs()[0].max_train_samples

    @property
    def max_eval_samples(self) -> int | None:
        return self.member_configs()[0].max_eval_samples


@dataclass
class EnsembleConfig(MembersConfig):
    """Logit averaging: ``weights: uniform`` (1/K each) or ``dev`` (a grid over the simplex,
    step ``weight_step``, picked by dev accuracy; ties go to the most uniform weights)."""
    weights: str = "uniform"
    weight_step: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weights not in WEIGHTINGS:
            raise SpecError(f"ensemble.weights must be one of {WEIGHTINGS}, got {self.weights!r}")
        if not 0 < self.weight_step <= 0.5 or abs(round(1 / self.weight_step) * self.weight_step - 1) > 1e-9:
            raise SpecError(f"ensemble.weight_step must divide 1 (0.05, 0.1, 0.25, 0.5), got {self.weight_step!r}")


@dataclass
class SoupConfig(MembersConfig):
    """Weight averaging (Wortsman et al. 2022): ``uniform`` averages every member; ``greedy``
    takes members by dev accuracy and keeps one only if the soup's dev accuracy does not drop."""
    method: str = "greedy"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in SOUP_METHODS:
            raise SpecError(f"soup.method must be one of {SOUP_METHODS}, got {self.method!r}")
