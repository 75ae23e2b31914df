"""Chain stages wrapping the compression verbs: each one is a thin shell over one verb."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chain.artifact import Artifact
from chain.errors import SpecError
from chain.task import Task, builtin_task

from .onnx_export import OnnxExportConfig, export_onnx
from .onnx_quantize import OrtInt8Config, copy_aux, quantize_onnx_int8
from .torch_int8 import Int8DynamicConfig, save_int8


def validation_texts(parent: Artifact, n: int) -> list[str]:
    """Real inputs for numeric checks: the parent's own task (dev split), else SST-2 dev."""
    task = Task.from_dict(parent.manifest["task"]) if parent.manifest.get("task") else builtin_task("sst2")
    split = "dev" if task.has_split("dev") else "train"
    return task.load(split).texts[:n]


def _require(parent: Artifact, fmt: str, stage: str) -> None:
    if parent.format != fmt:
        raise SpecError(f"stage {stage!r} needs a {fmt} parent, got {parent.format} from {parent.path}; "
                        "set its `parent` to a stage that produces one")


@dataclass
class QuantizeInt8:
    """PyTorch dynamic int8 (fbgemm/x86), weights in chainpress' int8 format."""
    config: Int8DynamicConfig = field(default_factory=Int8DynamicConfig)
    name: str = "int8"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path) -> dict:
        from chain.model import load_model

        _require(parent, "hf", self.name)
        summary = save_int8(load_model(parent), out_dir, self.config)
        copy_aux(parent.path, out_dir)
        return {"format": "torch-int8", "task": parent.manifest.get("task"), **summary}


@dataclass
class ExportOnnx:
    config: OnnxExportConfig = field(default_factory=OnnxExportConfig)
    name: str = "onnx"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path) -> dict:
        _require(parent, "hf", self.name)
        report = export_onnx(parent.path, out_dir, validation_texts(parent, self.config.validation_samples),
                             self.config)
        return {"format": "onnx", "task": parent.manifest.get("task"), **report}


@dataclass
class QuantizeOnnxInt8:
    config: OrtInt8Config = field(default_factory=OrtInt8Config)
    name: str = "onnx-int8"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path) -> dict:
        _require(parent, "onnx", self.name)
        return {"format": "onnx", "task": parent.manifest.get("task"),
                **quantize_onnx_int8(parent.path, out_dir, self.config)}
