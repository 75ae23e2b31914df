"""ONNX graph facts shared by the ONNX quantizers: which nodes carry weights, which are the head.

``prepare(model)`` makes every weight visible to ONNX Runtime's quantizers, which only
look at a ``MatMul``/``Gather`` whose weight is an initializer:

* ``Identity`` of an initializer is bypassed: ALBERT's exporter reads the shared layer's
  weights through ``Identity`` nodes on every pass after the first, so those passes
  stayed fp32;
* ``Gemm`` with a constant B (``nn.Linear`` on 2-D input, GPT-2's ``Conv1D``) becomes
  ``MatMul`` + ``Add``: dynamic int8 and ``MatMulNBits`` have no ``Gemm`` path.

``weight_nodes`` lists (node name, op, module) for each node with a float weight, and
``float_layers`` compares two graphs to say which stayed float and why.
"""
from __future__ import annotations

import re

from chain.arch import Arch

WEIGHT_OPS = ("MatMul", "Gemm", "Gather", "Attention")


def node_module(name: str) -> str:
    """'/roberta/encoder/layer.0/attention/self/query_1/MatMul' -> 'roberta.encoder.layer.0.attention.self.query'."""
    parts = name.strip("/").split("/")[:-1]
    return ".".join(re.sub(r"_\d+$", "", p) for p in parts)


def _float_inits(graph) -> dict:
    from onnx import TensorProto

    return {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 2}


def _weight_input(node, inits: dict) -> str | None:
    idx = {"MatMul": 1, "Gemm": 1, "Gather": 0, "Attention": 1}.get(node.op_type)
    if idx is None or len(node.input) <= idx:
        return None
    return node.input[idx] if node.input[idx] in inits else None


def weight_nodes(graph) -> dict[str, str]:
    """{node name: op type} for every node whose weight is a float 2-D initializer."""
    inits = _float_inits(graph)
    return {n.name: n.op_type for n in graph.node if _weight_input(n, inits)}


def is_head(node_name: str, arch: Arch) -> bool:
    mod = node_module(node_name)
    return any(mod == h or mod.endswith("." + h) for h in arch.head)


def head_nodes(graph, arch: Arch) -> list[str]:
    return [n for n in weight_nodes(graph) if is_head(n, arch)]


def prepare(model) -> dict:
    """Bypass Identity-of-initializer and rewrite constant-B Gemm as MatMul + Add, in place."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    new_nodes, gemms = [], []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] in alias:
            continue
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type == "Gemm" and node.input[1] in inits and attrs.get("alpha", 1.0) == 1.0
                and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)):
            b = node.input[1]
            if attrs.get("transB", 0):  # (N, K) -> (K, N), a new initializer: B may be shared
                w = numpy_helper.to_array(inits[b]).T.copy()
                b = f"{b}_T"
                if b not in inits:
                    inits[b] = numpy_helper.from_array(w, b)
                    graph.initializer.append(inits[b])
            if len(node.input) > 2 and node.input[2]:
                mm_out = f"{node.output[0]}_matmul"
                new_nodes.append(helper.make_node("MatMul", [node.input[0], b], [mm_out], name=node.name))
                new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]],
                                                  name=f"{node.name}_bias"))
            else:
                new_nodes.append(helper.make_node("MatMul", [node.input[0], b], [node.output[0]], name=node.name))
            gemms.append(node.name)
            continue
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):  # transposed-away Gemm weights
        if init.name not in used and init.name not in outputs:
            graph.initializer.remove(init)
    return {"identity_bypassed": len(alias), "gemm_to_matmul": gemms}


def float_layers(before, after, reasons: dict[str, str], default: str) -> dict[str, str]:
    """{node: why} for the weight nodes of ``before`` still carrying a float weight in ``after``.

    A node counts as float when a node of the same name and op type still reads a float
    initializer; ``reasons`` explains the ones chosen on purpose, ``default`` the rest.
    """
    still = weight_nodes(after)
    return {n: reasons.get(n, default) for n, op in weight_nodes(before).items() if still.get(n) == op}


def require_body_quantized(before, after, arch: Arch, stage: str) -> None:
    """A quantizer that left every body weight float would be a silent no-op: raise instead."""
    from chain.errors import ModelError

    body = [n for n, op in weight_nodes(before).items() if op != "Gather" and not is_head(n, arch)]
    still = weight_nodes(after)
    if body and all(n in still for n in body):
        raise ModelError(f"{stage}: none of this {arch.name} graph's {len(body)} body MatMul/Gemm weights "
                         f"was quantized (e.g. {body[0]}); only the head would be touched, so nothing is saved")


def require_outputs(before, after, stage: str) -> None:
    """Every output of the parent graph (each task's ``logits_<task>``) must survive a rewrite."""
    from chain.errors import ModelError

    lost = [o.name for o in before.output if o.name not in {a.name for a in after.output}]
    if lost:
        raise ModelError(f"{stage}: the rewritten graph lost output(s) {lost}; a multi-task graph must keep "
                         "one output per task")


# Reduce ops whose ``axes`` moved from an attribute to an input in opset 18 (ReduceSum did in 13).
_REDUCE_18 = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp")


def upgrade_opset(model, target: int = 21) -> list[str]:
    """Raise the default-domain opset to ``target``, rewriting the ops whose signature changed.

    ORT's 4-bit Gather quantizer sets opset 21 (int4 tensors) without touching the graph, so
    Llama/Qwen2 RMSNorm's ``ReduceMean(axes=...)`` became invalid. Between 17 and 21 the
    changes that matter here: Reduce* take ``axes`` as an input (18) and Split without a
    ``split`` input needs ``num_outputs`` (18). Returns the rewritten node names.
    """
    from onnx import helper, numpy_helper

    import numpy as np

    default = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if default is None or default.version >= target:
        return []
    rewritten = []
    if default.version < 18:
        for node in model.graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type in _REDUCE_18:
                axes = next((a for a in node.attribute if a.name == "axes"), None)
                if axes is not None:
                    name = f"{node.name or node.output[0]}_axes"
                    model.graph.initializer.append(numpy_helper.from_array(np.array(axes.ints, np.int64), name))
                    node.attribute.remove(axes)
                    node.input.append(name)
                    rewritten.append(node.name)
            elif node.op_type == "Split" and (len(node.input) < 2 or not node.input[1]) \
                    and not any(a.name == "num_outputs" for a in node.attribute):
                node.attribute.append(helper.make_attribute("num_outputs", len(node.output)))
                rewritten.append(node.name)
    default.version = target
    if model.ir_version < 10:  # int4 tensors and opset 21 need IR 10
        model.ir_version = 10
    return rewritten


def toposort(graph) -> None:
    """Reorder ``graph.node`` so every input is produced before use (ORT's Gather quantizer
    appends the nodes it creates at the end, which ``onnx.checker`` rejects)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    needs = {id(n): set(n.input) | _outer_inputs(n) for n in pending}
    while pending:
        rest = []
        for node in pending:
            if needs[id(node)] <= ready:
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave it for the checker to name
            ordered.extend(rest)
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _outer_inputs(node) -> set[str]:
    """Names an If/Loop/Scan body reads from the enclosing graph (implicit inputs)."""
    from onnx import AttributeProto

    found = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
            local = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                found |= (set(n.input) | _outer_inputs(n)) - local
    return found
