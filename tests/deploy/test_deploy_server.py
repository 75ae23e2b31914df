"""The server, started on loopback: KServe v2 via the real tritonclient, plain JSON,
bad input, overload, drift, metrics and graceful shutdown."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from deploy.batching import BatchConfig
from deploy.server import ServerConfig
from tests.conftest import REPO, SST2

LABELS = ["negative", "positive"]


def sst2_texts(split: str, n: int, start: int = 0) -> list[str]:
    lines = (SST2 / f"{split}.tsv").read_text().splitlines()[1 + start:1 + start + n]
    return [ln.split("\t", 1)[1] for ln in lines]


def trec_texts(n: int) -> list[str]:
    lines = (REPO / "chain" / "data" / "trec" / "test.tsv").read_text().splitlines()[1:1 + n]
    return [ln.split("\t", 1)[1] for ln in lines]


def wait_ready(url: str, proc=None, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server not ready in time")


def start_cli(bundle_dir, port: int, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "deploy", "serve", str(bundle_dir), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))


@pytest.fixture(scope="module")
def cli_server(bundle_dir):
    """``python -m deploy serve BUNDLE`` (the real command) on a free loopback port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_cli(bundle_dir, port, "--threads", "1")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_tritonclient_and_json_answers_equal_offline_predictions(cli_server, bundle_dir, offline):
    import tritonclient.http as th

    url, port = cli_server
    name = bundle_dir.name
    texts = sst2_texts("test", 24) + ["héllo wörld ✓", "?"]
    want = offline(texts)
    c = th.InferenceServerClient(f"127.0.0.1:{port}")
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(name)
    meta = c.get_model_metadata(name)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    for binary in (True, False):  # tritonclient's default binary tensors, and pure JSON
        x = th.InferInput("text", [len(texts)], "BYTES")
        x.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
        outs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("label", "scores")]
        r = c.infer(name, [x], outputs=outs, request_id="r1")
        assert [b.decode() if isinstance(b, bytes) else b for b in r.as_numpy("label")] == [LABELS[k] for k in want.argmax(-1)]
        np.testing.assert_allclose(r.as_numpy("scores"), want, atol=1e-5)
        assert r.get_response()["id"] == "r1"
    r = c.infer(name, [x])  # no outputs named: all of them, binary
    np.testing.assert_allclose(r.as_numpy("scores"), want, atol=1e-5)
    j = httpx.post(url + "/predict", json={"texts": texts}).json()
    assert j["labels"] == [LABELS[k] for k in want.argmax(-1)]
    np.testing.assert_allclose([[s[lab] for lab in LABELS] for s in j["scores"]], want, atol=1e-5)


def test_concurrent_requests_are_batched_and_not_mixed_up(cli_server, offline):
    url, _ = cli_server
    texts = sst2_texts("test", 96, start=100)
    want = offline(texts)

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*[client.post("/predict", json={"texts": texts[i:i + 3]})
                                          for i in range(0, len(texts), 3)])
    got = [lab for r in asyncio.run(go()) for lab in r.json()["labels"]]
    assert got == [LABELS[k] for k in want.argmax(-1)]
    m = httpx.get(url + "/metrics").text
    sizes = [ln for ln in m.splitlines() if ln.startswith("chainpress_batch_size_bucket")]
    assert sizes and 'le="1.0"' in sizes[0]
    count = float(next(ln for ln in m.splitlines() if ln.startswith("chainpress_batch_size_count")).split()[-1])
    total = float(next(ln for ln in m.splitlines() if ln.startswith("chainpress_batch_size_sum")).split()[-1])
    assert total / count > 1.5  # texts from concurrent requests shared model calls


BAD = [
    ("empty text", "/predict", json.dumps({"texts": ["  "]}).encode(), {}, 400, "text 0 is empty"),
    ("no texts", "/predict", b'{"texts": []}', {}, 400, "no texts"),
    ("10,000 texts", "/predict", json.dumps({"texts": ["fine"] * 10_000}).encode(), {}, 413, "limit is 256"),
    ("1 MB text", "/predict", json.dumps({"text": "x" * 1_000_000}).encode(), {}, 413, "limit"),
    ("2 MB body", "/predict", b"{" + b" " * 2_000_000 + b"}", {}, 413, "byte limit"),
    ("number", "/predict", b'{"texts": [1, 2]}', {}, 400, "text 0 is int"),
    ("texts object", "/predict", b'{"texts": {"a": 1}}', {}, 400, "must be a list"),
    ("not json", "/predict", b"texts=hello", {}, 400, "not valid JSON"),
    ("non-UTF-8", "/predict", b'{"texts": ["\xff\xfe"]}', {}, 400, "not valid UTF-8"),
    ("wrong dtype", "/v2/models/MODEL/infer",
     json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode(), {}, 400,
     "datatype BYTES"),
    ("shape lies", "/v2/models/MODEL/infer",
     json.dumps({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}).encode(), {}, 400,
     "shape says 3"),
    ("binary non-UTF-8", "/v2/models/MODEL/infer", None, {}, 400, "not valid UTF-8"),
    ("unknown model", "/v2/models/nope/infer",
     json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode(), {}, 404,
     "unknown model 'nope'"),
    ("unknown output", "/v2/models/MODEL/infer", json.dumps({"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "x"}]}).encode(),
     {}, 400, "unknown output"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving(cli_server, bundle_dir, case):
    url, _ = cli_server
    _, path, body, headers, status, message = case
    path = path.replace("MODEL", bundle_dir.name)
    if body is None:  # binary tensor extension with an invalid UTF-8 element
        head = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": 6}}]}).encode()
        body, headers = head + b"\x02\x00\x00\x00\xff\xfe", {"Inference-Header-Content-Length": str(len(head))}
    r = httpx.post(url + path, content=body, headers={"content-type": "application/json", **headers}, timeout=30)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert httpx.post(url + "/predict", json={"texts": ["still here"]}).status_code == 200


def test_overload_answers_every_request_or_503_none_lost_or_garbled(in_process_server, bundle_dir, offline):
    cfg = ServerConfig(bundle=str(bundle_dir), threads=1, batch=BatchConfig(max_batch_size=4, max_queue_delay_ms=20,
                                                                              max_queue=8))
    url, _ = in_process_server(cfg)
    texts = sst2_texts("test", 200, start=300)
    want = [LABELS[k] for k in offline(texts).argmax(-1)]

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=200)) as client:
            return await asyncio.gather(*[client.post("/predict", json={"texts": [t]}) for t in texts])
    rs = asyncio.run(go())
    ok = [i for i, r in enumerate(rs) if r.status_code == 200]
    refused = [i for i, r in enumerate(rs) if r.status_code == 503]
    assert len(ok) + len(refused) == len(texts)  # nothing else: no 500, no lost request
    assert ok and refused
    assert all(rs[i].json()["labels"] == [want[i]] for i in ok)
    assert all("queue full" in rs[i].json()["error"] and rs[i].headers["retry-after"] == "1" for i in refused)
    m = httpx.get(url + "/metrics").text
    assert f'chainpress_rejections_total{{reason="queue_full"}} {float(len(refused))}' in m


def metric(text: str, name: str) -> float:
    return float(next(ln for ln in text.splitlines() if ln.startswith(name + " ") or ln.startswith(name + "{")
                      ).split()[-1])


def test_drift_gauge_low_on_sst2_and_alert_on_trec(in_process_server, bundle_dir, caplog):
    cfg = ServerConfig(bundle=str(bundle_dir), threads=1, drift_window=300, drift_min_samples=100)
    caplog.set_level(logging.INFO, logger="chainpress.deploy.drift")
    url, _ = in_process_server(cfg)
    test = sst2_texts("test", 300)
    for i in range(0, len(test), 20):
        assert httpx.post(url + "/predict", json={"texts": test[i:i + 20]}).status_code == 200
    m = httpx.get(url + "/metrics").text
    low = max(metric(m, 'chainpress_drift_psi{signal="label"}'), metric(m, 'chainpress_drift_psi{signal="confidence"}'))
    assert metric(m, "chainpress_drift_window_samples") == 300
    assert low < 0.1 and metric(m, "chainpress_drift_alert") == 0
    assert not [r for r in caplog.records if "drift alert" in r.getMessage()]
    questions = trec_texts(300)
    for i in range(0, len(questions), 20):
        assert httpx.post(url + "/predict", json={"texts": questions[i:i + 20]}).status_code == 200
    m = httpx.get(url + "/metrics").text
    high = max(metric(m, 'chainpress_drift_psi{signal="label"}'), metric(m, 'chainpress_drift_psi{signal="confidence"}'))
    assert high > 0.2 and metric(m, "chainpress_drift_alert") == 1 and metric(m, "chainpress_drift_alerts_total") >= 1
    alerts = [r for r in caplog.records if "drift alert" in r.getMessage()]
    assert alerts and alerts[0].levelno == logging.WARNING


def test_slo_breach_is_a_gauge_and_a_warning(in_process_server, bundle_dir, caplog):
    cfg = ServerConfig(bundle=str(bundle_dir), threads=1, slo_p99_ms=0.01)  # 10 us: every request breaches
    caplog.set_level(logging.WARNING, logger="chainpress.deploy.slo")
    url, _ = in_process_server(cfg)
    for _ in range(60):
        httpx.post(url + "/predict", json={"texts": ["fine"]})
    m = httpx.get(url + "/metrics").text
    assert metric(m, "chainpress_slo_breach") == 1 and metric(m, "chainpress_slo_latency_p99_seconds") > 1e-5
    assert any("latency SLO breach" in r.getMessage() for r in caplog.records)
    for series in ("chainpress_requests_total", "chainpress_request_seconds_bucket", "chainpress_queue_seconds_bucket",
                   "chainpress_model_seconds_bucket", "chainpress_queue_depth", 'chainpress_predictions_total{label=',
                   "chainpress_confidence_bucket"):
        assert series in m, series


def test_sigterm_answers_in_flight_requests_then_exits(bundle_dir, port, offline):
    proc = start_cli(bundle_dir, port, "--threads", "1", "--max-queue-delay-ms", "1500", "--max-batch-size", "64")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    texts = sst2_texts("dev", 12)
    want = [LABELS[k] for k in offline(texts).argmax(-1)]

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            pending = [asyncio.create_task(client.post("/predict", json={"texts": [t]})) for t in texts]
            t0 = time.monotonic()  # wait until the server holds all of them (1.5 s batch window)
            while metric((await client.get("/metrics")).text, "chainpress_queue_depth") < len(texts):
                assert time.monotonic() - t0 < 30
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*pending)
    rs = asyncio.run(go())
    assert [r.status_code for r in rs] == [200] * len(texts)
    assert [r.json()["labels"][0] for r in rs] == want
    # uvicorn finishes the graceful shutdown, then re-raises the signal: exit status = SIGTERM
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "stopped: every queued request was answered" in proc.stderr.read()


@pytest.mark.slow
def test_workers_share_the_port_and_metrics(bundle_dir, port):
    proc = start_cli(bundle_dir, port, "--threads", "1", "--workers", "2")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        for _ in range(20):
            assert httpx.post(url + "/predict", json={"texts": ["a fine film"]}).status_code == 200
        m = httpx.get(url + "/metrics").text
        assert metric(m, 'chainpress_requests_total{code="200",endpoint="predict"}') == 20  # summed over workers
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
