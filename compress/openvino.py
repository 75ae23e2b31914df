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
* ``quantize_openvino_int8`` (NNCF post-training int8) lives in ``compress.openvino_int8``
  and uses this module's check against the parent.

OpenVINO reads our fp32 ONNX directly, but not ONNX Runtime's contrib int8 graphs
(QAttention, MatMulInteger with com.microsoft fusions): those parents are refused with a
message saying which stage to put first.
"""
from __future__ import annotations

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
from .stages import validation_texts

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


from . import openvino_int8  # noqa: E402,F401  (registers quantize_openvino_int8, built on the helpers above)
