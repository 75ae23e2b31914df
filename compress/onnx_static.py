"""Static (calibrated) ONNX Runtime int8 in QDQ format: activations and weights both int8.

Unlike ``onnx_quantize`` (dynamic: activation ranges computed at run time on every call),
activation ranges are fixed once from calibration batches of real task sentences.

Fusions: the graph gets the same onnxruntime.transformers fusions as the dynamic path
(SkipLayerNormalization, BiasGelu) *except* ``Attention``: QDQ has no quantizer for
that op, so on a fully fused tiny BERT (ORT 1.32) the two Attention nodes kept Q/K/V,
6 of its 12 encoder weight matrices, in fp32. If quantizing the fused graph raises, or its logits fall below
``min_sqnr_db``, the unfused graph is quantized instead and the report says why.

Calibration batches are padded to one fixed length: the entropy and percentile
calibrators stack every batch's activations into one array and fail on ragged shapes.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chain.errors import ExportValidationError, SpecError

from chain.arch import arch_for
from .onnx_quantize import attention_shape, check_fused_graph, copy_aux, optimize_graph, resolve_reduce_range

CALIBRATIONS = ("minmax", "entropy", "percentile")


@dataclass
class OrtStaticInt8Config:
    per_channel: bool = True
    calibration: str = "minmax"  # "minmax" | "entropy" | "percentile"
    calibration_samples: int = 128  # sentences from the task's train split
    percentile: float = 99.999  # used by calibration: percentile
    batch_size: int = 8
    max_length: int = 128
    reduce_range: bool | None = None  # 7-bit weights; None: on AVX2 CPUs without VNNI (see OrtInt8Config)
    optimize_level: int | None = 2  # fusions (no Attention fusion, see module doc); None = off
    op_types: tuple[str, ...] = ("MatMul", "Gather")  # Gather: the embedding tables
    min_sqnr_db: float = 15.0  # logits SQNR vs the fp32 graph below this is a failed quantization

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise SpecError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        for name in ("calibration_samples", "batch_size", "max_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise SpecError(f"{name} must be a positive integer, got {v!r}")
        if not 0 < self.percentile <= 100:
            raise SpecError(f"percentile must be in (0, 100], got {self.percentile!r}")
        if self.optimize_level not in (None, 0, 1, 2):
            raise SpecError(f"optimize_level must be null, 0, 1 or 2, got {self.optimize_level!r}")
        self.op_types = tuple(self.op_types)
        if not self.op_types:
            raise SpecError("op_types must name at least one ONNX op type (e.g. MatMul)")


def calibration_batches(tokenizer, texts: list[str], input_names: set[str], cfg: OrtStaticInt8Config) -> list[dict]:
    """int64 feeds, every batch padded to the longest calibration sentence (one fixed shape)."""
    if not texts:
        raise SpecError("static quantization needs calibration sentences; the task gave none")
    longest = max(len(ids) for ids in tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"])
    out = []
    for i in range(0, len(texts), cfg.batch_size):
        enc = tokenizer(texts[i:i + cfg.batch_size], padding="max_length", truncation=True, max_length=longest,
                        return_tensors="np")
        out.append({k: v.astype(np.int64) for k, v in enc.items() if k in input_names})  # (B, longest)
    return out


def _reader(batches: list[dict]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            return next(self._it, None)

    return Reader()


@contextlib.contextmanager
def _quiet():
    """ORT prints histogram progress and logs a pre-processing hint on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _quantize(src: Path, dst: Path, batches: list[dict], cfg: OrtStaticInt8Config) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if cfg.calibration == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    with _quiet():
        # u8 activations / s8 weights: ORT's recommended pair for x86 CPUs
        quantize_static(str(src), str(dst), _reader(batches), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(cfg.op_types), per_channel=cfg.per_channel,
                        reduce_range=resolve_reduce_range(cfg.reduce_range), activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method, extra_options=extra)


def logits_sqnr(reference: Path, candidate: Path, tokenizer, texts: list[str]) -> tuple[float, float]:
    """(SQNR in dB, argmax agreement) of ``candidate``'s logits against ``reference``'s."""
    import torch

    from .formats import sqnr_db
    from .onnx_export import onnx_logits, ort_session

    a, b = ort_session(reference), ort_session(candidate)
    ra, rb = [], []
    for i in range(0, len(texts), 8):
        enc = dict(tokenizer(texts[i:i + 8], padding=True, truncation=True, max_length=128, return_tensors="np"))
        ra.append(onnx_logits(a, enc))
        rb.append(onnx_logits(b, enc))
    ref, got = np.concatenate(ra), np.concatenate(rb)
    return (sqnr_db(torch.from_numpy(ref), torch.from_numpy(got)),
            float((ref.argmax(-1) == got.argmax(-1)).mean()))


def quantized_weight_fraction(path: Path) -> float:
    """Share of 2-D+ weight elements stored as int8 (what the static pass actually covered)."""
    import onnx
    from onnx import TensorProto

    q = f = 0
    for init in onnx.load(str(path)).graph.initializer:
        n = int(np.prod(init.dims))
        if init.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(init.dims) >= 2:
            q += n
        elif init.data_type == TensorProto.FLOAT and len(init.dims) >= 2:
            f += n
    return q / max(q + f, 1)


def quantize_onnx_static_int8(src_dir: Path, out_dir: Path, calib_texts: list[str], check_texts: list[str],
                              config: OrtStaticInt8Config = OrtStaticInt8Config()) -> dict:
    """Fuse (optional), calibrate on ``calib_texts``, QDQ-quantize; check on ``check_texts``."""
    import onnx
    from transformers import AutoTokenizer

    from .onnx_export import ort_session

    if not check_texts:
        raise ExportValidationError("static int8 needs check sentences to compare against fp32")
    src, dst = src_dir / "model.onnx", out_dir / "model.onnx"
    tok = AutoTokenizer.from_pretrained(src_dir)
    batches = calibration_batches(tok, calib_texts, {i.name for i in ort_session(src).get_inputs()}, config)
    report: dict = {"calibration": config.calibration, "calibration_samples": len(calib_texts),
                    "reduce_range": resolve_reduce_range(config.reduce_range),
                    "calibration_length": int(next(iter(batches[0].values())).shape[1])}
    graph, fallback = "unfused", None
    hf_config = json.loads((src_dir / "config.json").read_text())
    fusion = arch_for(hf_config).ort_fusion  # the architecture's optimizer model_type, None = no fusion
    if config.optimize_level and fusion:
        fused = out_dir / "_fused.onnx"
        optimize_graph(src, fused, config.optimize_level, *attention_shape(hf_config), attention=False,
                       model_type=fusion)
        report["fusion_max_abs_diff"] = check_fused_graph(src, fused, src_dir, check_texts)
        try:
            _quantize(fused, dst, batches, config)
            sqnr, _ = logits_sqnr(src, dst, tok, check_texts)
            if sqnr >= config.min_sqnr_db:
                graph = "fused (no Attention fusion)"
            else:
                fallback = f"fused graph quantized to {sqnr:.1f} dB < min_sqnr_db {config.min_sqnr_db}"
        except Exception as e:  # ORT quantizer bugs on contrib ops: recorded, then the unfused graph
            fallback = f"quantizing the fused graph failed: {type(e).__name__}: {e}"
        fused.unlink(missing_ok=True)
    if graph == "unfused":
        _quantize(src, dst, batches, config)
    sqnr, agree = logits_sqnr(src, dst, tok, check_texts)
    if sqnr < config.min_sqnr_db:
        raise ExportValidationError(f"static int8 logits are {sqnr:.1f} dB from fp32 (< min_sqnr_db "
                                    f"{config.min_sqnr_db}); try calibration: entropy or percentile, more "
                                    "calibration_samples, or op_types: [MatMul]")
    copy_aux(src_dir, out_dir)
    from .onnx_graph import require_outputs

    require_outputs(onnx.load(str(src), load_external_data=False).graph,
                    onnx.load(str(dst), load_external_data=False).graph, "quantize_onnx_static_int8")
    ops = sorted({n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node})
    return {**report, "graph": graph, "fallback_reason": fallback, "sqnr_db": round(sqnr, 2),
            "argmax_agreement": agree, "quantized_weight_fraction": round(quantized_weight_fraction(dst), 4),
            "onnx_ops": ops}
