"""Peers: what a user would get without chainpress, measured as rows of the same run.

* ``torch-compile``: the reference model under ``torch.compile`` (inductor). The artifact
  is the reference's weights (hard links) plus ``runtime: torch.compile`` in the manifest;
  its runtime (registered here) compiles on load, and the timing warm-up absorbs the
  compile. If compiling fails here (no C++ compiler, unsupported op), the row is
  ``skipped`` with the reason.
* ``optimum-int8``: Optimum's documented recipe: ``ORTModelForSequenceClassification``
  export, ``ORTOptimizer`` (O2), then dynamic int8 with ``ORTQuantizer`` and
  ``AutoQuantizationConfig.avx2(is_static=False)``. On MiniLM this fails ("Unable to find
  data type for weight_name": the fused nodes lose type info), and that failure is the
  honest row.
* ``optimum-int8-noopt``: the variant Optimum does support: the same quantizer on the
  un-optimized export.

Peer stages declare ``peer = True``: their rows carry ``"peer": true``, a failed peer does
not make the run exit 1, and ``python -m bench compare`` does not gate them unless asked,
because our changes cannot regress other people's tools. Each peer is a stage type a spec
names (``type: peer_torch_compile``), so the default chain lists them like its own stages.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from typing import ClassVar

from chain.artifact import Artifact, link_files
from chain.errors import SpecError
from chain.predict import Predictor, torch_predictor
from chain.registry import register_stage
from chain.runtime import register_runtime
from chain.stage import RunContext, Stage
from compress.onnx_quantize import copy_aux

COMPILE_RUNTIME = "torch.compile"


def _require_hf(parent: Artifact, stage: str) -> None:
    if parent.format != "hf":
        raise SpecError(f"peer {stage!r} needs a Hugging Face parent, got {parent.format} from {parent.path}")


@dataclass
class TorchCompileConfig:
    backend: str = "inductor"
    mode: str | None = None  # torch.compile's mode; None = default
    dynamic: bool = True  # one graph for every sequence length: no recompiles while timing


def compile_model(model, cfg: TorchCompileConfig):
    import torch

    return torch.compile(model, backend=cfg.backend, mode=cfg.mode, dynamic=cfg.dynamic)


@register_runtime("hf", COMPILE_RUNTIME)
def compiled_predictor(artifact: Artifact, threads: int, trust_remote_code: bool = False) -> Predictor:
    import torch

    from chain.model import load_model

    torch.set_num_threads(threads)
    model = load_model(artifact, trust_remote_code=trust_remote_code).eval()
    model = compile_model(model, TorchCompileConfig(**artifact.manifest.get("compile", {})))
    return torch_predictor(model, artifact.name, backend="pytorch+compile")


@register_stage("peer_torch_compile")
@dataclass
class TorchCompilePeer(Stage):
    """Peer: the parent under torch.compile (inductor), compiled on load."""
    peer: ClassVar[bool] = True
    config: TorchCompileConfig = field(default_factory=TorchCompileConfig)
    name: str = "torch-compile"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        """Link the parent's files; compile once on a real sentence to learn whether it works here."""
        import torch

        from chain.model import load_model, load_tokenizer

        _require_hf(parent, self.name)
        link_files(parent.path, out_dir)  # same bytes, no copy of the weights
        fields = {"format": "hf", "runtime": COMPILE_RUNTIME, "compile": asdict(self.config), "peer": True,
                  "num_labels": parent.manifest.get("num_labels")}
        enc = load_tokenizer(parent)(["a probe sentence to compile on"], return_tensors="pt")
        t0 = time.perf_counter()
        try:
            compiled = compile_model(load_model(parent), self.config)
            with torch.inference_mode():
                compiled(**enc)
        except Exception as e:  # any compiler failure means "unavailable here", recorded, not raised
            fields["skip_reason"] = f"torch.compile failed on this machine: {type(e).__name__}: {str(e)[:300]}"
        else:
            fields["compile_s"] = round(time.perf_counter() - t0, 1)  # cold compile, batch 1
        return fields


@dataclass
class OptimumInt8Config:
    optimization_level: int | None = 2  # ORTOptimizer level; None = quantize the plain export
    per_channel: bool = False  # AutoQuantizationConfig.avx2's default

    def __post_init__(self) -> None:
        if self.optimization_level not in (None, 1, 2, 99):
            raise ValueError(f"optimization_level must be None, 1, 2 or 99, got {self.optimization_level}")


@register_stage("peer_optimum_int8")
@dataclass
class OptimumInt8Peer(Stage):
    """Peer: Optimum's export -> ORTOptimizer -> ORTQuantizer dynamic int8 recipe."""
    peer: ClassVar[bool] = True
    output_format: ClassVar[str] = "onnx"
    config: OptimumInt8Config = field(default_factory=OptimumInt8Config)
    name: str = "optimum-int8"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer, ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig, OptimizationConfig

        _require_hf(parent, self.name)
        work = out_dir / "_optimum"
        model = ORTModelForSequenceClassification.from_pretrained(parent.path, export=True)
        model.save_pretrained(work / "export")
        src = work / "export"
        if self.config.optimization_level is not None:
            ORTOptimizer.from_pretrained(model).optimize(
                OptimizationConfig(optimization_level=self.config.optimization_level), save_dir=work / "optimized")
            src = work / "optimized"
        qcfg = AutoQuantizationConfig.avx2(is_static=False, per_channel=self.config.per_channel)
        ORTQuantizer.from_pretrained(src).quantize(qcfg, save_dir=work / "quantized")
        (quantized,) = (work / "quantized").glob("*.onnx")
        os.replace(quantized, out_dir / "model.onnx")
        shutil.rmtree(work)
        copy_aux(parent.path, out_dir)
        recipe = (f"ORTModelForSequenceClassification(export=True) -> "
                  + (f"ORTOptimizer(O{self.config.optimization_level}) -> " if self.config.optimization_level else "")
                  + "ORTQuantizer(AutoQuantizationConfig.avx2(is_static=False))")
        return {"format": "onnx", "peer": True, "recipe": recipe}
