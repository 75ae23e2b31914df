"""OpenVINO: a runtime for our ONNX graphs, an IR artifact format, and NNCF int8.

Why a second CPU runtime: on CPUs with AVX-512 VNNI/bf16 or AMX, OpenVINO's kernels beat
ONNX Runtime's int8 path at batch 32 (issue 12), so the fastest output of a chain depends
on the runtime as much as on the compression. Everything here is timed by bench's one
primitive through ``chain.runtime``, like every other runtime.

* runtimes: ``onnx`` artifacts run on OpenVINO with ``runtime: openvino`` (f32 hint) or
  ``openvino-bf16``; the ``openvino`` format (IR ``.xml``/``.bin``) runs with the precision
  hint its manifest names (``openvino.precision``: ``f32``; ``bf16``; ``auto`` = bf16 where
  the CPU running it has native bf16, else f32, decided when it loads, so the artifact is
  portable; ``default`` = OpenVINO's own choice, which is bf16 on a CPU with AVX512_BF16 or AMX).
* ``export_openvino``: an fp32 ONNX or HF parent as IR, checked against the parent.
* ``quantize_openvino_int8``: NNCF post-training int8 (``ModelType.TRANSFORMER``),
  calibrated on the task's train split, checked against the parent on dev sentences.

OpenVINO reads our fp32 ONNX directly, but not ONNX Runtime's contrib int8 graphs
(QAttention, MatMulInteger with com.microsoft fusions): those parents are refused with a
message saying which stage to put first.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from chain.artifact import Artifact
from chain.errors import ExportValidationError, ModelError, SpecError
from chain.predict import Predictor, encode_batches
from chain.registry import register_stage
from chain.runtime import load_predictor, register_runtime
from chain.stage import RunContext, Stage

from .onnx_quantize import copy_aux
from .openvino_source import openvino_source, refuse_contrib_ops
from .stages import calibration_texts, validation_texts

PRECISIONS = ("f32", "bf16", "auto", "default")
XML = "model.xml"


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has native bf16 here (AVX512_BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise SpecError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_precision(precision: str) -> str:
    """``auto`` as this CPU runs it (bf16 with native bf16, else f32); the others as given."""
    _check_precision(precision)
    return ("bf16" if cpu_has_bf16() else "f32") if precision == "auto" else precision


def compile_openvino(model, threads: int, precision: str = "f32"):
    """``model`` (an ``ov.Model`` or a path OpenVINO reads: .xml, .onnx) compiled for the CPU
    with ``threads`` inference threads and the precision hint (``default``: none given)."""
    import openvino as ov

    precision = resolve_precision(precision)
    if precision == "bf16" and not cpu_has_bf16():
        raise ModelError("this CPU has no native bf16 (AVX512_BF16 or AMX) for OpenVINO; use precision f32")
    config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    core = ov.Core()
    return core.compile_model(core.read_model(str(model)) if isinstance(model, (str, Path)) else model, "CPU", config)


def openvino_fn(compiled, output: str | None = None):
    """A batch-in, logits-out function over one infer request (logits are copied out of it);
    ``output``: a multi-task graph's ``logits_<task>`` instead of output 0."""
    names = {n for port in compiled.inputs for n in port.get_names()}
    request = compiled.create_infer_request()
    port = compiled.output(output) if output else None

    def run(enc: dict) -> np.ndarray:
        request.infer({k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in names})
        tensor = request.get_output_tensor(0) if port is None else request.get_tensor(port)
        return np.array(tensor.data, dtype=np.float32)

    return run


def ir_path(artifact: Artifact) -> Path:
    """The IR file of an ``openvino`` artifact: the manifest's ``openvino.xml``, else the only .xml."""
    name = (artifact.manifest.get("openvino") or {}).get("xml")
    if name:
        return artifact.path / name
    found = sorted(artifact.path.glob("*.xml"))
    if len(found) != 1:
        raise ModelError(f"{artifact.path}: expected one OpenVINO .xml file, found {len(found)}")
    return found[0]


@register_runtime("openvino")
def openvino_predictor(artifact: Artifact, threads: int, trust_remote_code: bool = False,
                       output: str | None = None) -> Predictor:
    precision = resolve_precision((artifact.manifest.get("openvino") or {}).get("precision", "f32"))
    return Predictor(artifact.name, f"openvino-{precision}",
                     openvino_fn(compile_openvino(ir_path(artifact), threads, precision), output))


def _onnx_on_openvino(precision: str):
    def load(artifact: Artifact, threads: int, trust_remote_code: bool = False,
             output: str | None = None) -> Predictor:
        refuse_contrib_ops(artifact.path / "model.onnx")
        return Predictor(artifact.name, f"openvino-{precision}",
                         openvino_fn(compile_openvino(artifact.path / "model.onnx", threads, precision), output))
    return load


register_runtime("onnx", "openvino")(_onnx_on_openvino("f32"))
register_runtime("onnx", "openvino-bf16")(_onnx_on_openvino("bf16"))


# A flip where the parent's top-two softmax probabilities are this close is a near tie, which
# any int8 graph turns either way: on SST-5 dev (5 classes) ONNX Runtime int8 of the fine-tuned
# MiniLM agreed with it on 0.914 of 256 sentences at no accuracy cost (dev 0.4796 -> 0.4787), every
# flip at a gap under 0.23; at a gap >= 0.2 ORT and NNCF int8 agreed on 0.988-1.000 (AVX2 EPYC,
# 2026-12-04, benchmarks/agreement_by_gap.py, docs/results/bench-search-sst5-2026-12-04-avx2.md).
DECIDED_GAP = 0.2
MIN_DECIDED = 16  # fewer decided sentences than this: the gate reads every sentence


def compare(reference: Predictor, candidate: Predictor, tokenizer, texts: list[str],
            batch_sizes=(1, 8), max_length: int = 128) -> dict:
    """Max |logit difference| and argmax agreement of ``candidate`` vs ``reference``, on every
    sentence and on those the reference decides (top-two softmax gap >= ``DECIDED_GAP``)."""
    max_diff, agree, n, agree_d, n_d = 0.0, 0, 0, 0, 0
    for bs in batch_sizes:
        for _, enc in encode_batches(tokenizer, texts, bs, max_length):
            ref, got = reference(enc), candidate(enc)
            max_diff = max(max_diff, float(np.abs(ref - got).max()))
            same = ref.argmax(-1) == got.argmax(-1)
            prob = np.exp(ref - ref.max(-1, keepdims=True))
            prob = np.sort(prob / prob.sum(-1, keepdims=True), -1)
            decided = prob[:, -1] - prob[:, -2] >= DECIDED_GAP if ref.shape[-1] > 1 else np.ones(len(ref), bool)
            agree, n = agree + int(same.sum()), n + len(ref)
            agree_d, n_d = agree_d + int(same[decided].sum()), n_d + int(decided.sum())
    all_, decided = round(agree / max(n, 1), 4), round(agree_d / n_d, 4) if n_d else None
    return {"max_abs_diff": float(f"{max_diff:.3g}"), "argmax_agreement": all_, "compared": n,
            "decided": n_d, "decided_agreement": decided,
            "gated_agreement": decided if n_d >= MIN_DECIDED else all_}


def agreement_text(report: dict, minimum: float) -> str:
    """The gated agreement of a ``compare`` report, and which sentences it was read on."""
    on = (f"the {report['decided']} the parent decides (top-two gap >= {DECIDED_GAP})"
          if report["decided"] >= MIN_DECIDED else "all")
    return (f"argmax agreement {report['gated_agreement']:.3f} on {on} (min {minimum}; "
            f"{report['argmax_agreement']:.3f} on all)")


def save_ir(ov_model, out_dir: Path, parent: Artifact) -> None:
    """IR with float weights kept fp32 (OpenVINO's own default would halve them to fp16)."""
    import openvino as ov

    ov.save_model(ov_model, str(out_dir / XML), compress_to_fp16=False)
    copy_aux(parent.path, out_dir)


@dataclass
class OpenVinoExportConfig:
    precision: str = "f32"  # the inference precision hint the artifact runs with (see PRECISIONS)
    atol: float = 1e-3  # max |logit difference| vs the parent, at f32 (OpenVINO fuses and reorders sums)
    min_agreement: float = 0.95  # argmax agreement vs the parent at bf16/default (no atol there)
    validation_samples: int = 32

    def __post_init__(self) -> None:
        _check_precision(self.precision)
        if self.atol <= 0 or not 0 < self.min_agreement <= 1:
            raise SpecError(f"atol must be > 0 and min_agreement in (0, 1], got {self.atol}, {self.min_agreement}")


def _tokenizer(parent: Artifact, trust_remote_code: bool):
    from chain.model import load_tokenizer

    return load_tokenizer(parent, trust_remote_code)


def _check(parent: Artifact, out_dir: Path, manifest: dict, texts: list[str], ctx: RunContext,
           atol: float | None, min_agreement: float, what: str) -> dict:
    """Compare the saved IR with the parent on real ``texts`` (every task output of a multi-task
    graph); raise if one drifts too far. Returns the own output's report (+ ``heads``: per task)."""
    tok = _tokenizer(parent, ctx.trust_remote_code)
    threads = ctx.threads or 1
    heads = manifest.get("heads") or {}
    outputs = {None: None, **{t: h["output"] for t, h in heads.items()}}
    reports = {}
    for task, output in outputs.items():
        report = compare(_reference(parent, threads, ctx.trust_remote_code, task),
                         openvino_predictor(Artifact(out_dir, manifest), threads, output=output), tok, texts)
        if (atol is not None and report["max_abs_diff"] > atol) or report["gated_agreement"] < min_agreement:
            raise ExportValidationError(
                f"{what}{f' (task {task})' if task else ''} does not match its parent on {len(texts)} real "
                f"sentences at batch 1 and 8 ({report['compared']} outputs): max|diff| {report['max_abs_diff']:.2e}"
                + (f" (atol {atol})" if atol is not None else "")
                + f", {agreement_text(report, min_agreement)}")
        reports[task] = report
    own = reports.pop(None)
    return {**own, "heads": reports} if reports else own


def _reference(parent: Artifact, threads: int, trust_remote_code: bool, task: str | None) -> Predictor:
    """The parent's logits for ``task``: a multi-task graph's output, or an HF model with that head swapped in."""
    if parent.format != "hf" or task is None:
        return load_predictor(parent, threads, trust_remote_code, task=task)
    import torch

    from chain.heads import swap_head_
    from chain.model import load_model
    from chain.predict import torch_predictor

    torch.set_num_threads(threads)
    model = load_model(parent, trust_remote_code=trust_remote_code)
    if not swap_head_(model, parent.path, task):
        raise ModelError(f"{parent.path} carries no head for task {task!r}")
    return torch_predictor(model, f"{parent.name}:{task}")


def _no_bf16(precision: str) -> dict | None:
    """A skipped artifact's fields when ``bf16`` is asked for on a CPU without it."""
    if precision == "bf16" and not cpu_has_bf16():
        return {"format": "openvino", "skip_reason": "this CPU has no native bf16 (AVX512_BF16 or AMX) for OpenVINO"}
    return None


@register_stage("export_openvino")
@dataclass
class ExportOpenVino(Stage):
    """OpenVINO IR of an fp32 ONNX or HF parent, checked against the parent on real sentences."""
    needs_task: ClassVar[bool] = True
    parent_formats: ClassVar[tuple[str, ...]] = ("onnx", "hf")
    output_format: ClassVar[str] = "openvino"
    config: OpenVinoExportConfig = field(default_factory=OpenVinoExportConfig)
    name: str = "openvino"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        cfg = self.config
        if (skip := _no_bf16(cfg.precision)) is not None:
            return skip
        texts = validation_texts(ctx, self.name, cfg.validation_samples)
        with openvino_source(parent, _tokenizer(parent, ctx.trust_remote_code), texts, out_dir,
                             ctx.trust_remote_code) as (ov_model, heads):
            save_ir(ov_model, out_dir, parent)
        manifest = {"format": "openvino", "openvino": {"xml": XML, "precision": cfg.precision}, **heads}
        exact = resolve_precision(cfg.precision) == "f32"
        report = _check(parent, out_dir, manifest, texts, ctx, cfg.atol if exact else None,
                        cfg.min_agreement, f"OpenVINO IR ({cfg.precision})")
        return {**manifest, "validation": report, "from_format": parent.format}


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
    # On the recovered 0.5/0.6 MiniLM: IR 17.0 -> 11.1 MB, dev 0.8784 -> 0.8807, batch 32 in
    # rotation in one process 0.96-1.00x (AVX-512 EPYC, docs/results/bench-2026-12-07-avx512.md).
    embeddings: str = "int8"
    embedding_block: int = 128

    def __post_init__(self) -> None:
        _check_precision(self.precision)
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


def int4_embeddings(ov_model, block: int):
    """Every embedding table 4-bit (asymmetric, groups of ``block``; per row if a table's width
    is no multiple of it); MatMuls untouched (NNCF int8 already has them)."""
    import nncf

    widths = embedding_widths(ov_model)
    if not widths:
        raise ModelError("embeddings: int4 found no embedding table (Gather of a float constant) in the graph")
    group = block if all(w % block == 0 for w in widths) else -1
    return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group, ratio=1.0,
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
        if (skip := _no_bf16(cfg.precision)) is not None:
            return skip
        tok = _tokenizer(parent, ctx.trust_remote_code)
        calib = [enc for _, enc in encode_batches(tok, calibration_texts(ctx, self.name, cfg.calibration_samples),
                                                  1, cfg.max_length)]
        checks = validation_texts(ctx, self.name, cfg.validation_samples)
        with openvino_source(parent, tok, checks, out_dir, ctx.trust_remote_code) as (ov_model, heads):
            # a multi-task graph's heads stay float (every quantizer keeps heads float); a single head: NNCF's choice
            ignored = head_patterns(json.loads((parent.path / "config.json").read_text())) if heads else []
            save_ir(nncf_int8(ov_model, calib, cfg, ignored), out_dir, parent)
        manifest = {"format": "openvino", "openvino": {"xml": XML, "precision": cfg.precision}, **heads}
        report = _check(parent, out_dir, manifest, checks, ctx, None, cfg.min_agreement, "NNCF int8 model")
        floats = {p: "head (every task's): kept float, nncf IgnoredScope" for p in ignored}
        return {**manifest, "validation": report, "from_format": parent.format, "calibration_samples": len(calib),
                **({"float_layers": floats} if floats else {}),
                "quantization": {"tool": "nncf", "preset": cfg.preset, "model_type": "transformer",
                                 "overflow_fix": resolve_overflow_fix(cfg.overflow_fix),
                                 "embeddings": cfg.embeddings,
                                 **({"embedding_block": cfg.embedding_block} if cfg.embeddings == "int4" else {})}}
