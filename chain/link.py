"""``use_model``: a model that is already fine-tuned, taken as it is.

The first stage of a chain that compresses a user's own fine-tuned model (``python -m
bench --model DIR --finetuned``): no training; the model's files are linked, its task is
the stage's ``task:``, and the row is evaluated and timed like any other, so it can be
the reference the compressed rows are measured against. A Hugging Face directory (as a
plain ``Trainer`` script saves it) or an ONNX directory (as ``optimum-cli export onnx``
writes it) is accepted; its label names must be the task's, in the task's order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .artifact import Artifact, link_files
from .errors import SpecError
from .model import read_config
from .registry import register_stage
from .stage import RunContext, Stage


@dataclass
class UseModelConfig:
    pass


def model_label_names(config: dict) -> list[str] | None:
    """The label names a model config carries in id order; None when they are Hugging Face's
    placeholders (``LABEL_0``...)."""
    id2label = config.get("id2label") or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]
    return None if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names


@register_stage("use_model")
@dataclass
class UseModel(Stage):
    """The parent as it is (an already fine-tuned model): evaluated, timed, built on; no training."""
    needs_task: ClassVar[bool] = True
    parent_formats: ClassVar[tuple[str, ...]] = ("hf", "onnx")
    config: UseModelConfig = field(default_factory=UseModelConfig)
    name: str = "model"
    parent: str | None = None

    @classmethod
    def output_format_for(cls, parent_format: str) -> str:
        return parent_format

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        task = ctx.require_task(self.name, "evaluates the model on its task")
        cfg = read_config(parent.path)
        # save_pretrained writes neither id2label nor num_labels for transformers' default of 2
        n = len(cfg.get("id2label") or {}) or cfg.get("num_labels") or 2
        if n != task.num_labels:
            raise SpecError(f"stage {self.name!r}: the model has {n} labels, task {task.name!r} has "
                            f"{task.num_labels}; give the task the model was fine-tuned on")
        names, want = model_label_names(cfg), task.label_names()
        if names and want and [x.casefold() for x in names] != [x.casefold() for x in want]:
            raise SpecError(f"stage {self.name!r}: the model's labels are {names} (in id order) but task "
                            f"{task.name!r} has {want}; give the task `labels: {names}`")
        link_files(parent.path, out_dir)
        return {"format": parent.format, "num_labels": n, "task": task.to_dict(), "used_as_is": str(parent.path)}
