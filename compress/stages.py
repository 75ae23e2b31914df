"""Chain stages wrapping the compression verbs: each one is a thin shell over one verb."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chain.artifact import Artifact
from chain.errors import SpecError
from chain.task import Task, builtin_task

from .onnx_export import OnnxExportConfig, export_onnx
from .onnx_int4 import OrtInt4Config, quantize_onnx_int4
from .onnx_quantize import OrtInt8Config, copy_aux, quantize_onnx_int8
from .prune import PruneConfig, prune_
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
                **quantize_onnx_int8(parent.path, out_dir, self.config, validation_texts(parent, 32))}


@dataclass
class QuantizeOnnxInt4:
    """Weight-only int4 (MatMulNBits from chainpress' Int4Weight; 4-bit embeddings)."""
    config: OrtInt4Config = field(default_factory=OrtInt4Config)
    name: str = "onnx-int4"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path) -> dict:
        _require(parent, "onnx", self.name)
        return {"format": "onnx", "task": parent.manifest.get("task"),
                **quantize_onnx_int4(parent.path, out_dir, self.config)}


@dataclass
class Prune:
    """Structured pruning (heads, FFN neurons, layers); Taylor importance uses the parent's task."""
    config: PruneConfig = field(default_factory=PruneConfig)
    name: str = "prune"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path) -> dict:
        from chain.model import load_model, load_tokenizer

        _require(parent, "hf", self.name)
        model, tok = load_model(parent), load_tokenizer(parent)
        before = sum(p.numel() for p in model.parameters())
        report = prune_(model, self.config, batches=lambda: task_batches(parent, tok))
        model.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
        return {"format": "hf", "task": parent.manifest.get("task"), "prune": report, "params_before": before}


def task_batches(parent: Artifact, tok, batch_size: int = 32, seed: int = 0):
    """Labelled training batches of the parent's task (for importance scores and calibration)."""
    import random

    import torch

    if not parent.manifest.get("task"):
        raise SpecError(f"{parent.path} records no task; Taylor importance needs one (use importance: l1)")
    split = Task.from_dict(parent.manifest["task"]).load("train")
    idx = list(range(len(split)))
    random.Random(seed).shuffle(idx)
    for s in range(0, len(idx), batch_size):
        rows = idx[s:s + batch_size]
        enc = tok([split.texts[i] for i in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
        yield {**enc, "labels": torch.tensor([split.labels[i] for i in rows])}
