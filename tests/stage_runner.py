"""Run stage objects on a model through the real chain executor (a test convenience).

Tests of one stage build it as a Python object (``ExportOnnx()``, ``FineTune(cfg)``); this
wraps them in a ``ChainSpec`` and runs it with ``chain.executor.run_chain``, so every
test exercises the same cache, publishing, evaluation and manifest code as a user's run.
A stage that does not train gets ``task`` (default: SST-2, real sentences) as its task.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chain.artifact import Artifact
from chain.evaluate import EvalConfig
from chain.executor import run_chain
from chain.spec import ChainSpec, StageSpec
from chain.task import Task, builtin_task


@dataclass
class Result:
    name: str
    status: str
    reason: str
    artifact: Artifact | None
    row: dict


def run_stages(source: Artifact | Path, stages: list, out: Path, task: Task | str | None = "sst2",
               eval_samples: int = 64, gate=None) -> list[Result]:
    src = source.path if isinstance(source, Artifact) else Path(source)
    tasks: dict[str, Task] = {}
    if Artifact.load(src).manifest.get("task"):
        task = None  # a fine-tuned artifact: its stages inherit the task it records
    if isinstance(task, str):
        task = builtin_task(task)
    specs = []
    for i, s in enumerate(stages):
        cls = type(s)
        if cls.trains_on_task:
            t = s.config.get_task()
            tasks.setdefault(t.name, t)
            name = t.name
        else:
            name = None
            if task is not None and (s.parent in (None, "source") if i else True):
                tasks.setdefault(task.name, task)
                name = task.name
        specs.append(StageSpec(s.name, cls.type_name, cls, s.config, s.parent, name, gate))
    spec = ChainSpec(name="t", stages=specs, tasks=tasks, model=str(src),
                     eval=EvalConfig(max_samples=eval_samples, threads=1))
    results = run_chain(spec, out, log=lambda msg: None)
    return [Result(r["name"], r["status"], r["reason"], Artifact.load(r["artifact"]) if r["artifact"] else None, r)
            for r in results["stages"]]
