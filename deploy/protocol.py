"""Open Inference Protocol (KServe v2) requests and responses, JSON and binary.

``tritonclient.http`` sends tensors in the binary-data extension by default: the body is
a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensors, and
a BYTES tensor is each element as a 4-byte little-endian length plus its bytes. It
asks for binary outputs the same way (``binary_data_output`` or per-output
``binary_data``). Both forms are read and written here; every malformed request
raises ``BadRequest`` with a message the client sees in ``{"error": ...}``.

A multi-task bundle also has ``label_<task>`` / ``scores_<task>`` outputs, one pair per
head, and a request parameter ``task`` choosing which head ``label``/``scores`` answer.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

INPUT_NAME = "text"
OUTPUTS = {"label": "BYTES", "scores": "FP32"}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    max_texts: int = 256
    max_text_chars: int = 20_000  # ~ 20 pages; a model sees only max_length tokens anyway
    max_body_bytes: int = 1 << 20

    def check(self, texts: list[str]) -> None:
        if not texts:
            raise BadRequest("no texts given; send at least one")
        if len(texts) > self.max_texts:
            raise BadRequest(f"{len(texts)} texts in one request; the limit is {self.max_texts} "
                             "(split the request)", status=413)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise BadRequest(f"text {i} is {type(t).__name__}, expected a string")
            if not t.strip():
                raise BadRequest(f"text {i} is empty")
            if len(t) > self.max_text_chars:
                raise BadRequest(f"text {i} has {len(t)} characters; the limit is {self.max_text_chars}", status=413)


@dataclass
class InferRequest:
    id: str | None
    texts: list[str]
    outputs: list[str]
    binary: dict[str, bool]
    task: str | None = None  # the request's ``parameters.task``: which head label/scores answer


def task_outputs(tasks) -> dict[str, str]:
    """Output name -> datatype for every head of a multi-task model (none for one head)."""
    return {f"{kind}_{t}": dt for t in tasks for kind, dt in OUTPUTS.items()}


def _task_param(params, where: str) -> str | None:
    task = params.get("task") if isinstance(params, dict) else None
    if task is not None and (not isinstance(task, str) or not task):
        raise BadRequest(f"{where} `task` must be a task name (a string), got {task!r}")
    return task


def _json(raw: bytes):
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadRequest(f"request body is not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON ({e.msg} at char {e.pos})") from None


def decode_bytes_tensor(raw: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise BadRequest("binary BYTES tensor is truncated (length prefix cut off)")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise BadRequest("binary BYTES tensor is truncated (element shorter than its length)")
        out.append(raw[i:i + n])
        i += n
    return out


def encode_bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _utf8(b: bytes, i: int) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"text {i} is not valid UTF-8") from None


def parse_infer(body: bytes, header_length: str | None, known: dict[str, str] = OUTPUTS) -> InferRequest:
    """One v2 inference request: a single BYTES input named ``text`` of shape [n] or [n, 1];
    ``known``: the model's outputs (name -> datatype)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        if not 0 < n <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {n} does not fit a {len(body)}-byte body")
        head, binary = _json(body[:n]), body[n:]
    else:
        head, binary = _json(body), b""
    if not isinstance(head, dict):
        raise BadRequest("request must be a JSON object with an `inputs` list")
    inputs = head.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"`inputs` must be a list with one tensor named {INPUT_NAME!r}")
    t = inputs[0]
    if t.get("name") != INPUT_NAME:
        raise BadRequest(f"unknown input {t.get('name')!r}; this model takes one BYTES input {INPUT_NAME!r}")
    if t.get("datatype") != "BYTES":
        raise BadRequest(f"input {INPUT_NAME!r} must have datatype BYTES, got {t.get('datatype')!r}")
    shape = t.get("shape")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1)):
        raise BadRequest(f"input {INPUT_NAME!r} shape must be [n] or [n, 1], got {shape!r}")
    params = t.get("parameters") or {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size != len(binary):
            raise BadRequest(f"binary_data_size {size!r} does not match the {len(binary)} binary bytes sent")
        texts = [_utf8(b, i) for i, b in enumerate(decode_bytes_tensor(binary))]
    else:
        data = t.get("data")
        if not isinstance(data, list):
            raise BadRequest(f"input {INPUT_NAME!r} needs `data`: a list of strings")
        if data and all(isinstance(x, list) for x in data):  # [[...], [...]]: row-major nesting
            data = [y for x in data for y in x]
        for i, x in enumerate(data):
            if not isinstance(x, str):
                raise BadRequest(f"text {i} is {type(x).__name__}, expected a string")
        texts = data
    if shape[0] != len(texts):
        raise BadRequest(f"shape says {shape[0]} texts but {len(texts)} were sent")
    req_params = head.get("parameters") or {}
    all_binary = bool(req_params.get("binary_data_output", False)) if isinstance(req_params, dict) else False
    task = _task_param(req_params, "request parameter")
    wanted = head.get("outputs")
    if wanted is None:
        names, binary_out = list(known), {k: all_binary for k in known}
    else:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
            raise BadRequest("`outputs` must be a list of objects with a `name`")
        names = [o.get("name") for o in wanted]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadRequest(f"unknown output(s) {unknown}; this model has {sorted(known)}")
        binary_out = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", all_binary)) for o in wanted}
    rid = head.get("id")
    return InferRequest(rid if isinstance(rid, str) else None, texts, names, binary_out, task)


def _tensors(labels: list[str], probs: np.ndarray, suffix: str = "") -> dict:
    top = probs.argmax(-1)
    return {f"label{suffix}": ("BYTES", [len(top)], [labels[int(k)] for k in top]),
            f"scores{suffix}": ("FP32", list(probs.shape), probs.astype(np.float32))}


def infer_response(model: str, req: InferRequest, labels: list[str], probs: np.ndarray,
                   heads: dict[str, tuple[list[str], np.ndarray]] | None = None) -> tuple[bytes, dict]:
    """(body, headers) of the v2 response; binary outputs go after the JSON header. ``heads``
    ({task: (labels, probs)}) fill a multi-task model's ``label_<task>``/``scores_<task>``."""
    tensors = _tensors(labels, probs)
    for t, (names, p) in (heads or {}).items():
        tensors.update(_tensors(names, p, f"_{t}"))
    outs, blobs = [], []
    for name in req.outputs:
        dtype, shape, value = tensors[name]
        o = {"name": name, "datatype": dtype, "shape": shape}
        if req.binary.get(name):
            raw = (encode_bytes_tensor([s.encode() for s in value]) if dtype == "BYTES"
                   else np.ascontiguousarray(value, dtype="<f4").tobytes())
            o["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            o["data"] = value if dtype == "BYTES" else [float(x) for x in value.reshape(-1)]
        outs.append(o)
    head = {"model_name": model, "model_version": "1", "outputs": outs}
    if req.id is not None:
        head["id"] = req.id
    head_bytes = json.dumps(head).encode()
    if not blobs:
        return head_bytes, {"content-type": "application/json"}
    return head_bytes + b"".join(blobs), {"content-type": "application/octet-stream",
                                         "inference-header-content-length": str(len(head_bytes))}


def parse_predict(body: bytes) -> list[str]:
    """``/predict``: ``{"texts": ["...", ...]}`` (or ``{"text": "..."}``)."""
    return parse_predict_request(body)[0]


def parse_predict_request(body: bytes) -> tuple[list[str], str | None]:
    """``/predict``: (texts, task) of ``{"texts": [...], "task": "subj"}`` (``task`` optional)."""
    d = _json(body)
    if not isinstance(d, dict) or ("texts" not in d and "text" not in d):
        raise BadRequest('send a JSON object {"texts": ["...", ...]}')
    texts = d["texts"] if "texts" in d else [d["text"]]
    if not isinstance(texts, list):
        raise BadRequest(f"`texts` must be a list of strings, got {type(texts).__name__}")
    return texts, _task_param(d, "field")
