"""NNCF int8 for OpenVINO: post-training int8 of an fp32 ONNX or HF parent (``quantize_openvino_int8``).

Calibrated on the task's train split (``ModelType.TRANSFORMER``), checked against the parent
on dev sentences like the IR export (``compress.openvino``); embedding tables NNCF int8 by
default, or 4-bit groups (``embeddings: int4``) through ``nncf.compress_weights``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from chain.artifact import Artifact
from chain.errors import SpecError
from chain.predict import encode_batches
from chain.registry import register_stage
from chain.stage import RunContext, Stage

from . import openvino as ovx  # as a module: compress.stages imports both, either may be imported first
from .openvino_source import openvino_source
from .stages import calibration_texts, validation_texts


OVERFLOW_FIXES = ("enable", "first_layer_only", "disable")


def resolve_overflow_fix(overflow_fix: str | None) -> str:
    from chain.environment import int8_saturates

    return overflow_fix or ("enable" if int8_saturates() else "first_layer_only")


@dataclass
class OpenVinoInt8Config:
    calibration_samples: int = 300  # NNCF's default subset_size
    preset: str = "mixed"  # NNCF QuantizationPreset: mixed (asymmetric activations) or performance
    fast_bias_correction: bool = True
    # inference hint for the layers NNCF leaves in float; auto = bf16 where the CPU has it: on the
    # AMD EPYC (avx512_bf16) it took the recovered int8 graph from 281 to 316 samples/s at batch 32
    # (docs/results/bench-openvino-2026-12-02-extra.md)
    precision: str = "f32"
    min_agreement: float = 0.95  # argmax agreement vs the parent on dev sentences it decides; below it fails
    validation_samples: int = 64
    max_length: int = 128
    # NNCF's OverflowFix (7-bit weights): "enable", "first_layer_only" (NNCF's default) or
    # "disable"; None = "enable" where u8s8 sums saturate (AVX2 without VNNI: a tiny model's
    # agreement fell to 0.906 there without it), NNCF's default elsewhere
    overflow_fix: str | None = None
    # embedding tables: "int8" (NNCF's per-row int8) or "int4" (``nncf.compress_weights``,
    # asymmetric groups of ``embedding_block`` values along the hidden axis; per row where the
    # hidden size is no multiple of it), as the ONNX Runtime int8 stage's ``embeddings: int4``.
    # On the recovered 0.5/0.6 MiniLM: weights 17.0 -> 11.1 MB, dev 0.8784 -> 0.8807, batch-32
    # throughput 0.984x (AVX-512 EPYC, benchmarks/openvino_int4_embeddings.py,
    # docs/results/bench-2026-12-07-avx512.md section 2).
    embeddings: str = "int8"
    embedding_block: int = 128

    def __post_init__(self) -> None:
        ovx._check_precision(self.precision)
        if self.embeddings not in ("int8", "int4"):
            raise SpecError(f"embeddings must be 'int8' or 'int4', got {self.embeddings!r}")
        if self.embedding_block not in (16, 32, 64, 128, 256):
            raise SpecError(f"embedding_block must be a power of two in 16..256, got {self.embedding_block}")
        if self.overflow_fix not in (None, *OVERFLOW_FIXES):
            raise SpecError(f"overflow_fix must be one of {', '.join(OVERFLOW_FIXES)} or null, "
                            f"got {self.overflow_fix!r}")
        if self.preset not in ("mixed", "performance"):
            raise SpecError(f"preset must be 'mixed' or 'performance', got {self.preset!r}")
        if self.calibration_samples < 1 or self.validation_samples < 1:
            raise SpecError("calibration_samples and validation_samples must be >= 1")
        if not 0 < self.min_agreement <= 1:
            raise SpecError(f"min_agreement must be in (0, 1], got {self.min_agreement}")


def head_patterns(hf_config: dict) -> list[str]:
    """Regexes of the head nodes (every task's copy too: ``/heads/<task>/classifier/Gemm``) in
    a graph read from our ONNX export, which NNCF leaves float like the other quantizers."""
    import re

    from chain.arch import arch_for

    return [f".*/{re.escape(h.replace('.', '/'))}/.*" for h in arch_for(hf_config).head]


def nncf_int8(ov_model, batches: list[dict], cfg: OpenVinoInt8Config, ignored: list[str] = ()):
    """NNCF post-training int8 of ``ov_model`` calibrated on tokenized ``batches``; node names
    matching ``ignored`` (regexes) stay float; embeddings as ``cfg.embeddings`` says."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    names = {n for port in ov_model.inputs for n in port.get_names()}
    data = nncf.Dataset(batches, lambda enc: {k: v for k, v in enc.items() if k in names})
    types = ["Gather"] if cfg.embeddings == "int4" else []  # left float here, 4-bit below
    scope = nncf.IgnoredScope(patterns=list(ignored), types=types, validate=False) if ignored or types else None
    advanced = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix(resolve_overflow_fix(cfg.overflow_fix)))
    out = nncf.quantize(ov_model, data, preset=getattr(nncf.QuantizationPreset, cfg.preset.upper()),
                        model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches),
                        fast_bias_correction=cfg.fast_bias_correction, advanced_parameters=advanced,
                        **({"ignored_scope": scope} if scope else {}))
    return int4_embeddings(out, cfg.embedding_block) if cfg.embeddings == "int4" else out


def _u4_constants(xml: Path) -> int:
    return xml.read_text().count('element_type="u4"')


def embedding_widths(ov_model) -> list[int]:
    """The row width of every embedding table (a Gather reading a 2-D float constant)."""
    widths = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "Gather":
            continue
        table = op.input_value(0).get_node()
        if table.get_type_name() == "Constant" and len(table.get_output_shape(0)) == 2 \
                and table.get_output_element_type(0).is_real():
            widths.append(int(table.get_output_shape(0)[1]))
    return widths


def embedding_group(widths: list[int], block: int) -> int | str:
    """Values per 4-bit group: ``block`` where it divides every table's width, else "row"."""
    return block if all(w % block == 0 for w in widths) else "row"


def int4_embeddings(ov_model, block: int):
    """Every embedding table 4-bit (asymmetric, groups of ``block``; per row if a table's width
    is no multiple of it); MatMuls untouched (NNCF int8 already has them)."""
    import nncf

    widths = embedding_widths(ov_model)
    if not widths:  # nothing to shrink (the int8 stage's manifest then says u4_constants: 0)
        return ov_model
    group = embedding_group(widths, block)
    return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT4_ASYM,
                                 group_size=-1 if group == "row" else group, ratio=1.0,
                                 all_layers=True, ignored_scope=nncf.IgnoredScope(types=["MatMul"], validate=False))


@register_stage("quantize_openvino_int8")
@dataclass
class QuantizeOpenVinoInt8(Stage):
    """NNCF int8 of an fp32 ONNX or HF parent for OpenVINO, calibrated on the task's train split."""
    needs_task: ClassVar[bool] = True
    parent_formats: ClassVar[tuple[str, ...]] = ("onnx", "hf")
    output_format: ClassVar[str] = "openvino"
    config: OpenVinoInt8Config = field(default_factory=OpenVinoInt8Config)
    name: str = "openvino-int8"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        cfg = self.config
        if (skip := ovx._no_bf16(cfg.precision)) is not None:
            return skip
        tok = ovx._tokenizer(parent, ctx.trust_remote_code)
        calib = [enc for _, enc in encode_batches(tok, calibration_texts(ctx, self.name, cfg.calibration_samples),
                                                  1, cfg.max_length)]
        checks = validation_texts(ctx, self.name, cfg.validation_samples)
        with openvino_source(parent, tok, checks, out_dir, ctx.trust_remote_code) as (ov_model, heads):
            # a multi-task graph's heads stay float (every quantizer keeps heads float); a single head: NNCF's choice
            ignored = head_patterns(json.loads((parent.path / "config.json").read_text())) if heads else []
            group = embedding_group(embedding_widths(ov_model), cfg.embedding_block)
            ovx.save_ir(nncf_int8(ov_model, calib, cfg, ignored), out_dir, parent)
        manifest = {"format": "openvino", "openvino": {"xml": ovx.XML, "precision": cfg.precision}, **heads}
        report = ovx._check(parent, out_dir, manifest, checks, ctx, None, cfg.min_agreement, "NNCF int8 model")
        floats = {p: "head (every task's): kept float, nncf IgnoredScope" for p in ignored}
        return {**manifest, "validation": report, "from_format": parent.format, "calibration_samples": len(calib),
                **({"float_layers": floats} if floats else {}),
                "quantization": {"tool": "nncf", "preset": cfg.preset, "model_type": "transformer",
                                 "overflow_fix": resolve_overflow_fix(cfg.overflow_fix),
                                 "embeddings": cfg.embeddings, "u4_constants": _u4_constants(out_dir / ovx.XML),
                                 **({"embedding_group": group} if cfg.embeddings == "int4" else {})}}
