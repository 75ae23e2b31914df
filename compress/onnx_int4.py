"""Weight-only int4 ONNX: MatMul -> com.microsoft.MatMulNBits, from chainpress' Int4Weight.

The weights are quantized once into ``compress.formats.Int4Weight`` (the format the
Triton int4 GEMM reads), by GPTQ on calibration sentences (``compress.gptq``, the
default) or by rounding (``quantize_int4``, ``method: rtn``), and written into the graph
as-is: ``Int4Weight.qweight`` is MatMulNBits' B, ``scales`` and ``zeros`` its scales and
packed zero points, so PyTorch, ONNX Runtime and the kernels can run bit-identical codes.
The word-embedding Gather can also go to 4 bits (ORT's ``GatherBlockQuantized``, via its own quantizer:
there is no Triton counterpart to share a format with).

Before quantizing, ``onnx_graph.prepare`` makes every weight a visible ``MatMul`` (Gemm and
Identity-of-initializer rewritten, so GPT-2's Conv1D and ALBERT's shared layer on every
pass are covered); the architecture's head stays fp32 and every fp32 weight is listed
with its reason. The 4-bit Gather needs opset 21: ``onnx_graph.upgrade_opset`` rewrites
the ops whose signature changed, and the result passes ``onnx.checker``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .formats import Int4Weight, quantize_int4
from .gptq import gptq_int4
from .onnx_quantize import copy_aux


@dataclass
class OrtInt4Config:
    group_size: int = 32
    accuracy_level: int = 4  # MatMulNBits: 4 = int8 activations on CPU (fast), 0 = fp32 compute
    embeddings: bool = True  # 4-bit word embeddings (GatherBlockQuantized)
    exclude: tuple[str, ...] = ()  # MatMul node names kept in fp32 (e.g. from a sensitivity report)
    # "gptq": codes that minimise the error on calibration inputs (compress/gptq.py), "rtn":
    # round each weight to nearest. Fine-tuned MiniLM on SST-2, 4-bit embeddings too: argmax
    # agreement with fp32 0.978 -> 0.990 on dev, 0.976 -> 0.985 on test (24 s to quantize, not
    # 2); tiny random models' margin correlation rose on 11 of 12 (docs/support-matrix.md)
    method: str = "gptq"
    calibration_samples: int = 128  # train-split sentences for GPTQ's Hessians
    damp: float = 0.01  # GPTQ: fraction of the mean Hessian diagonal added for stability

    def __post_init__(self) -> None:
        quantize_int4(torch.zeros(1, self.group_size), self.group_size)  # validates group_size
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy_level must be 0..4, got {self.accuracy_level}")
        if self.method not in ("gptq", "rtn"):
            raise ValueError(f"method must be 'gptq' or 'rtn', got {self.method!r}")
        if self.calibration_samples < 1 or not 0 < self.damp < 1:
            raise ValueError("calibration_samples must be >= 1 and damp in (0, 1)")
        self.exclude = tuple(self.exclude)


def pack_zero_points(zeros: torch.Tensor) -> np.ndarray:
    """(N, n_blocks) uint8 in [0, 15] -> (N * ceil(n_blocks / 2),) two per byte, low nibble first."""
    n, nb = zeros.shape
    z = zeros.numpy().astype(np.uint8)
    if nb % 2:
        z = np.concatenate([z, np.full((n, 1), 8, np.uint8)], axis=1)
    return (z[:, 0::2] | (z[:, 1::2] << 4)).reshape(-1)


def matmulnbits_node(name: str, a: str, out: str, w: Int4Weight, graph, helper) -> None:
    from onnx import numpy_helper

    n, k, g = w.qweight.shape[0], w.in_features, w.group_size
    b = w.qweight.numpy().reshape(n, k // g, g // 2)
    inits = {f"{name}_B": b, f"{name}_scales": w.scales.numpy().astype(np.float32).reshape(-1),
             f"{name}_zp": pack_zero_points(w.zeros)}
    for iname, arr in inits.items():
        graph.initializer.append(numpy_helper.from_array(arr, iname))
    return helper.make_node("MatMulNBits", [a, *inits], [out], name=name, domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=g)


def _hessians(model, src_dir: Path, out_dir: Path, texts: list[str], inputs: list[str],
              embedding_block: int | None) -> dict:
    """GPTQ's input Hessians of the prepared graph's MatMuls on ``texts``, seen through the
    4-bit embeddings when they will be 4-bit (``embedding_block``): on calibration inputs of the
    fp32 graph, GPTQ int4 of a tiny random ELECTRA agreed with its parent on 0.766 of the
    sentences (round-to-nearest: 0.891)."""
    import onnx
    from transformers import AutoTokenizer

    from chain.predict import encode_batches
    from .gptq import matmul_hessians

    tmp = out_dir / "_calibration.onnx"
    onnx.save(model, str(tmp))
    try:
        if embedding_block:
            quantize_gathers(tmp, embedding_block)
        batches = [enc for _, enc in encode_batches(AutoTokenizer.from_pretrained(src_dir), texts, 16)]
        return matmul_hessians(tmp, sorted(set(inputs)), batches)
    finally:
        tmp.unlink()


def quantize_onnx_int4(src_dir: Path, out_dir: Path, config: OrtInt4Config = OrtInt4Config(),
                       calib_texts: list[str] | None = None) -> dict:
    """MatMulNBits for every body MatMul; ``calib_texts`` (train sentences) are GPTQ's calibration."""
    import json

    import onnx
    from onnx import helper, numpy_helper

    from chain.arch import arch_for
    from .onnx_graph import float_layers, head_nodes, prepare, require_body_quantized, require_outputs

    arch = arch_for(json.loads((src_dir / "config.json").read_text()))
    model = onnx.load(str(src_dir / "model.onnx"))
    prep = prepare(model)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    graph = model.graph
    heads = set(head_nodes(graph, arch))
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    if config.method == "gptq" and not calib_texts:
        raise ValueError("int4 method 'gptq' needs calibration sentences; pass calib_texts or set method: rtn")
    hessians = _hessians(model, src_dir, out_dir, calib_texts, [n.input[0] for n in graph.node if n.op_type == "MatMul"
                                                                 and len(n.input) == 2 and n.input[1] in inits],
                         config.group_size if config.embeddings else None) \
        if config.method == "gptq" else {}
    new_nodes, replaced, reasons = [], [], {}
    for node in graph.node:
        w_name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        init = inits.get(w_name) if w_name else None
        why = None
        if init is not None:
            if len(init.dims) != 2:
                why = "weight is not a 2-D matrix"
            elif node.name in heads:
                why = "head: kept float (tiny, the most sensitive layer)"
            elif node.name in config.exclude:
                why = "listed in `exclude`"
            elif init.dims[0] % config.group_size:
                why = f"K={init.dims[0]} is not a multiple of group_size={config.group_size}"
        if init is None or why:
            if why:
                reasons[node.name] = why
            new_nodes.append(node)
            continue
        weight = torch.from_numpy(numpy_helper.to_array(init).T.copy())  # (N, K)
        w = (gptq_int4(weight, hessians[node.input[0]], config.group_size, config.damp) if hessians
             else quantize_int4(weight, config.group_size))
        nb = matmulnbits_node(node.name or w_name, node.input[0], node.output[0], w, graph, helper)
        nb.attribute.append(helper.make_attribute("accuracy_level", config.accuracy_level))
        new_nodes.append(nb)
        replaced.append(node.name)
        uses[w_name] -= 1
        if uses[w_name] == 0:
            graph.initializer.remove(init)
    del graph.node[:]
    graph.node.extend(new_nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    out = out_dir / "model.onnx"
    onnx.save(model, str(out))
    report = {"int4_matmuls": len(replaced), "group_size": config.group_size, "method": config.method,
              **({"calibration_samples": len(calib_texts)} if hessians else {}), **prep}
    if config.embeddings:
        report["int4_gathers"] = quantize_gathers(out, config.group_size)
    else:
        reasons.update({n: "embeddings: fp32 by config (embeddings: false)" for n in _gathers(before.graph)})
    after = onnx.load(str(out), load_external_data=False)
    onnx.checker.check_model(after)
    require_body_quantized(before.graph, after.graph, arch, "quantize_onnx_int4")
    require_outputs(before.graph, after.graph, "quantize_onnx_int4")
    report["float_layers"] = float_layers(before.graph, after.graph, reasons,
                                          "onnxruntime's 4-bit Gather quantizer left it float")
    report["fp32_matmuls"] = [n for n, op in _weight_ops(before.graph).items()
                              if op != "Gather" and n in report["float_layers"]]
    copy_aux(src_dir, out_dir)
    return report


def _weight_ops(graph) -> dict[str, str]:
    from .onnx_graph import weight_nodes

    return weight_nodes(graph)


def _gathers(graph) -> list[str]:
    return [n for n, op in _weight_ops(graph).items() if op == "Gather"]


def quantize_gathers(path: Path, block_size: int) -> int:
    """4-bit embedding tables with ORT's weight-only quantizer (Gather -> GatherBlockQuantized)."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from .onnx_graph import toposort, upgrade_opset

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    model = onnx.load(str(path))
    upgrade_opset(model, 21)  # what the quantizer would force, with the ops rewritten
    q = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=False,
                             op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero blocks (scale 0) are handled by ORT
        q.process()
    # ORT's save_model_to_file re-sorts ignoring If-branch reads of outer values (DeBERTa's
    # graph then fails onnx.checker); sort with those counted and save with onnx directly.
    toposort(q.model.model.graph)
    onnx.save(q.model.model, str(path))
    return sum(n.op_type == "GatherBlockQuantized" for n in q.model.model.graph.node)
