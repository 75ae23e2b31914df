"""Peers on OpenVINO and bfloat16: what a user gets from Intel's tools or one autocast line.

* ``openvino``: optimum-intel's ``OVModelForSequenceClassification.from_pretrained(export=True)``
  of the reference, saved as IR and run at OpenVINO's default precision (bf16 on a CPU
  with AVX512_BF16 or AMX, f32 elsewhere): the issue's ``optimum-cli export openvino``.
* ``openvino-int8``: optimum-intel's documented static int8 recipe, ``OVQuantizer`` with
  ``OVQuantizationConfig()`` (NNCF underneath) calibrated on the task's train sentences
  padded to 128 tokens as its docs do, run at the default precision too.
* ``torch-bf16``: the reference under ``torch.autocast("cpu", dtype=torch.bfloat16)``; its
  artifact is the reference's weights (hard links) plus ``runtime: torch-bf16``.

All three run through ``chain.runtime`` (the OpenVINO IR runtime is compress'), so bench
times them with the same primitive as our rows. A peer that cannot run here (a library
missing, an export that fails) is a ``skipped`` row with the reason, never a crash.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from chain.artifact import Artifact, link_files
from chain.predict import Predictor
from chain.registry import register_stage
from chain.runtime import register_runtime
from chain.stage import RunContext, Stage
from compress.onnx_quantize import copy_aux

from .peers import _require_hf

BF16_RUNTIME = "torch-bf16"
OV_XML = "openvino_model.xml"  # optimum-intel's file name


def _quiet() -> None:
    for name in ("optimum", "nncf", "transformers", "openvino"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _skipped(fmt: str, what: str, e: Exception) -> dict:
    return {"format": fmt, "peer": True, "skip_reason": f"{what} failed on this machine: {type(e).__name__}: "
            f"{str(e)[:300]}"}


@dataclass
class OpenVinoPeerConfig:
    precision: str = "default"  # the inference hint it runs with; default = what a user gets


@register_stage("peer_openvino")
@dataclass
class OpenVinoPeer(Stage):
    """Peer: optimum-intel's OpenVINO export of the parent, at OpenVINO's default precision."""
    peer: ClassVar[bool] = True
    output_format: ClassVar[str] = "openvino"
    config: OpenVinoPeerConfig = field(default_factory=OpenVinoPeerConfig)
    name: str = "openvino"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        _require_hf(parent, self.name)
        _quiet()
        try:
            from optimum.intel import OVModelForSequenceClassification

            model = OVModelForSequenceClassification.from_pretrained(str(parent.path), export=True, compile=False)
            model.save_pretrained(str(out_dir))
        except Exception as e:  # unavailable here: a skipped row with the reason
            return _skipped("openvino", "optimum-intel's OpenVINO export", e)
        copy_aux(parent.path, out_dir)
        return {"format": "openvino", "peer": True, "openvino": {"xml": OV_XML, "precision": self.config.precision},
                "recipe": "OVModelForSequenceClassification.from_pretrained(export=True).save_pretrained()"}


@dataclass
class OpenVinoInt8PeerConfig:
    num_samples: int = 300  # OVQuantizationConfig's calibration subset (NNCF's default)
    max_length: int = 128  # optimum-intel's docs pad calibration text to max_length
    precision: str = "default"
    seed: int = 0


@register_stage("peer_openvino_int8")
@dataclass
class OpenVinoInt8Peer(Stage):
    """Peer: optimum-intel's OVQuantizer static int8 (NNCF) of the parent, calibrated on the train split."""
    peer: ClassVar[bool] = True
    needs_task: ClassVar[bool] = True
    output_format: ClassVar[str] = "openvino"
    config: OpenVinoInt8PeerConfig = field(default_factory=OpenVinoInt8PeerConfig)
    name: str = "openvino-int8"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        _require_hf(parent, self.name)
        _quiet()
        cfg = self.config
        texts = ctx.require_task(self.name, "calibrates on its task").load("train").texts
        texts = random.Random(cfg.seed).sample(texts, min(cfg.num_samples, len(texts)))
        try:
            from datasets import Dataset
            from optimum.intel import OVConfig, OVModelForSequenceClassification, OVQuantizationConfig, OVQuantizer
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(parent.path))
            model = OVModelForSequenceClassification.from_pretrained(str(parent.path), export=True, compile=False)
            enc = tok(texts, padding="max_length", max_length=cfg.max_length, truncation=True)
            # only the graph's inputs: a BERT tokenizer beside RoBERTa emits token_type_ids, which
            # the export drops ("Port for tensor name token_type_ids was not found")
            data = Dataset.from_dict({k: v for k, v in enc.items() if k in model.input_names})
            OVQuantizer.from_pretrained(model).quantize(
                calibration_dataset=data, save_directory=str(out_dir),
                ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(texts))))
        except Exception as e:
            return _skipped("openvino", "optimum-intel's OVQuantizer int8", e)
        copy_aux(parent.path, out_dir)
        return {"format": "openvino", "peer": True, "openvino": {"xml": OV_XML, "precision": cfg.precision},
                "calibration_samples": len(texts),
                "recipe": "OVQuantizer.quantize(OVConfig(quantization_config=OVQuantizationConfig()))"}


def bf16_model(model):
    """``model`` whose forward runs under CPU bfloat16 autocast (logits come back as float)."""
    import torch

    forward = model.forward

    def run(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(*args, **kwargs)

    model.forward = run
    return model


@register_runtime("hf", BF16_RUNTIME)
def bf16_predictor(artifact: Artifact, threads: int, trust_remote_code: bool = False) -> Predictor:
    import torch

    from chain.model import load_model
    from chain.predict import torch_predictor

    torch.set_num_threads(threads)
    model = bf16_model(load_model(artifact, trust_remote_code=trust_remote_code).eval())
    return torch_predictor(model, artifact.name, backend="pytorch+bf16")


@dataclass
class TorchBf16Config:
    # Where the CPU has no native bf16 (AVX512_BF16/AMX) autocast emulates it: on an AVX2-only
    # EPYC it ran at 11 samples/s against fp32's 80 and took most of a 33-minute default bench
    # (docs/results/bench-2026-12-02-avx2.md). No user would pick it, so it is skipped unless asked.
    emulated: bool = False


@register_stage("peer_torch_bf16")
@dataclass
class TorchBf16Peer(Stage):
    """Peer: the parent under torch.autocast('cpu', dtype=torch.bfloat16)."""
    peer: ClassVar[bool] = True
    config: TorchBf16Config = field(default_factory=TorchBf16Config)
    name: str = "torch-bf16"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        """Link the parent's files; run one real sentence under autocast to learn whether it works here."""
        import torch

        from chain.environment import native_bf16
        from chain.model import load_model, load_tokenizer

        _require_hf(parent, self.name)
        link_files(parent.path, out_dir)
        fields = {"format": "hf", "runtime": BF16_RUNTIME, "peer": True, "num_labels": parent.manifest.get("num_labels"),
                  "cpu_native_bf16": native_bf16()}
        if not fields["cpu_native_bf16"] and not self.config.emulated:
            fields["skip_reason"] = ("this CPU has no native bf16 (AVX512_BF16 or AMX): autocast would emulate it, "
                                     "several times slower than fp32; set emulated: true to time it anyway")
            return fields
        try:
            enc = load_tokenizer(parent)(["a probe sentence for bfloat16"], return_tensors="pt")
            with torch.inference_mode():
                bf16_model(load_model(parent).eval())(**enc)
        except Exception as e:
            fields["skip_reason"] = f"torch bf16 autocast failed on this machine: {type(e).__name__}: {str(e)[:300]}"
        return fields
