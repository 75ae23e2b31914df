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
from .onnx_static import OrtStaticInt8Config, quantize_onnx_static_int8
from .prune import PruneConfig, prune_
from .sensitivity import AccuracyAwareConfig, accuracy_aware_quantize_, accuracy_fn
from .sparsity import SparsityConfig, sparsify_, speedup_expected
from .torch_int8 import Int8DynamicConfig, save_int8


# Stage types a chain spec can name beyond chain.registry.BUILTIN (read by chain.registry).
STAGE_TYPES = {
    "prune": "compress.stages:Prune",
    "quantize_onnx_int4": "compress.stages:QuantizeOnnxInt4",
    "quantize_onnx_static_int8": "compress.stages:QuantizeOnnxStaticInt8",
    "sparsify": "compress.stages:Sparsify",
    "quantize_accuracy_aware": "compress.stages:AccuracyAwareQuantize",
}


def _task_or_sst2(parent: Artifact) -> Task:
    """The task the parent was trained on (its manifest), else SST-2: real sentences either way."""
    return Task.from_dict(parent.manifest["task"]) if parent.manifest.get("task") else builtin_task("sst2")


def validation_texts(parent: Artifact, n: int) -> list[str]:
    """Real inputs for numeric checks: the parent's own task (dev split), else SST-2 dev."""
    task = _task_or_sst2(parent)
    split = "dev" if task.has_split("dev") else "train"
    return task.load(split).texts[:n]


def calibration_texts(parent: Artifact, n: int, seed: int = 0) -> list[str]:
    """Calibration inputs: a seeded sample of the train split, so checks on dev stay unseen."""
    import random

    texts = _task_or_sst2(parent).load("train").texts
    return random.Random(seed).sample(texts, min(n, len(texts)))


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
class QuantizeOnnxStaticInt8:
    """Calibrated QDQ int8 (activations too), calibrated on the parent's task train split."""
    config: OrtStaticInt8Config = field(default_factory=OrtStaticInt8Config)
    name: str = "onnx-static-int8"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path) -> dict:
        _require(parent, "onnx", self.name)
        report = quantize_onnx_static_int8(parent.path, out_dir,
                                           calibration_texts(parent, self.config.calibration_samples),
                                           validation_texts(parent, 32), self.config)
        return {"format": "onnx", "task": parent.manifest.get("task"), **report}


def rewrite_hf(parent: Artifact, out_dir: Path, stage: str, transform) -> dict:
    """Load the parent's HF model, change it in place with ``transform(model, tokenizer) ->
    manifest fields``, save it (safetensors) with its tokenizer into ``out_dir``."""
    from chain.model import load_model, load_tokenizer

    _require(parent, "hf", stage)
    model, tok = load_model(parent), load_tokenizer(parent)
    fields = transform(model, tok)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {"format": "hf", "task": parent.manifest.get("task"), **fields}


@dataclass
class Prune:
    """Structured pruning (heads, FFN neurons, layers); Taylor importance uses the parent's task."""
    config: PruneConfig = field(default_factory=PruneConfig)
    name: str = "prune"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path) -> dict:
        def prune(model, tok) -> dict:
            before = sum(p.numel() for p in model.parameters())
            return {"prune": prune_(model, self.config, batches=lambda: task_batches(parent, tok)),
                    "params_before": before}

        return rewrite_hf(parent, out_dir, self.name, prune)


@dataclass
class Sparsify:
    """Magnitude or 2:4 zeros in the Linear weights, stored dense: an accuracy cost, no speedup."""
    config: SparsityConfig = field(default_factory=SparsityConfig)
    name: str = "sparsify"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path) -> dict:
        # speedup_expected / size_saving_expected / why: what the bench report quotes next to the timings
        return rewrite_hf(parent, out_dir, self.name, lambda model, tok: {
            "sparsity": sparsify_(model, self.config), **speedup_expected(self.config.kind, storage="dense")})


@dataclass
class AccuracyAwareQuantize:
    """int8 dynamic with the most sensitive Linears kept fp32, chosen on the parent's dev split."""
    config: AccuracyAwareConfig = field(default_factory=AccuracyAwareConfig)
    name: str = "int8-aa"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path) -> dict:
        from chain.model import load_model, load_tokenizer

        from .torch_int8 import load_int8

        cfg = self.config
        _require(parent, "hf", self.name)
        if cfg.scheme != "int8":
            raise SpecError(f"stage {self.name!r}: scheme {cfg.scheme!r} has no PyTorch artifact format; the stage "
                            "saves int8 only (call compress.sensitivity.accuracy_aware_quantize_ for int4)")
        if not parent.manifest.get("task"):
            raise SpecError(f"stage {self.name!r}: {parent.path} records no task to measure accuracy on; "
                            "put a finetune stage before it")
        task = Task.from_dict(parent.manifest["task"])
        if not task.has_split("dev"):
            raise SpecError(f"stage {self.name!r}: task {task.name!r} has no dev split; choosing layers on test "
                            "would leak into the gates' measurement; give the task a dev file or a holdout")
        dev = task.load("dev")
        dev = dev.head(cfg.eval_samples) if cfg.eval_samples else dev
        eval_fn = accuracy_fn(load_tokenizer(parent), dev.texts, dev.labels)
        report = accuracy_aware_quantize_(load_model(parent), cfg, eval_fn)
        # Save from a fresh fp32 copy: save_int8 quantizes with the same codes as quantize_.
        summary = save_int8(load_model(parent), out_dir,
                            Int8DynamicConfig(skip=cfg.skip + tuple(report["kept_fp32"]), embeddings=cfg.embeddings))
        copy_aux(parent.path, out_dir)
        saved = eval_fn(load_int8(Artifact(out_dir, {"format": "torch-int8"})))
        saved_drop = report["baseline"] - saved
        if saved_drop > cfg.budget:
            raise SpecError(f"stage {self.name!r}: the saved model drops {saved_drop:.4f} on dev "
                            f"(budget {cfg.budget}); "
                            "raise budget or max_kept, or set embeddings: [] to keep embeddings fp32")
        return {"format": "torch-int8", "task": parent.manifest.get("task"), **summary,
                "accuracy_aware": {**report, "dev_examples": len(dev), "saved_metric": saved,
                                   "saved_drop": saved_drop}}


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
