"""``serve(bundle)``: an HTTP inference server for a bundle (FastAPI on uvicorn).

Endpoints:

* Open Inference Protocol / KServe v2, so ``tritonclient.http`` and KServe clients work
  unchanged: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``
  (metadata: one BYTES input ``text``, outputs ``label`` BYTES and ``scores`` FP32),
  ``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer`` (JSON or binary tensors);
* ``POST /predict``: ``{"texts": [...]}`` -> labels and per-label scores;

A multi-task bundle (one encoder pass, one output per task: ``compress.onnx_multitask``)
answers every head from one model call: ``/predict`` with ``"task": "subj"`` (v2: request
parameter ``task``) answers that head in ``labels``/``scores``; without it, ``labels``/
``scores`` are the bundle's own task's and ``tasks`` (v2: ``label_<task>``/``scores_<task>``
outputs) holds every head's answer. The metadata lists the tasks and their labels.
Metrics and drift watch the own task's head.
* ``GET /metrics``: Prometheus text (``metrics.py``).

Errors are ``{"error": "..."}`` with 400 (malformed), 404 (unknown model), 413 (too
large), 503 (queue full, not ready, shutting down) or 500 (the model failed); the
server keeps serving after any of them. The model's name is the bundle directory's
name unless ``ServerConfig.name`` says otherwise.

>>> serve("out/sst2-bundle", host="127.0.0.1", port=8000)
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from chain.errors import SpecError

from .batching import BatchConfig, MicroBatcher, QueueFull, ShuttingDown
from .bundle import Bundle
from .protocol import (INPUT_NAME, OUTPUTS, BadRequest, Limits, infer_response, parse_infer, parse_predict_request,
                       task_outputs)

log = logging.getLogger("chainpress.deploy.server")
CONFIG_ENV = "CHAINPRESS_SERVE_CONFIG"  # how --workers hands the config to each worker process


@dataclass
class ServerConfig:
    bundle: str = ""
    name: str | None = None
    threads: int = 2
    batch: BatchConfig = field(default_factory=BatchConfig)
    limits: Limits = field(default_factory=Limits)
    drift_window: int = 500
    drift_threshold: float = 0.2
    drift_min_samples: int = 100
    slo_p99_ms: float = 500.0
    verify_checksums: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.batch, dict):
            self.batch = BatchConfig(**self.batch)
        if isinstance(self.limits, dict):
            self.limits = Limits(**self.limits)
        if self.threads < 1 or self.slo_p99_ms <= 0 or self.drift_threshold <= 0:
            raise SpecError("threads must be >= 1 and slo_p99_ms, drift_threshold > 0")

    def model_name(self) -> str:
        return self.name or Path(self.bundle).resolve().name


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes without reading it all into memory."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"request body of {declared} bytes exceeds the {limit}-byte limit", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body exceeds the {limit}-byte limit", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(cfg: ServerConfig):
    from .drift import DriftMonitor
    from .metrics import Metrics, SloMonitor
    from .runtime import Classifier

    bundle = Bundle.load(cfg.bundle, verify=cfg.verify_checksums)
    name = cfg.model_name()
    state: dict = {"ready": False}
    drift = (DriftMonitor(bundle.reference, cfg.drift_window, cfg.drift_threshold, cfg.drift_min_samples)
             if bundle.reference else None)
    if drift is None:
        log.warning("bundle %s has no drift reference (%s): drift is not monitored", name,
                    bundle.meta.get("reference_note", "none stored"))
    metrics = Metrics(bundle.labels, drift, SloMonitor(cfg.slo_p99_ms / 1e3))
    tasks = {t: list(h["labels"]) for t, h in bundle.tasks.items()}  # own task first; {}: one head
    own_n = len(bundle.labels)

    def split(rows) -> dict:
        """A multi-task batch row (every head's probabilities side by side) cut per task."""
        out, i = {}, 0
        for t, labels in tasks.items():
            out[t], i = rows[:, i:i + len(labels)], i + len(labels)
        return out

    def choose(task: str | None) -> str | None:
        if task is None or task in tasks or (not tasks and task == bundle.task):
            return task
        serves = sorted(tasks) if tasks else [bundle.task]
        raise BadRequest(f"unknown task {task!r}; model {name!r} serves {serves}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        clf = Classifier(bundle, threads=cfg.threads)
        fn = clf.stacked if tasks else clf.probabilities
        fn(["warm up"])  # first call allocates; keep it out of a request
        batcher = MicroBatcher(fn, cfg.batch, on_batch=lambda stats, rows: metrics.on_batch(stats, rows[:, :own_n]))
        await batcher.start()
        state.update(ready=True, batcher=batcher)
        log.info("serving %s (%d labels) from %s", name, len(bundle.labels), bundle.path)
        yield
        state["ready"] = False
        await batcher.stop()  # answers everything already queued
        log.info("stopped: every queued request was answered")

    app = FastAPI(title=f"chainpress: {name}", lifespan=lifespan, docs_url=None, redoc_url=None)
    metadata = {"name": name, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "scores", "datatype": "FP32", "shape": [-1, len(bundle.labels)]}]
                + [o for t, labels in tasks.items() for o in (
                    {"name": f"label_{t}", "datatype": "BYTES", "shape": [-1]},
                    {"name": f"scores_{t}", "datatype": "FP32", "shape": [-1, len(labels)]})],
                "parameters": {"labels": bundle.labels, "max_length": bundle.max_length,
                               **({"task": bundle.task, "tasks": tasks} if tasks else {})}}
    known = {**OUTPUTS, **task_outputs(tasks)}

    async def run(endpoint: str, request: Request, handler):
        t0 = time.perf_counter()
        try:
            resp = await handler()
        except BadRequest as e:
            metrics.rejections.labels(reason="too_large" if e.status == 413 else "bad_request").inc()
            resp = error(e.status, str(e))
        except (QueueFull, ShuttingDown) as e:
            metrics.rejections.labels(reason="queue_full" if isinstance(e, QueueFull) else "shutting_down").inc()
            resp = error(503, str(e))
            resp.headers["retry-after"] = "1"
        except Exception as e:  # the model failed; say so, keep serving
            log.exception("inference failed")
            resp = error(500, f"inference failed: {type(e).__name__}: {e}")
        metrics.on_request(endpoint, resp.status_code, time.perf_counter() - t0)
        return resp

    def check_model(model: str, version: str | None = None) -> None:
        if model != name:
            raise BadRequest(f"unknown model {model!r}; this server serves {name!r}", status=404)
        if version not in (None, "1"):
            raise BadRequest(f"model {name!r} has no version {version!r}; it has version '1'", status=404)

    async def predict_probs(texts: list[str]):
        if not state["ready"]:
            raise ShuttingDown("the model is not ready")
        cfg.limits.check(texts)
        return await state["batcher"].submit(texts)

    @app.get("/v2")
    async def server_metadata():
        return {"name": "chainpress", "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(model: str, version: str | None = None):
        try:
            check_model(model, version)
        except BadRequest as e:
            return error(e.status, str(e))
        return metadata

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str | None = None):
        try:
            check_model(model, version)
        except BadRequest as e:
            return error(e.status, str(e))
        return JSONResponse({"name": name, "ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def infer(model: str, request: Request, version: str | None = None):
        async def handle():
            check_model(model, version)
            body = await read_body(request, cfg.limits.max_body_bytes)
            req = parse_infer(body, request.headers.get("inference-header-content-length"), known)
            task = choose(req.task)
            probs = await predict_probs(req.texts)
            if not tasks:
                content, headers = infer_response(name, req, bundle.labels, probs)
            else:
                per = split(probs)
                t = task or next(iter(tasks))
                content, headers = infer_response(name, req, tasks[t], per[t],
                                                  {k: (tasks[k], p) for k, p in per.items()})
            return Response(content, headers=headers)
        return await run("infer", request, handle)

    @app.post("/predict")
    async def predict(request: Request):
        async def handle():
            texts, task = parse_predict_request(await read_body(request, cfg.limits.max_body_bytes))
            task = choose(task)
            probs = await predict_probs(texts)
            if not tasks:
                return JSONResponse({"model": name, **answer(bundle.labels, probs)})
            per = split(probs)
            if task is not None:
                return JSONResponse({"model": name, "task": task, **answer(tasks[task], per[task])})
            own = next(iter(tasks))
            return JSONResponse({"model": name, "task": own, **answer(tasks[own], per[own]),
                                 "tasks": {t: answer(tasks[t], p) for t, p in per.items()}})
        return await run("predict", request, handle)

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        batcher = state.get("batcher")
        return Response(metrics.render(batcher.depth if batcher else 0), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics, app.state.drift, app.state.model_name = metrics, drift, name
    return app


def answer(labels: list[str], probs) -> dict:
    """``/predict``'s labels and per-label scores for one head."""
    return {"labels": [labels[int(k)] for k in probs.argmax(-1)],
            "scores": [dict(zip(labels, map(float, row))) for row in probs]}


def app_from_env():
    """The app factory each ``--workers`` process calls (``uvicorn --factory``)."""
    return create_app(ServerConfig(**json.loads(os.environ[CONFIG_ENV])))


def serve(cfg: ServerConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "warning", graceful_s: float = 30.0) -> None:
    """Run until SIGINT/SIGTERM; then stop accepting, answer in-flight requests, exit."""
    import uvicorn

    Bundle.load(cfg.bundle, verify=cfg.verify_checksums)  # bad input fails here, before any worker starts
    common = dict(host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                  timeout_graceful_shutdown=graceful_s)
    if workers == 1:
        uvicorn.run(create_app(cfg), **common)
        return
    with tempfile.TemporaryDirectory(prefix="chainpress-metrics-") as d:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = d  # read by prometheus-client in every worker
        os.environ[CONFIG_ENV] = json.dumps(asdict(cfg))
        uvicorn.run("deploy.server:app_from_env", factory=True, workers=workers, **common)

