"""The ``kernels`` chain stage: the parent's model, run with chainpress' fused Triton kernels.

The artifact is the parent's Hugging Face weights (hard links) plus ``runtime:
triton-kernels`` and this stage's config in the manifest; the runtime registered here
moves the model to CUDA and calls ``kernels.apply`` on load. This module is kernels'
plugin (the ``chainpress.plugins`` entry point): importing it registers the stage type
and the runtime with chain. Where the kernels cannot run (no CUDA
device, no triton) the manifest carries ``skip_reason`` and bench reports the stage as
``skipped`` with that reason: the interpreter (``TRITON_INTERPRET=1``) is for correctness
tests, and timing it would be meaningless.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chain.artifact import Artifact, link_files
from chain.errors import SpecError
from chain.predict import Predictor, torch_predictor
from chain.registry import register_stage
from chain.runtime import register_runtime
from chain.stage import RunContext, Stage

RUNTIME = "triton-kernels"


@dataclass
class KernelsConfig:
    dtype: str = "float16"  # the model's dtype on the GPU: float16 | bfloat16 | float32
    int8_weights: bool = False  # weight-only int8 GEMMs (per channel) for every encoder linear
    int4_weights: bool = False  # weight-only int4 GEMMs (group-wise)
    group_size: int = 32

    def __post_init__(self) -> None:
        if self.dtype not in ("float16", "bfloat16", "float32"):
            raise SpecError(f"kernels.dtype must be float16, bfloat16 or float32, got {self.dtype!r}")
        if self.int8_weights and self.int4_weights:
            raise SpecError("kernels: choose int8_weights or int4_weights, not both")
        if self.group_size not in (32, 64, 128):
            raise SpecError(f"kernels.group_size must be 32, 64 or 128, got {self.group_size}")


@register_stage("kernels")
@dataclass
class FusedKernels(Stage):
    """The parent's weights run with chainpress' fused Triton kernels (CUDA; skipped elsewhere)."""
    config: KernelsConfig = field(default_factory=KernelsConfig)
    name: str = "kernels"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        from . import available

        if parent.format != "hf":
            raise SpecError(f"stage {self.name!r} needs a Hugging Face parent, got {parent.format} from "
                            f"{parent.path}; set its `parent` to a fine-tune or prune stage")
        from chain.arch import check_stage
        from chain.model import read_config

        check_stage("kernels", read_config(parent.path))  # a model they could never patch: the real reason
        link_files(parent.path, out_dir)
        fields = {"format": "hf", "runtime": RUNTIME, "kernels": asdict(self.config),
                  "num_labels": parent.manifest.get("num_labels")}
        ok, why = available()
        if os.environ.get("TRITON_INTERPRET") == "1":
            ok, why = False, "the Triton interpreter (TRITON_INTERPRET=1) is for correctness tests, not timing"
        if not ok:
            fields["skip_reason"] = f"fused Triton kernels need a CUDA GPU: {why}"
        return fields


def load_patched(model, cfg: dict):
    """``model`` on CUDA in the configured dtype with the fused kernels applied (for bench)."""
    import torch

    from . import apply

    c = KernelsConfig(**cfg)
    model = model.to("cuda", getattr(torch, c.dtype)).eval()
    return apply(model, int8_weights=c.int8_weights, int4_weights=c.int4_weights, group_size=c.group_size)


@register_runtime("hf", RUNTIME)
def kernels_predictor(artifact: Artifact, threads: int, trust_remote_code: bool = False) -> Predictor:
    from chain.model import load_model

    model = load_model(artifact, trust_remote_code=trust_remote_code)
    return torch_predictor(load_patched(model, artifact.manifest.get("kernels", {})), artifact.name,
                           backend="pytorch+triton")
