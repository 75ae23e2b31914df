"""Chain stages wrapping the compression verbs: each one is a thin shell over one verb.

This is compress' plugin module (the ``chainpress.plugins`` entry point): importing it
registers the stage types below, the ONNX Runtime runtime and the ``torch-int8`` model
format with chain.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from chain.artifact import Artifact
from chain.errors import SpecError
from chain.predict import Predictor
from chain.registry import register_stage
from chain.runtime import register_model_format, register_runtime
from chain.stage import RunContext, Stage
from chain.task import Task

from .onnx_export import OnnxExportConfig, export_onnx
from .onnx_int4 import OrtInt4Config, quantize_onnx_int4
from .onnx_quantize import OrtInt8Config, copy_aux, quantize_onnx_int8
from .onnx_static import OrtStaticInt8Config, quantize_onnx_static_int8
from .prune import PruneConfig, prune_
from .sensitivity import AccuracyAwareConfig, accuracy_aware_quantize_, accuracy_fn
from .sparsity import SparsityConfig, sparsify_, speedup_expected
from .torch_int8 import Int8DynamicConfig, save_int8


@register_runtime("onnx")
def onnx_predictor(artifact: Artifact, threads: int, trust_remote_code: bool = False,
                   output: str | None = None) -> Predictor:
    """``output``: a multi-task graph's ``logits_<task>`` (chain.runtime picks it by task)."""
    from .onnx_export import onnx_logits, ort_session

    sess = ort_session(artifact.path / "model.onnx", threads)
    return Predictor(artifact.name, "onnxruntime", lambda enc: onnx_logits(sess, enc, output))


def carry_heads(parent: Artifact) -> dict:
    """The manifest's list of task outputs, for a stage that rewrites a multi-task graph
    (its quantizer checks every output survived: ``onnx_graph.require_outputs``)."""
    return {"heads": parent.manifest["heads"]} if parent.manifest.get("heads") else {}


@register_model_format("torch-int8")
def _int8_model(artifact: Artifact, trust_remote_code: bool = False):
    from .torch_int8 import load_int8

    return load_int8(artifact)


def validation_texts(ctx: RunContext, stage: str, n: int) -> list[str]:
    """Real inputs for numeric checks: the stage's task (dev split, else train)."""
    task = ctx.require_task(stage, "checks its output numerically on real inputs")
    split = "dev" if task.has_split("dev") else "train"
    return task.load(split).texts[:n]


def calibration_texts(ctx: RunContext, stage: str, n: int, seed: int = 0) -> list[str]:
    """Calibration inputs: a seeded sample of the train split, so checks on dev stay unseen."""
    import random

    texts = ctx.require_task(stage, "calibrates on its task").load("train").texts
    return random.Random(seed).sample(texts, min(n, len(texts)))


def _require(parent: Artifact, fmt: str, stage: str) -> None:
    if parent.format != fmt:
        raise SpecError(f"stage {stage!r} needs a {fmt} parent, got {parent.format} from {parent.path}; "
                        "set its `parent` to a stage that produces one")


@register_stage("quantize_int8")
@dataclass
class QuantizeInt8(Stage):
    """PyTorch dynamic int8 (fbgemm/x86), weights in chainpress' int8 format."""
    output_format: ClassVar[str] = "torch-int8"
    config: Int8DynamicConfig = field(default_factory=Int8DynamicConfig)
    name: str = "int8"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        from chain.model import load_model

        _require(parent, "hf", self.name)
        summary = save_int8(load_model(parent), out_dir, self.config)
        copy_aux(parent.path, out_dir)
        return {"format": "torch-int8", **summary}


@register_stage("export_onnx")
@dataclass
class ExportOnnx(Stage):
    """ONNX export, checked against PyTorch on real sentences of the stage's task."""
    needs_task: ClassVar[bool] = True
    output_format: ClassVar[str] = "onnx"
    config: OnnxExportConfig = field(default_factory=OnnxExportConfig)
    name: str = "onnx"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        _require(parent, "hf", self.name)
        report = export_onnx(parent.path, out_dir, validation_texts(ctx, self.name, self.config.validation_samples),
                             self.config)
        return {"format": "onnx", **report}


@register_stage("quantize_onnx_int8")
@dataclass
class QuantizeOnnxInt8(Stage):
    """ONNX Runtime graph fusions + dynamic int8 MatMuls (optionally 4-bit embeddings)."""
    needs_task: ClassVar[bool] = True
    parent_formats: ClassVar[tuple[str, ...]] = ("onnx",)
    output_format: ClassVar[str] = "onnx"
    config: OrtInt8Config = field(default_factory=OrtInt8Config)
    name: str = "onnx-int8"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        _require(parent, "onnx", self.name)
        return {"format": "onnx", **carry_heads(parent),
                **quantize_onnx_int8(parent.path, out_dir, self.config, validation_texts(ctx, self.name, 32))}


@register_stage("quantize_onnx_int4")
@dataclass
class QuantizeOnnxInt4(Stage):
    """Weight-only int4 (MatMulNBits from chainpress' Int4Weight; 4-bit embeddings)."""
    parent_formats: ClassVar[tuple[str, ...]] = ("onnx",)
    output_format: ClassVar[str] = "onnx"
    config: OrtInt4Config = field(default_factory=OrtInt4Config)
    name: str = "onnx-int4"
    parent: str | None = None

    @classmethod
    def task_needed(cls, config) -> bool:
        return getattr(config, "method", "gptq") == "gptq"  # GPTQ calibrates on the task's train split

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        _require(parent, "onnx", self.name)
        cfg = self.config
        texts = calibration_texts(ctx, self.name, cfg.calibration_samples) if cfg.method == "gptq" else None
        return {"format": "onnx", **carry_heads(parent),
                **quantize_onnx_int4(parent.path, out_dir, cfg, texts)}


@register_stage("quantize_onnx_static_int8")
@dataclass
class QuantizeOnnxStaticInt8(Stage):
    """Calibrated QDQ int8 (activations too), calibrated on the parent's task train split."""
    needs_task: ClassVar[bool] = True
    parent_formats: ClassVar[tuple[str, ...]] = ("onnx",)
    output_format: ClassVar[str] = "onnx"
    config: OrtStaticInt8Config = field(default_factory=OrtStaticInt8Config)
    name: str = "onnx-static-int8"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        _require(parent, "onnx", self.name)
        report = quantize_onnx_static_int8(parent.path, out_dir,
                                           calibration_texts(ctx, self.name, self.config.calibration_samples),
                                           validation_texts(ctx, self.name, 32), self.config)
        return {"format": "onnx", **carry_heads(parent), **report}


def rewrite_hf(parent: Artifact, out_dir: Path, stage: str, transform) -> dict:
    """Load the parent's HF model, change it in place with ``transform(model, tokenizer) ->
    manifest fields``, save it (safetensors) with its tokenizer into ``out_dir``."""
    from chain.model import load_model, load_tokenizer

    _require(parent, "hf", stage)
    model, tok = load_model(parent), load_tokenizer(parent)
    fields = transform(model, tok)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {"format": "hf", **fields}


@register_stage("prune")
@dataclass
class Prune(Stage):
    """Structured pruning (heads, FFN neurons, layers); Taylor importance uses the parent's task."""
    config: PruneConfig = field(default_factory=PruneConfig)
    name: str = "prune"
    parent: str | None = None

    @classmethod
    def task_needed(cls, config: PruneConfig) -> bool:
        return config.importance == "taylor"

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        def prune(model, tok) -> dict:
            before = sum(p.numel() for p in model.parameters())
            task = ctx.require_task(self.name, "ranks by Taylor importance on labelled batches "
                                    "(or use importance: l1)") if self.task_needed(self.config) else None
            return {"prune": prune_(model, self.config, batches=lambda: task_batches(task, tok)),
                    "params_before": before}

        return rewrite_hf(parent, out_dir, self.name, prune)


@register_stage("sparsify")
@dataclass
class Sparsify(Stage):
    """Magnitude or 2:4 zeros in the Linear weights, stored dense: an accuracy cost, no speedup."""
    config: SparsityConfig = field(default_factory=SparsityConfig)
    name: str = "sparsify"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        # speedup_expected / size_saving_expected / why: what the bench report quotes next to the timings
        return rewrite_hf(parent, out_dir, self.name, lambda model, tok: {
            "sparsity": sparsify_(model, self.config), **speedup_expected(self.config.kind, storage="dense")})


@register_stage("quantize_accuracy_aware")
@dataclass
class AccuracyAwareQuantize(Stage):
    """int8 dynamic with the most sensitive Linears kept fp32, chosen on the parent's dev split."""
    needs_task: ClassVar[bool] = True
    output_format: ClassVar[str] = "torch-int8"
    config: AccuracyAwareConfig = field(default_factory=AccuracyAwareConfig)
    name: str = "int8-aa"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        from chain.model import load_model, load_tokenizer

        from .torch_int8 import load_int8

        cfg = self.config
        _require(parent, "hf", self.name)
        if cfg.scheme != "int8":
            raise SpecError(f"stage {self.name!r}: scheme {cfg.scheme!r} has no PyTorch artifact format; the stage "
                            "saves int8 only (call compress.sensitivity.accuracy_aware_quantize_ for int4)")
        task = ctx.require_task(self.name, "measures accuracy layer by layer")
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
        return {"format": "torch-int8", **summary,
                "accuracy_aware": {**report, "dev_examples": len(dev), "saved_metric": saved,
                                   "saved_drop": saved_drop}}


def task_batches(task: Task, tok, batch_size: int = 32, seed: int = 0):
    """Labelled training batches of ``task`` (for importance scores and calibration)."""
    import random

    import torch

    split = task.load("train")
    idx = list(range(len(split)))
    random.Random(seed).shuffle(idx)
    for s in range(0, len(idx), batch_size):
        rows = idx[s:s + batch_size]
        enc = tok([split.texts[i] for i in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
        yield {**enc, "labels": torch.tensor([split.labels[i] for i in rows])}


from . import openvino  # noqa: E402,F401  (registers the OpenVINO runtimes and stages; it imports the helpers above)
