"""Run stages in order, publish each artifact atomically, evaluate each one.

A stage that raises is recorded as ``failed`` with its reason and the run goes on:
stages that do not depend on it still run, and nothing already computed is lost.
Stages whose parent failed are ``skipped``.

>>> results = run_stages(Artifact.load(base_dir), [FineTune(...), QuantizeInt8()], "runs/x")
"""
from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from .artifact import MANIFEST, Artifact, staging_dir, write_manifest
from .errors import ChainpressError, SpecError
from .stage import Stage, config_dict, resolve_stage_refs

log = logging.getLogger("chainpress")


@dataclass
class StageResult:
    name: str
    status: str  # "ok" | "failed" | "skipped"
    reason: str = ""
    artifact: Artifact | None = None
    metrics: dict = field(default_factory=dict)
    wall_time_s: float = 0.0


def _check_names(stages: Sequence[Stage]) -> None:
    seen: set[str] = set()
    for s in stages:
        if not s.name or "/" in s.name or s.name.startswith("."):
            raise SpecError(f"stage name {s.name!r} is not a valid directory name")
        if s.name in seen:
            raise SpecError(f"stage name {s.name!r} is used twice; give each stage a unique name")
        if s.parent is not None and s.parent not in seen and s.parent != "source":
            raise SpecError(f"stage {s.name!r}: parent {s.parent!r} is not an earlier stage")
        seen.add(s.name)


def update_metrics(artifact: Artifact, metrics: dict) -> None:
    """Merge metrics into a published artifact's manifest (atomic replace)."""
    artifact.manifest.setdefault("metrics", {}).update(metrics)
    tmp = artifact.path / (MANIFEST + ".part")
    tmp.write_text(json.dumps(artifact.manifest, indent=2, sort_keys=True, default=str))
    os.replace(tmp, artifact.path / MANIFEST)


def run_stages(source: Artifact, stages: Sequence[Stage], out_root: str | os.PathLike,
               evaluate: Callable[[Artifact], dict] | None = None,
               on_result: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    """Execute ``stages`` in order under ``out_root``; return one result per stage."""
    _check_names(stages)
    out_root = Path(out_root)
    done: dict[str, StageResult] = {}
    previous = "source"
    artifacts = {"source": source}
    results = []
    for i, stage in enumerate(stages):
        parent_name = stage.parent or previous
        previous = stage.name
        parent = artifacts.get(parent_name)
        if parent is None:
            res = StageResult(stage.name, "skipped", f"parent stage {parent_name!r} did not produce a model")
        else:
            if is_dataclass(stage) and hasattr(stage, "config"):
                stage = replace(stage, config=resolve_stage_refs(stage.config, artifacts))
            res = _run_one(stage, parent, parent_name, out_root / f"{i:02d}-{stage.name}", evaluate)
            if res.artifact is not None:
                artifacts[stage.name] = res.artifact
        done[stage.name] = res
        results.append(res)
        if on_result:
            on_result(res)
    return results


def _run_one(stage: Stage, parent: Artifact, parent_name: str, dest: Path,
             evaluate: Callable[[Artifact], dict] | None) -> StageResult:
    t0 = time.perf_counter()
    try:
        with staging_dir(dest) as tmp:
            fields = stage.run(parent, tmp) or {}
            fields.setdefault("num_labels", parent.manifest.get("num_labels"))
            write_manifest(tmp, stage=stage.name, parent=str(parent.path), parent_stage=parent_name,
                           stage_type=type(stage).__name__, config=config_dict(stage),
                           wall_time_s=round(time.perf_counter() - t0, 2), **fields)
    except KeyboardInterrupt:
        raise
    except ChainpressError as e:
        return StageResult(stage.name, "failed", str(e), wall_time_s=time.perf_counter() - t0)
    except Exception as e:  # a library failure in one stage must not lose the others
        log.debug("stage %s failed:\n%s", stage.name, traceback.format_exc())
        return StageResult(stage.name, "failed", f"{type(e).__name__}: {e}", wall_time_s=time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    artifact = Artifact.load(dest)
    res = StageResult(stage.name, "ok", artifact=artifact, wall_time_s=wall)
    if evaluate is not None:
        try:
            res.metrics = evaluate(artifact)
            update_metrics(artifact, res.metrics)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            res.status, res.reason = "failed", f"evaluation failed: {type(e).__name__}: {e}"
    return res
