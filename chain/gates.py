"""Per-stage gates: what a stage may cost, and what happens when it costs more.

A gate is checked after a stage is evaluated, against the measurements of its parent:

* ``max_drop``: largest accuracy drop (absolute, 0..1) allowed vs the parent on any task
  both were evaluated on: the stage's own task for a compression stage, the earlier
  tasks (forgetting) for a fine-tune on a new task. A number, or ``{task: drop}``.
* ``min_accuracy``: floor on the stage's own task (a number, or ``{task: floor}``).
* ``max_latency_ms``: budget for batch-1 p50 latency on the own task's test sentences.

On failure, ``on_fail`` decides: ``rollback`` (downstream stages start from the parent,
the stage is recorded as rolled back with the measured reason), ``retry`` (re-run with
``learning_rate * retry_lr_factor``, at most ``retries`` more times, then roll back), or
``stop`` (the chain ends; the last good artifact is the result). A NaN/inf loss is a
gate failure too.

>>> gate = GateConfig(max_drop=0.01, on_fail="rollback")
>>> check_gate(gate, "int8", {"sst2": 0.88}, {"sst2": 0.90}, own_task="sst2")
['accuracy on sst2 dropped 0.0200 (0.9000 -> 0.8800) vs the parent, more than max_drop 0.01']
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import SpecError

ON_FAIL = ("rollback", "retry", "stop")


@dataclass
class GateConfig:
    max_drop: float | dict[str, float] | None = None
    min_accuracy: float | dict[str, float] | None = None
    max_latency_ms: float | None = None
    on_fail: str = "rollback"
    retries: int = 2
    retry_lr_factor: float = 0.5

    def __post_init__(self) -> None:
        if self.on_fail not in ON_FAIL:
            raise SpecError(f"gate.on_fail must be one of {ON_FAIL}, got {self.on_fail!r}")
        for name in ("max_drop", "min_accuracy"):
            v = getattr(self, name)
            for task, x in (v.items() if isinstance(v, dict) else [(None, v)]):
                if x is not None and not 0 <= x <= 1:
                    where = f"gate.{name}" + (f".{task}" if task else "")
                    raise SpecError(f"{where} is an accuracy fraction in [0, 1], got {x!r}")
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise SpecError(f"gate.max_latency_ms must be positive, got {self.max_latency_ms!r}")
        if self.retries < 0:
            raise SpecError(f"gate.retries must be >= 0, got {self.retries!r}")
        if not 0 < self.retry_lr_factor < 1:
            raise SpecError(f"gate.retry_lr_factor must be in (0, 1), got {self.retry_lr_factor!r}")

    @property
    def needs_latency(self) -> bool:
        return self.max_latency_ms is not None

    def limit(self, name: str, task: str) -> float | None:
        v = getattr(self, name)
        return v.get(task) if isinstance(v, dict) else v


def check_gate(gate: GateConfig | None, stage: str, acc: dict[str, float | None],
               parent_acc: dict[str, float | None], own_task: str | None,
               latency_ms: float | None = None) -> list[str]:
    """Reasons the stage fails its gate (empty list: it passes)."""
    if gate is None:
        return []
    reasons = []
    for task, a in acc.items():
        limit, p = gate.limit("max_drop", task), parent_acc.get(task)
        if limit is not None and a is not None and p is not None and p - a > limit + 1e-12:
            reasons.append(f"accuracy on {task} dropped {p - a:.4f} ({p:.4f} -> {a:.4f}) vs the parent, "
                           f"more than max_drop {limit}")
    for task, a in acc.items():
        floor = gate.limit("min_accuracy", task) if isinstance(gate.min_accuracy, dict) else (
            gate.min_accuracy if task == own_task else None)
        if floor is not None and a is not None and a < floor:
            reasons.append(f"accuracy on {task} is {a:.4f}, below min_accuracy {floor}")
    if gate.max_latency_ms is not None and latency_ms is not None and latency_ms > gate.max_latency_ms:
        reasons.append(f"batch-1 p50 latency {latency_ms:.2f} ms is over max_latency_ms {gate.max_latency_ms}")
    return reasons
