"""Multi-task ONNX: one encoder pass, one output per task head (``logits_<task>``).

A chain's artifact carries every task's head (``chain.heads``). Exporting each head as
its own graph would run the encoder once per task; instead the single-task graph that
optimum exports (``compress.onnx_export``) gets the head's nodes copied once per other
task, each copy reading its own head weights, all fed by the same encoder output. The
encoder part of the graph is untouched, so fusions and quantizers see exactly the graph
they see for a single task, and ``logits`` (output 0) stays the artifact's own task:
single-task consumers keep working.

Which nodes are the head is read off the graph: the nodes that lead to ``logits``
outside the base model (``model.base_model_prefix``) and depend on a head weight (an
initializer named like a head tensor, or holding its values: the exporter may rename
it, or store a Linear weight transposed). Each task's output is validated against
PyTorch with that task's head swapped in, like the single-task export.

>>> report = add_task_heads(out_dir / "model.onnx", model, parent_dir, tasks)
>>> report["heads"]["subj"]["output"]
'logits_subj'
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from chain.errors import ExportValidationError, ModelError

OWN_OUTPUT = "logits"


def output_name(task: str) -> str:
    return f"logits_{task}"


def _module_of(node_name: str) -> str:
    from .onnx_graph import node_module

    return node_module(node_name)


def head_subgraph(graph, base_prefix: str, head_state: dict) -> tuple[list, dict[str, str]]:
    """(the nodes computing ``logits`` from the encoder that depend on head weights,
    {initializer name: head tensor key}). Raises ``ModelError`` if no head weight is found."""
    from onnx import numpy_helper

    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    cone, todo, seen = [], [OWN_OUTPUT], set()
    while todo:  # the nodes upstream of logits that sit outside the base model
        name = todo.pop()
        node = producer.get(name)
        if node is None or id(node) in seen:
            continue
        mod = _module_of(node.name)
        if mod == base_prefix or mod.startswith(base_prefix + "."):
            continue
        seen.add(id(node))
        cone.append(node)
        todo.extend(node.input)
    arrays = {k: v.detach().cpu().numpy() for k, v in head_state.items()}
    weight_of: dict[str, str] = {}
    for node in cone:
        for inp in node.input:
            if inp not in inits or inp in weight_of:
                continue
            if inp in arrays:
                weight_of[inp] = inp
                continue
            value = numpy_helper.to_array(inits[inp])
            for key, arr in arrays.items():
                if value.shape == arr.shape and np.array_equal(value, arr):
                    weight_of[inp] = key
                elif value.ndim == 2 and value.shape == arr.T.shape and np.array_equal(value, arr.T):
                    weight_of[inp] = key + ".T"
    if not weight_of:
        raise ModelError("the exported graph's head reads no initializer holding the model's head weights; "
                         "cannot add other tasks' heads (export the tasks one at a time)")
    order = {id(n): i for i, n in enumerate(graph.node)}
    dependent, made = [], set(weight_of)
    for node in sorted(cone, key=lambda n: order[id(n)]):  # graph order is topological
        if any(i in made for i in node.input):
            dependent.append(node)
            made.update(node.output)
    return dependent, weight_of


def add_task_heads(onnx_path: Path, model, heads: dict[str, dict], own: str) -> dict[str, str]:
    """Rewrite ``onnx_path`` in place: for each task of ``heads`` ({task: head state}) an output
    ``logits_<task>``; ``own``'s is an Identity of ``logits``. Returns {task: output name}."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(onnx_path))
    graph = proto.graph
    if [o.name for o in graph.output][:1] != [OWN_OUTPUT]:
        raise ModelError(f"{onnx_path}: expected the first output to be {OWN_OUTPUT!r}, got "
                         f"{[o.name for o in graph.output]}")
    from chain.heads import head_state

    nodes, weight_of = head_subgraph(graph, model.base_model_prefix, head_state(model))
    outputs = {}
    for task, state in sorted(heads.items()):
        out = output_name(task)
        outputs[task] = out
        if task == own:
            graph.node.append(helper.make_node("Identity", [OWN_OUTPUT], [out], name=f"/heads/{task}/Identity"))
            n_out = int(state[_last_weight(state)].shape[0])
        else:
            missing = {k.removesuffix(".T") for k in weight_of.values()} - set(state)
            if missing:
                raise ModelError(f"head {task!r} has no tensor(s) {sorted(missing)}; its architecture differs "
                                 "from the artifact's own head")
            rename = {}
            for init_name, key in weight_of.items():
                arr = state[key.removesuffix(".T")].detach().cpu().float().numpy()
                arr = arr.T.copy() if key.endswith(".T") else arr
                new = f"heads.{task}.{init_name}"
                graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32), new))
                rename[init_name] = new
            for node in nodes:
                for o in node.output:
                    rename[o] = out if o == OWN_OUTPUT else f"{o}__{task}"
            for node in nodes:
                copy = helper.make_node(node.op_type, [rename.get(i, i) for i in node.input],
                                        [rename[o] for o in node.output], name=f"/heads/{task}{node.name}",
                                        domain=node.domain or None)
                copy.attribute.extend(node.attribute)
                graph.node.append(copy)
            n_out = int(state[_last_weight(state)].shape[0])
        graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch_size", n_out]))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))
    return outputs


def _last_weight(state: dict) -> str:
    return [k for k, v in state.items() if k.endswith("weight") and v.dim() == 2][-1]


def validate_heads(model_dir: Path, onnx_path: Path, outputs: dict[str, str], texts: list[str],
                   atol: float) -> dict[str, dict]:
    """Each task's output against PyTorch with that task's head on; raise on any mismatch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from chain.heads import swap_head_

    from .onnx_export import compare_logits, ort_session

    session = ort_session(onnx_path)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ref = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    reports, failures = {}, []
    for task, out in outputs.items():
        swap_head_(ref, model_dir, task)
        r = compare_logits(ref, session, tok, texts, atol, output=out)
        reports[task] = {k: v for k, v in r.items() if k != "failures"}
        failures += [f"{task}: {f}" for f in r["failures"]]
    if failures:
        raise ExportValidationError(f"multi-task ONNX export of {model_dir} does not match PyTorch within "
                                    f"atol={atol}: " + "; ".join(failures[:5]))
    return reports
