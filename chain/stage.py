"""The ``Stage`` interface: a stage takes a parent artifact and writes a new model.

A stage only writes model files into the directory it is given and returns the fields
its manifest should carry (``format``, ``num_labels``, anything it measured). The
runner owns naming, atomic publishing, the rest of the manifest and evaluation.
"""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .artifact import Artifact


@runtime_checkable
class Stage(Protocol):
    name: str
    config: Any  # a dataclass: recorded in the manifest as the stage's full config
    # Name of the earlier stage whose artifact feeds this one; None = the previous stage.
    parent: str | None

    def run(self, parent: Artifact, out_dir: Path) -> dict:
        """Write the new model into ``out_dir``; return manifest fields."""
        ...


def config_dict(stage: Stage) -> dict:
    cfg = stage.config
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg or {})


def resolve_stage_refs(config: Any, artifacts: dict[str, Artifact]) -> Any:
    """``config`` with a distillation teacher named by stage (``teacher: finetune``) replaced by
    that stage's artifact directory, so a spec can name a teacher whose path (with its
    content hash) is only known once the chain runs. Other configs come back unchanged."""
    from dataclasses import replace

    distill = getattr(config, "distill", None)
    if distill is None or distill.teacher not in artifacts:
        return config
    return replace(config, distill=replace(distill, teacher=str(artifacts[distill.teacher].path)))
