"""Typed results: the status of a stage and the one row shape of every results.json.

``python -m chain run`` and ``python -m bench`` write the same ``StageRecord`` for every
stage, so a row always has the same keys (``accuracy: null`` where nothing was measured);
bench fills the timing fields, a chain run leaves them null.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields


class Status(str, enum.Enum):
    OK = "ok"  # ran and (where gated) passed
    CACHED = "cached"  # ok, reused from an earlier run
    SKIPPED = "skipped"  # cannot run here (hardware), or its parent produced nothing
    FAILED = "failed"  # crashed, or a gate with on_fail: stop fired
    ROLLED_BACK = "rolled_back"  # its gate failed; downstream stages start from its parent

    def __str__(self) -> str:
        return self.value

    @property
    def kept(self) -> bool:
        """The stage's artifact is part of the chain (downstream stages may build on it)."""
        return self in (Status.OK, Status.CACHED)


@dataclass
class StageRecord:
    name: str
    type: str
    status: Status
    reason: str = ""
    task: str | None = None  # the task the stage works on (its own, or inherited from its parent)
    parent: str | None = None
    peer: bool = False  # a bench peer row: what a user gets without chainpress
    cached: bool = False
    key: str | None = None
    artifact: str | None = None
    format: str | None = None
    accuracy: float | None = None  # on `task`, eval split
    accuracy_by_task: dict[str, float | None] = field(default_factory=dict)  # every task of its lineage
    notes: dict[str, str] = field(default_factory=dict)  # why a task's accuracy is null
    gate_accuracy: dict[str, float | None] = field(default_factory=dict)  # on eval.gate_split (dev), gated stages
    parent_accuracy: dict[str, float | None] = field(default_factory=dict)  # the parent's, on the same split
    selection_accuracy: float | None = None  # on `task`, eval.gate_split (dev): what bench's best picks on
    gate: dict | None = None
    gate_latency: dict | None = None  # batch-1 p50 of stage and parent, when a gate has max_latency_ms
    attempts: list[dict] = field(default_factory=list)
    train: dict | None = None
    wall_time_s: float | None = None  # the stage's own run (from its manifest; cached runs cost nothing now)
    size_mb: float | None = None
    examples: int | None = None  # evaluation examples on `task`
    # filled by bench's timing
    backend: str | None = None
    latency_ms: dict | None = None
    throughput: dict | None = None
    speedup: dict | None = None
    speedup_ci95: dict | None = None
    speedup_is_real: bool | None = None
    accuracy_delta_points: float | None = None
    size_ratio: float | None = None
    memory_mb: dict | None = None
    load_s: float | None = None  # model load time in its timing worker
    first_call_ms: float | None = None  # its first batch-1 call (warm-up excluded from the timings)
    timing: dict | None = None
    threads: int | None = None
    samples_ms: dict | None = None
    extra: dict = field(default_factory=dict)  # stage-specific manifest facts a report quotes (why, compile_s)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StageRecord":
        """A record from a row; keys it does not know go into ``extra`` (nothing is dropped)."""
        known = {f.name for f in fields(cls)}
        extra = {**(d.get("extra") or {}), **{k: v for k, v in d.items() if k not in known}}
        return cls(**{**{k: v for k, v in d.items() if k in known}, "status": Status(d["status"]), "extra": extra})


def record_keys() -> list[str]:
    return [f.name for f in fields(StageRecord)]
