"""The model OpenVINO converts or quantizes: a parent artifact as an ``ov.Model``.

An fp32 ONNX graph is read as it is (a multi-task graph keeps one output per task); an HF
model is converted from PyTorch, except one that carries other tasks' heads
(``chain.heads``): PyTorch conversion would trace its own head only, so it goes through the
multi-task ONNX export (``compress.onnx_multitask``: one encoder pass, ``logits_<task>``
per head, each head checked against PyTorch with that head swapped in) and OpenVINO reads
that graph. ONNX Runtime's contrib int8 graphs are refused: OpenVINO cannot read them.

>>> with openvino_source(parent, tokenizer, texts, work_dir) as (ov_model, heads):
...     save_ir(ov_model, out_dir, parent)   # heads: the manifest's {"heads": ...} or {}
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from chain.artifact import Artifact
from chain.errors import ModelError, SpecError

from .stages import carry_heads


def refuse_contrib_ops(onnx_path: Path) -> None:
    """ModelError if the graph uses ONNX Runtime's contrib ops, which OpenVINO cannot read."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    contrib = sorted({n.op_type for n in graph.node if n.domain == "com.microsoft"})
    if contrib:
        raise ModelError(f"{onnx_path} uses ONNX Runtime contrib ops ({', '.join(contrib[:5])}) that OpenVINO "
                         "cannot read; give an fp32 ONNX parent (an export_onnx stage) instead")


def to_openvino(parent: Artifact, example: dict, trust_remote_code: bool = False):
    """The parent as an ``ov.Model``: an fp32 ONNX graph read as is, an HF model converted
    from PyTorch with ``example`` (a tokenized batch) tracing it (every dimension dynamic)."""
    import openvino as ov

    if parent.format == "onnx":
        refuse_contrib_ops(parent.path / "model.onnx")
        return ov.Core().read_model(str(parent.path / "model.onnx"))
    if parent.format != "hf":
        raise SpecError(f"OpenVINO conversion reads an fp32 onnx or hf parent, got {parent.format} "
                        f"from {parent.path}")
    import torch

    from chain.model import load_model

    model = load_model(parent, trust_remote_code=trust_remote_code).eval()
    model.config.return_dict = False  # a tuple output traces to a plain `logits` output
    with torch.inference_mode():
        ov_model = ov.convert_model(model, example_input={k: torch.from_numpy(v) for k, v in example.items()})
    for port in ov_model.outputs[:1]:
        port.get_tensor().set_names({"logits"})
    return ov_model


def trace_example(tokenizer) -> dict:
    """A small padded batch that traces a PyTorch model for conversion."""
    enc = tokenizer(["a short sentence to trace", "and a second, somewhat longer one to pad"], padding=True,
                    return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


def carries_other_heads(parent: Artifact) -> bool:
    """An HF artifact with saved heads of tasks besides its own (a rehearsal chain's)."""
    from chain.heads import head_tasks

    own = (parent.manifest.get("task") or {}).get("name")
    return parent.format == "hf" and any(t != own for t in head_tasks(parent.path))


@contextmanager
def openvino_source(parent: Artifact, tokenizer, texts: list[str], work: Path, trust_remote_code: bool = False):
    """Yield (``ov.Model`` of ``parent``, its manifest field ``{"heads": ...}`` or {}); a
    multi-head HF parent's temporary ONNX graph lives in ``work`` until the block ends."""
    if not carries_other_heads(parent):
        yield (to_openvino(parent, trace_example(tokenizer), trust_remote_code),
               carry_heads(parent) if parent.format == "onnx" else {})
        return
    import openvino as ov

    from .onnx_export import OnnxExportConfig, export_onnx

    tmp = work / "_multitask_onnx"
    try:
        report = export_onnx(parent.path, tmp, texts, OnnxExportConfig(), trust_remote_code)
        yield ov.Core().read_model(str(tmp / "model.onnx")), ({"heads": report["heads"]} if report.get("heads") else {})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
