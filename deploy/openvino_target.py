"""The ``openvino`` export target: a bundle whose model is OpenVINO IR, for when OpenVINO is
the runtime the bench chose (on a CPU with VNNI/AMX its int8 and bf16 paths beat ONNX Runtime's).

The IR is saved as ``openvino_model.xml``/``.bin`` (optimum-intel's names), so
``OVModelForSequenceClassification.from_pretrained(BUNDLE)`` and ``pipeline()`` load it as it
is, and ``chainpress serve`` runs it with the same ``Classifier`` as an ONNX bundle.

Sources: an ``openvino`` artifact (``export_openvino``, ``quantize_openvino_int8``: NNCF int8
weights, copied as they are), an fp32 ONNX artifact (read by OpenVINO) or a Hugging Face one
(converted from PyTorch). ONNX Runtime's int8 graphs use contrib ops OpenVINO cannot read:
those are refused with what to export instead. ``precision`` is the inference hint the bundle
records: ``auto`` keeps the artifact's (f32 for non-OpenVINO sources), ``fp32`` or ``bf16``
(bf16 only on a CPU with native bf16).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from chain.artifact import Artifact
from chain.errors import ExportValidationError, ModelError, SpecError

XML = "openvino_model.xml"
BIN = "openvino_model.bin"
ATOL = 1e-3  # f32: OpenVINO fuses and reorders sums
MIN_AGREEMENT = 0.95  # bf16 / int8 hint: no atol, argmax agreement with the artifact


def artifact_precision(art: Artifact) -> str:
    """The hint the artifact itself runs with on this CPU (f32 for non-OpenVINO artifacts)."""
    from compress.openvino import resolve_precision

    return resolve_precision((art.manifest.get("openvino") or {}).get("precision", "f32")) \
        if art.format == "openvino" else "f32"


def bundle_precision(art: Artifact, asked: str) -> str:
    """The OpenVINO inference hint the bundle runs with: f32 | bf16 | default."""
    from compress.openvino import cpu_has_bf16

    if asked == "int8":
        raise SpecError("--precision int8 for --target openvino: OpenVINO int8 comes from NNCF with calibration "
                        "data; export the artifact of a quantize_openvino_int8 stage instead")
    hint = artifact_precision(art) if asked == "auto" else {"fp32": "f32"}.get(asked, asked)
    if hint == "bf16" and not cpu_has_bf16():
        raise SpecError("--precision bf16: this CPU has no native bf16 (AVX512_BF16 or AMX) for OpenVINO; "
                        "use --precision fp32")
    return hint


def write_openvino_model(art: Artifact, dest: Path, texts: list[str], precision: str, threads: int) -> dict:
    """``openvino_model.xml/.bin`` of ``art`` in ``dest``, checked against the artifact on ``texts``."""
    import openvino as ov

    from chain.model import load_tokenizer
    from compress.openvino import ir_path
    from compress.openvino_source import openvino_source

    hint = bundle_precision(art, precision)
    heads: dict = {}
    if art.format == "openvino":
        src = ir_path(art)
        shutil.copy2(src, dest / XML)
        shutil.copy2(src.with_suffix(".bin"), dest / BIN)
        how = f"copied from the OpenVINO artifact ({src.name})"
    elif art.format in ("onnx", "hf"):
        try:
            with openvino_source(art, load_tokenizer(art), texts, dest) as (model, heads):
                ov.save_model(model, str(dest / XML), compress_to_fp16=False)
        except ModelError as e:  # ORT contrib ops
            raise ModelError(f"{e}. For OpenVINO int8 export a quantize_openvino_int8 stage's artifact") from None
        how = f"converted by OpenVINO from the {art.format} artifact" + \
            (" through its multi-task ONNX export (one output per head)" if art.format == "hf" and heads else "")
    else:
        raise ModelError(f"{art.path} is a {art.format!r} artifact, which OpenVINO cannot read; export its fp32 "
                         "parent (hf or onnx) or an OpenVINO stage (export_openvino, quantize_openvino_int8)")
    return {"how": how, "precision": hint, "validation": _validate(art, dest, texts, hint, threads),
            **(heads if art.format == "hf" else {})}


def _validate(art: Artifact, dest: Path, texts: list[str], hint: str, threads: int) -> dict:
    from chain.model import load_tokenizer
    from chain.predict import Predictor
    from chain.runtime import load_predictor
    from compress.openvino import agreement_text, compare, compile_openvino, openvino_fn

    got = Predictor("bundle", f"openvino-{hint}", openvino_fn(compile_openvino(dest / XML, threads, hint)))
    report = compare(load_predictor(art, threads), got, load_tokenizer(art), texts)
    exact = hint == "f32" == artifact_precision(art)  # both sides fp32 arithmetic: logits must agree
    # gated on the sentences the artifact decides: near ties flip under any int8/bf16 graph
    if (exact and report["max_abs_diff"] > ATOL) or report["gated_agreement"] < MIN_AGREEMENT:
        raise ExportValidationError(
            f"the OpenVINO bundle ({hint}) does not match {art.path} on {report['compared']} real sentences: "
            f"max|diff| {report['max_abs_diff']:.2e}{f' (atol {ATOL})' if exact else ''}, "
            f"{agreement_text(report, MIN_AGREEMENT)}")
    return {**report, "against": f"the artifact on its own runtime ({art.format})", "atol": ATOL if exact else None}


def port_name(port) -> str:
    """A port's tensor name; PyTorch conversion can add a numeric alias ('63') beside the real one."""
    return min(port.get_names(), key=lambda n: (n.isdigit(), n))


def io_names(xml: Path) -> dict:
    import openvino as ov

    m = ov.Core().read_model(str(xml))
    return {"inputs": [port_name(p) for p in m.inputs], "outputs": [port_name(p) for p in m.outputs]}


class _Input:
    def __init__(self, name: str):
        self.name = name


class OpenVinoSession:
    """The two calls ``Classifier`` makes of an ORT session, over a compiled OpenVINO model."""

    def __init__(self, xml: Path, threads: int, precision: str):
        from compress.openvino import compile_openvino

        self.compiled = compile_openvino(xml, threads, precision)
        self.request = self.compiled.create_infer_request()
        self._inputs = [_Input(port_name(p)) for p in self.compiled.inputs]

    def get_inputs(self) -> list[_Input]:
        return self._inputs

    def run(self, names: list[str] | None, feed: dict) -> list[np.ndarray]:
        self.request.infer(feed)
        ports = self.compiled.outputs if names is None else [self.compiled.output(n) for n in names]
        return [np.array(self.request.get_tensor(p).data, dtype=np.float32) for p in ports]
