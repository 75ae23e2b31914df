"""The stage protocol: what a stage is, what it declares, what it is given to run.

A stage type is a dataclass with ``config`` (a typed config dataclass), ``name`` and
``parent`` fields, subclassing ``Stage`` and registered with
``@chain.registry.register_stage("type")``. It declares its capabilities as class
attributes instead of the executor guessing them from attribute names:

* ``trains_on_task``: a spec must give it ``task:``; decontamination and the baseline
  replay apply to it; it brings its own head.
* ``needs_task``: it calibrates or measures on a task (its own ``task:``, else its
  parent's); a chain where it has none is a spec error.
* ``parent_formats`` / ``output_format``: artifact formats it reads and writes
  (``chain validate`` checks every parent link before anything trains).
* ``refs``: dotted config fields that may name an earlier stage (a distillation
  teacher); resolved to that stage's artifact at run time, in the cache key by content.
* ``retry_field``: what a gate's ``on_fail: retry`` scales (None: no retry possible).
* ``not_in_key``: config fields that cannot change the result (progress bars);
  ``key_config(config)``: ``auto`` settings as this machine resolves them, for the key.
* ``peer``: a bench row showing what a user gets without chainpress.

``run(parent, out_dir, ctx)`` writes the model into ``out_dir`` and returns the fields
its manifest should carry; the executor owns naming, publishing, the rest of the
manifest and evaluation.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from .artifact import Artifact
from .task import Task

log = logging.getLogger("chainpress")


@dataclass
class RunContext:
    """What a stage may use from the run it is part of (never set as attributes from outside)."""
    threads: int | None = None  # intra-op threads; None = the library's default
    device: str = "cpu"
    trust_remote_code: bool = False
    task: Task | None = None  # the stage's task: its own ``task:``, else its parent's
    log: Callable[[str], None] = field(default=lambda msg: log.info(msg))
    verbose: bool = False  # -v: library logs, Trainer's raw log lines
    quiet: bool = False  # -q: no progress bars

    def require_task(self, stage: str, why: str) -> Task:
        from .errors import SpecError

        if self.task is None:
            raise SpecError(f"stage {stage!r} {why} and no task is known: give the stage `task:` or put it after "
                            "a fine-tune stage")
        return self.task


class Stage:
    type_name: ClassVar[str] = ""  # set by register_stage
    trains_on_task: ClassVar[bool] = False
    needs_task: ClassVar[bool] = False
    parent_formats: ClassVar[tuple[str, ...]] = ("hf",)
    output_format: ClassVar[str] = "hf"
    refs: ClassVar[tuple[str, ...]] = ()
    retry_field: ClassVar[str | None] = None
    not_in_key: ClassVar[tuple[str, ...]] = ()
    peer: ClassVar[bool] = False

    name: str
    parent: str | None
    config: Any

    @classmethod
    def output_format_for(cls, parent_format: str) -> str:
        """The format this stage makes from a parent of ``parent_format``."""
        return cls.output_format

    @classmethod
    def key_config(cls, config):
        """``config`` as it enters the cache key: a setting this machine decides (``auto``)
        enters as what it resolved to here, so another machine's cache is not reused for it."""
        return config

    @classmethod
    def task_needed(cls, config) -> bool:
        """Whether this configuration calibrates or measures on a task (default: ``needs_task``)."""
        return cls.needs_task

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:  # pragma: no cover - protocol
        raise NotImplementedError


def config_dict(config) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})


def get_ref(config, path: str):
    obj = config
    for part in path.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    return obj


def set_ref(config, path: str, value):
    """``config`` with the dotted field ``path`` replaced (nested dataclasses copied, not mutated)."""
    head, _, rest = path.partition(".")
    inner = getattr(config, head)
    return dataclasses.replace(config, **{head: set_ref(inner, rest, value) if rest else value})


def resolve_refs(stage_cls: type, config, artifacts: dict[str, Artifact]):
    """``config`` with every field in ``stage_cls.refs`` that names an earlier stage replaced by
    that stage's artifact directory (known only once the chain runs, key included)."""
    for path in getattr(stage_cls, "refs", ()):
        value = get_ref(config, path)
        if isinstance(value, str) and value in artifacts:
            config = set_ref(config, path, str(artifacts[value].path))
    return config
