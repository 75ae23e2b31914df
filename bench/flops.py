"""How close the best output comes to the machine: achieved GOP/s at batch 32 vs a measured peak.

A speed-up says how much faster than the reference; it does not say how much is left.
The work of one batch is counted from the model's own shapes (a pruned model has
smaller matrices, so it is counted as it is) and the real padded token counts of the
very batches bench timed: 2·tokens·in·out per linear layer inside the blocks, 4·B·L²·(query
width) per block for the attention scores and context, 2·B·in·out for the head (one
vector per sentence). Embedding lookups, LayerNorm, softmax and GELU are not counted
(they are not multiply-accumulates), so the figure is a lower bound on the work done.
The peak is measured here, not quoted from a datasheet: a large fp32 ``torch.mm`` and a
large ONNX Runtime ``MatMulInteger`` (uint8 x int8, the op our int8 graphs use), with
the same thread count.
"""
from __future__ import annotations

import time

import numpy as np


def _in_out(mod) -> tuple[int, int]:
    w = mod.weight  # nn.Linear stores (out, in); GPT-2's Conv1D (in, out)
    return (w.shape[0], w.shape[1]) if type(mod).__name__ == "Conv1D" else (w.shape[1], w.shape[0])


def batch_ops(model, batch: int, length: int) -> float:
    """Multiply-accumulate work (x2, in ops) of one forward pass on a (batch, length) input."""
    from chain.arch import arch_for
    from compress.walker import linear_layers

    arch = arch_for(model)
    blocks_path = arch.full(model, arch.blocks)
    blocks = model.get_submodule(blocks_path)
    tokens = batch * length
    ops = 0.0
    for name, mod in linear_layers(model, kinds=arch.linear_kinds):
        n_in, n_out = _in_out(mod)
        per = tokens if name.startswith(blocks_path + ".") else batch
        ops += 2.0 * per * n_in * n_out
    a = arch.attention
    for block in blocks:
        width = _in_out(block.get_submodule(a.q))[1]
        if a.q == a.k:  # fused QKV: the query is a third of the projection
            width //= 3
        ops += 4.0 * batch * length * length * width
    if arch.shared_layers:  # ALBERT applies its one block at every depth
        layers = getattr(model.config, arch.layers_attr)
        ops += (layers - len(blocks)) * (ops / len(blocks))
    return ops


def achieved(model, b32_batches: list[dict], samples_per_s: float) -> dict:
    """GOP/s of a throughput figure measured on ``b32_batches`` (numpy encodings)."""
    shapes = [enc["input_ids"].shape for enc in b32_batches]
    per_batch = float(np.mean([batch_ops(model, b, n) for b, n in shapes]))
    samples = float(np.mean([b for b, _ in shapes]))
    return {"gops_per_batch": round(per_batch / 1e9, 3), "mean_padded_length": float(np.mean([n for _, n in shapes])),
            "achieved_gops": round(per_batch * samples_per_s / samples / 1e9, 1)}


def _best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def peak_fp32(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of an n x n x n fp32 torch.mm with ``threads`` threads (the best of ``repeats``)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        return 2 * n ** 3 / _best_of(lambda: torch.mm(a, b), repeats) / 1e9
    finally:
        torch.set_num_threads(old)


def peak_int8(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """GOP/s of an n x n x n ONNX Runtime MatMulInteger (uint8 activations, int8 weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.onnx_export import ort_session

    w = np.random.default_rng(0).integers(-127, 127, (n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "peak",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "peak.onnx"
        onnx.save(model, str(path))
        sess = ort_session(path, threads)
    x = np.random.default_rng(1).integers(0, 255, (n, n), dtype=np.uint8)
    return 2 * n ** 3 / _best_of(lambda: sess.run(None, {"x": x}), repeats) / 1e9


def precision_of(row: dict) -> str:
    name = f"{row.get('name', '')} {row.get('backend', '')}"
    return "int8" if "int8" in name else ("int4" if "int4" in name else "fp32")


PEAKS = {"fp32": ("fp32 torch.mm", peak_fp32), "int8": ("int8 ONNX Runtime MatMulInteger", peak_int8)}


def compute_report(row: dict, model, b32_batches: list[dict], threads: int) -> dict:
    """results["compute"]: the batch-32 pick's achieved GOP/s beside this machine's peak."""
    out = {"row": row["name"], "precision": precision_of(row), "threads": threads,
           **achieved(model, b32_batches, row["throughput"]["samples_per_s"])}
    if out["precision"] in PEAKS:
        what, fn = PEAKS[out["precision"]]
        out["peak"], out["peak_gops"] = what, round(fn(threads), 1)
        out["fraction_of_peak"] = round(out["achieved_gops"] / out["peak_gops"], 3)
    return out


def markdown(c: dict) -> list[str]:
    text = (f"`{c['row']}` ({c['precision']}, the batch-32 pick): {c['gops_per_batch']:g} GOP per batch of 32 "
            f"(mean padded length {c['mean_padded_length']:.1f}; linear layers and attention products, from its "
            f"shapes), so {c['achieved_gops']:g} GOP/s at its measured throughput")
    if "peak_gops" in c:
        text += (f"; this machine's measured peak ({c['peak']}, {c['threads']} threads): {c['peak_gops']:g} GOP/s, "
                 f"i.e. {100 * c['fraction_of_peak']:.0f}% of peak")
    return ["## Compute", "", text + ".", ""]
