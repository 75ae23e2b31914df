"""An NVIDIA Triton Inference Server model repository for the onnxruntime (or openvino) backend.

Layout (what ``tritonserver --model-repository=DIR`` expects)::

    DIR/<name>/config.pbtxt        model config: inputs, outputs, dynamic batching, instances
    DIR/<name>/1/model.onnx        version 1 of the model (openvino backend: model.xml + model.bin)
    DIR/<name>/labels.txt          one label per line: Triton's classification extension
    DIR/<name>/tokenizer/          the tokenizer (a non-numeric folder: Triton skips it)
    DIR/README.md                  how to tokenize and call it

``backend="openvino"`` puts the OpenVINO IR of the ``openvino`` export target there instead,
for when OpenVINO is the runtime bench chose. Either backend takes token ids, not text: the client tokenizes with the
bundled ``tokenizer/`` (``AutoTokenizer.from_pretrained``, ``truncation=True``,
``max_length`` from the README). The config is checked by parsing it with the
``ModelConfig`` protobuf that ships in ``tritonclient`` and by comparing its inputs and
outputs with the ONNX graph's.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from chain.errors import ExportValidationError, SpecError

from .bundle import TOKENIZER_FILES, Bundle, write_checksums

ONNX_TO_TRITON = {1: "TYPE_FP32", 7: "TYPE_INT64", 6: "TYPE_INT32", 10: "TYPE_FP16", 11: "TYPE_FP64"}
OV_TO_TRITON = {"f32": "TYPE_FP32", "i64": "TYPE_INT64", "i32": "TYPE_INT32", "f16": "TYPE_FP16", "f64": "TYPE_FP64"}
BACKENDS = ("onnxruntime", "openvino")


def model_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SpecError(f"Triton model name {name!r} must be letters, digits, '_', '.', '-'; give --name")
    return name


def graph_io(model_path: Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of the ONNX graph as name / Triton type / dims without the batch axis."""
    import onnx

    g = onnx.load(str(model_path), load_external_data=False).graph
    init = {i.name for i in g.initializer}

    def rows(values):
        out = []
        for v in values:
            if v.name in init:
                continue
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim][1:]
            out.append({"name": v.name, "data_type": ONNX_TO_TRITON.get(t.elem_type, f"onnx-{t.elem_type}"),
                        "dims": dims})
        return out

    return rows(g.input), rows(g.output)


def ir_io(xml: Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an OpenVINO IR, like ``graph_io``."""
    import openvino as ov

    from .openvino_target import port_name

    m = ov.Core().read_model(str(xml))

    def rows(ports):
        return [{"name": port_name(p), "data_type": OV_TO_TRITON.get(p.get_element_type().get_type_name(),
                                                                      f"ov-{p.get_element_type()}"),
                 "dims": [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()][1:]} for p in ports]

    return rows(m.inputs), rows(m.outputs)


def _backend_parameters(cfg) -> list[str]:
    if getattr(cfg, "backend", "onnxruntime") == "openvino":
        return [f'parameters {{ key: "INFERENCE_NUM_THREADS" value: {{ string_value: "{cfg.threads}" }} }}',
                'parameters { key: "PERFORMANCE_HINT" value: { string_value: "LATENCY" } }']
    return [f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{cfg.threads}" }} }}',
            'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }']


def render_config(name: str, inputs: list[dict], outputs: list[dict], cfg, num_labels: int) -> str:
    """config.pbtxt text. Output dims are [num_labels] (the graph says so only symbolically)."""
    def tensor(t: dict, extra: str = "") -> str:
        return (f'  {{\n    name: "{t["name"]}"\n    data_type: {t["data_type"]}\n'
                f'    dims: [ {", ".join(str(d) for d in t["dims"])} ]\n{extra}  }}')

    outs = [{**o, "dims": [num_labels]} for o in outputs]
    preferred = sorted({b for b in (cfg.max_batch_size // 4, cfg.max_batch_size // 2, cfg.max_batch_size) if b >= 1})
    return "\n".join([
        f'name: "{name}"',
        f'backend: "{getattr(cfg, "backend", "onnxruntime")}"',
        f"max_batch_size: {cfg.max_batch_size}",
        "input [\n" + ",\n".join(tensor(t) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(tensor(t, '    label_filename: "labels.txt"\n') for t in outs) + "\n]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
        f"  max_queue_delay_microseconds: {cfg.max_queue_delay_us}",
        "}",
        f"instance_group [\n  {{\n    count: {cfg.instances}\n    kind: KIND_CPU\n  }}\n]",
        *_backend_parameters(cfg),
        'version_policy: { latest: { num_versions: 1 } }',
        ""])


def parse_config(text: str):
    """Parse config.pbtxt with tritonclient's ModelConfig protobuf (needs tritonclient[grpc])."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def check_config(text: str, inputs: list[dict], outputs: list[dict], num_labels: int) -> dict:
    """Parse, then compare with the graph; raise ``ExportValidationError`` listing every mismatch."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):
        return {"parsed": False, "why": "tritonclient[grpc] is not installed: config.pbtxt was not parsed"}
    from google.protobuf import text_format

    try:
        mc = parse_config(text)
    except text_format.ParseError as e:
        raise ExportValidationError(f"config.pbtxt does not parse as a Triton ModelConfig: {e}") from None
    problems = []
    dt = model_config_pb2.DataType
    got_in = {i.name: (dt.Name(i.data_type), list(i.dims)) for i in mc.input}
    for t in inputs:
        if got_in.get(t["name"]) != (t["data_type"], t["dims"]):
            problems.append(f"input {t['name']}: config {got_in.get(t['name'])} vs graph {(t['data_type'], t['dims'])}")
    got_out = {o.name: (dt.Name(o.data_type), list(o.dims)) for o in mc.output}
    for t in outputs:
        if got_out.get(t["name"]) != (t["data_type"], [num_labels]):
            problems.append(f"output {t['name']}: config {got_out.get(t['name'])}")
    if len(got_in) != len(inputs) or len(got_out) != len(outputs):
        problems.append("config and graph have different numbers of inputs/outputs")
    if problems:
        raise ExportValidationError("config.pbtxt disagrees with the model's graph: " + "; ".join(problems))
    return {"parsed": True, "backend": mc.backend, "max_batch_size": mc.max_batch_size,
            "inputs": list(got_in), "outputs": list(got_out)}


def write_repository(bundle: Bundle, repo: Path, name: str, cfg) -> dict:
    """Lay ``bundle`` out as a Triton model repository under ``repo``."""
    name = model_name(name)
    mdir = repo / name
    (mdir / "1").mkdir(parents=True)
    if bundle.model_file.suffix == ".xml":  # the openvino backend's file names
        shutil.copy2(bundle.model_file, mdir / "1" / "model.xml")
        shutil.copy2(bundle.model_file.with_suffix(".bin"), mdir / "1" / "model.bin")
        inputs, outputs = ir_io(mdir / "1" / "model.xml")
    else:
        shutil.copy2(bundle.model_file, mdir / "1" / "model.onnx")
        inputs, outputs = graph_io(mdir / "1" / "model.onnx")
    (mdir / "labels.txt").write_text("".join(f"{label}\n" for label in bundle.labels))
    (mdir / "tokenizer").mkdir()
    for f in TOKENIZER_FILES + ("config.json",):
        if (bundle.path / f).is_file():
            shutil.copy2(bundle.path / f, mdir / "tokenizer" / f)
    for t in inputs:
        if t["data_type"] != "TYPE_INT64":
            raise ExportValidationError(f"graph input {t['name']} is {t['data_type']}; expected int64 token ids")
    text = render_config(name, inputs, outputs, cfg, len(bundle.labels))
    (mdir / "config.pbtxt").write_text(text)
    check = check_config(text, inputs, outputs, len(bundle.labels))
    meta = {k: bundle.meta[k] for k in ("labels", "max_length", "inputs", "outputs", "source", "lineage", "reference")}
    (repo / "chainpress-export.json").write_text(json.dumps({"target": "triton", "model": name,
                                                            "config_check": check, **meta}, indent=2))
    (repo / "README.md").write_text(_readme(name, bundle, inputs, cfg))
    sums = write_checksums(repo)
    return {"model": name, "files": len(sums), "config_check": check}


def _readme(name: str, bundle: Bundle, inputs: list[dict], cfg) -> str:
    ids = ", ".join(t["name"] for t in inputs)
    return f"""# Triton model repository: {name}

Start: `tritonserver --model-repository=$PWD` ({getattr(cfg, "backend", "onnxruntime")} backend, CPU instances: {cfg.instances}, dynamic
batching up to {cfg.max_batch_size} with {cfg.max_queue_delay_us} us queue delay).

Tokenize on the client with the bundled tokenizer, exactly as the model was evaluated:

```python
import numpy as np, tritonclient.http as th
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained("{name}/tokenizer")
enc = tok(["a gripping film"], padding=True, truncation=True, max_length={bundle.max_length}, return_tensors="np")
inputs = []
for k in [{", ".join(repr(t["name"]) for t in inputs)}]:
    x = th.InferInput(k, enc[k].shape, "INT64"); x.set_data_from_numpy(enc[k].astype(np.int64)); inputs.append(x)
out = th.InferenceServerClient("localhost:8000").infer("{name}", inputs)
logits = out.as_numpy("{bundle.meta['outputs'][0]}")   # (batch, {len(bundle.labels)})
```

Inputs: {ids} (INT64, batch x tokens, at most {bundle.max_length} tokens). Output: {bundle.meta['outputs'][0]}
(FP32, batch x {len(bundle.labels)}); labels in `{name}/labels.txt`: {", ".join(bundle.labels)}.
Check the files: `sha256sum -c checksums.sha256`.
"""
