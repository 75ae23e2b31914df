"""ONNX Runtime int8 quantization of an exported graph (with optional fusions first).

Why not optimum's ``ORTQuantizer``: on an O2-fused MiniLM graph it fails with "Unable
to find data type for weight_name" because the fused nodes lose shape/type info.
``onnxruntime.quantization.quantize_dynamic`` with ``DefaultTensorType=FLOAT`` handles
the same graph, so fusions (Attention, SkipLayerNorm, BiasGelu) and int8 work together.

The architecture's declaration (``chain.arch``) gives the head count's config key and
the fusion ``model_type`` ("bert", "gpt2", or none); its head stays float, and the
manifest lists every weight left float and why (``float_layers``).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

AUX_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@dataclass
class OrtInt8Config:
    per_channel: bool = True
    # u8s8 on AVX2 without VNNI saturates 16-bit accumulators (tiny random models' margins
    # fell to r 0.91 against their parent); reduce_range (7-bit weights) avoids it at a small
    # precision cost. None: on exactly where this CPU has that flaw (``int8_saturates``).
    reduce_range: bool | None = None
    optimize_level: int | None = 2  # onnxruntime.transformers fusions before quantizing; None = off
    op_types: tuple[str, ...] = ("MatMul", "Attention")
    # Embedding tables (Gather): "int8" (per row), "int4" (GatherBlockQuantized, groups of
    # ``embedding_block``) or "fp32". MiniLM's word embeddings are half its weights: int4
    # (block 128) took its int8 graph from 23.0 to 17.4 MB (python -m bench, docs/results).
    embeddings: str = "int8"
    embedding_block: int = 32

    def __post_init__(self) -> None:
        if self.optimize_level not in (None, 0, 1, 2):
            raise ValueError(f"optimize_level must be None, 0, 1 or 2, got {self.optimize_level}")
        if self.embeddings not in ("int8", "int4", "fp32"):
            raise ValueError(f"embeddings must be 'int8', 'int4' or 'fp32', got {self.embeddings!r}")
        if self.embedding_block not in (16, 32, 64, 128, 256):
            raise ValueError(f"embedding_block must be a power of two in 16..256, got {self.embedding_block}")
        self.op_types = tuple(t for t in self.op_types if t != "Gather")  # embeddings say how Gathers go


def resolve_reduce_range(reduce_range: bool | None) -> bool:
    """``None`` as this CPU needs it: 7-bit weights where u8s8 dot products saturate."""
    from chain.environment import int8_saturates

    return int8_saturates() if reduce_range is None else bool(reduce_range)


def copy_aux(src: Path, dst: Path) -> None:
    for name in AUX_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


HIDDEN_KEYS = ("hidden_size", "dim", "n_embd", "d_model")
HEAD_REASON = "head: kept float (tiny, the most sensitive layer)"


def attention_shape(hf_config: dict) -> tuple[int, int]:
    """(num_heads, attention hidden size) for the fusion; (0, 0) lets ORT read them off the graph.

    After head pruning the Q/K/V width is heads_left * head_dim, not hidden_size: giving
    the fusion the unpruned head count would silently change the attention math.
    """
    from chain.arch import arch_for

    arch = arch_for(hf_config)
    heads = hf_config[arch.attention.heads_attr]
    hidden = next(hf_config[k] for k in HIDDEN_KEYS if k in hf_config)
    pruned = hf_config.get("pruned_heads") or {}
    if not pruned:
        return heads, hidden
    left = {heads - len(v) for v in pruned.values()}
    if len(pruned) < hf_config[arch.layers_attr] or len(left) != 1:
        return 0, 0  # non-uniform: per-layer detection from the graph's Reshape constants
    n = left.pop()
    return n, n * (hidden // heads)


def optimize_graph(src: Path, dst: Path, level: int, num_heads: int, hidden_size: int,
                   attention: bool = True, model_type: str = "bert") -> None:
    """Transformer fusions with onnxruntime.transformers (what ORTOptimizer runs underneath).

    ``attention=False`` keeps Q/K/V as plain MatMuls: static (QDQ) quantization has no
    quantizer for the fused ``Attention`` op and would leave its weights in fp32.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    options = FusionOptions(model_type)
    # EmbedLayerNormalization would hide the word-embedding Gather from the quantizer,
    # leaving 47 MB of fp32 embeddings in a MiniLM graph; keep the Gather visible.
    options.enable_embed_layer_norm = False
    options.enable_attention = attention
    opt = optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                         opt_level=level, use_gpu=False, optimization_options=options)
    opt.save_model_to_file(str(dst))


def check_fused_graph(original: Path, fused: Path, tokenizer_dir: Path, texts: list[str], atol: float = 1e-3) -> float:
    """Fusions must not change the function: compare fp32 logits before/after; return max diff."""
    import numpy as np
    from transformers import AutoTokenizer

    from chain.errors import ExportValidationError

    from .onnx_export import onnx_logits, ort_session

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    a, b = ort_session(original), ort_session(fused)
    outputs = [o.name for o in a.get_outputs()]  # every task's head of a multi-task graph
    worst = 0.0
    for i in range(0, len(texts), 8):
        enc = dict(tok(texts[i:i + 8], padding=True, truncation=True, max_length=128, return_tensors="np"))
        for out in outputs:
            worst = max(worst, float(np.abs(onnx_logits(a, enc, out) - onnx_logits(b, enc, out)).max()))
    if worst > atol:
        raise ExportValidationError(f"graph fusions changed the logits by {worst:.2e} (> {atol}); "
                                    "set optimize_level: null to quantize the unfused graph")
    return worst


def quantize_onnx_int8(src_dir: Path, out_dir: Path, config: OrtInt8Config = OrtInt8Config(),
                       texts: list[str] | None = None) -> dict:
    """Fuse (optional, per architecture), check the fused graph on ``texts``, then dynamic-int8 quantize."""
    import json

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from chain.arch import arch_for
    from .onnx_graph import float_layers, head_nodes, prepare, require_body_quantized, require_outputs, weight_nodes

    hf_config = json.loads((src_dir / "config.json").read_text())
    arch = arch_for(hf_config)
    src_model = src_dir / "model.onnx"
    to_quantize, report = src_model, {"fusion": None}
    if config.optimize_level and arch.ort_fusion:
        to_quantize = out_dir / "_optimized.onnx"
        optimize_graph(src_model, to_quantize, config.optimize_level, *attention_shape(hf_config),
                       model_type=arch.ort_fusion)
        report["fusion"] = arch.ort_fusion
        if texts:
            report["fusion_max_abs_diff"] = check_fused_graph(src_model, to_quantize, src_dir, texts)
    model = onnx.load(str(to_quantize))
    report.update(prepare(model))
    prepared = out_dir / "_prepared.onnx"
    onnx.save(model, str(prepared))
    if to_quantize != src_model:
        to_quantize.unlink()
    heads = head_nodes(model.graph, arch)
    ops = list(config.op_types) + (["Gather"] if config.embeddings == "int8" else [])
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # ORT's pre-processing hint
    report["reduce_range"] = resolve_reduce_range(config.reduce_range)
    quantize_dynamic(str(prepared), str(out_dir / "model.onnx"), per_channel=config.per_channel,
                     reduce_range=report["reduce_range"], weight_type=QuantType.QInt8,
                     op_types_to_quantize=ops, nodes_to_exclude=heads,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    prepared.unlink()
    if config.embeddings == "int4":
        from .onnx_int4 import quantize_gathers

        report["int4_gathers"] = quantize_gathers(out_dir / "model.onnx", config.embedding_block)
    copy_aux(src_dir, out_dir)
    after = onnx.load(str(out_dir / "model.onnx"), load_external_data=False)
    reasons = {n: HEAD_REASON for n in heads}
    if config.embeddings == "fp32":
        reasons.update({n: "embeddings: fp32 by config" for n, op in weight_nodes(model.graph).items()
                        if op == "Gather"})
    require_body_quantized(model.graph, after.graph, arch, "quantize_onnx_int8")
    require_outputs(model.graph, after.graph, "quantize_onnx_int8")
    report["float_layers"] = float_layers(model.graph, after.graph, reasons,
                                          "onnxruntime's dynamic quantizer left it float (op or type not covered)")
    return {"onnx_ops": sorted({n.op_type for n in after.graph.node}), **report}
