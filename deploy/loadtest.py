"""A bounded load test of ``python -m deploy serve`` on loopback, from an async client.

For each concurrency level, ``--requests`` single-sentence ``/predict`` requests (real
SST-2 test sentences) are sent by that many concurrent client tasks; every answer is
checked against the bundle's offline prediction of the same sentence (so a mixed-up or
garbled batch shows as ``wrong``), every refusal must be an explicit 503, and anything
else (timeouts, resets, 5xx) counts as ``lost``. The offline figure is the same
bundle's batch-32 throughput in one process (``Classifier``, same threads) measured
just before the server starts, so "fraction of offline" says what HTTP, JSON and
micro-batching cost. An optional overload row serves with a tiny queue at the highest
concurrency to show refusals instead of losses.

    python -m deploy.loadtest BUNDLE --output docs/results/loadtest-2026-12-02.md
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def sst2_test(n: int) -> list[str]:
    from chain.task import builtin_task

    return builtin_task("sst2").load("test").texts[:n]


def offline(bundle: str, texts: list[str], threads: int) -> tuple[list[int], float]:
    """(labels, batch-32 texts/s) of the bundle in this process."""
    from .bundle import Bundle
    from .runtime import Classifier

    clf = Classifier(Bundle.load(bundle), threads=threads)
    labels = [int(clf.probabilities([t]).argmax(-1)[0]) for t in texts]  # batch 1: no padding effects
    batches = [texts[i:i + 32] for i in range(0, len(texts) - 31, 32)]
    clf.probabilities(batches[0])
    t0 = time.perf_counter()
    for _ in range(2):
        for b in batches:
            clf.probabilities(b)
    return labels, 2 * 32 * len(batches) / (time.perf_counter() - t0)


def start_server(bundle: str, port: int, threads: int, *flags: str) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "deploy", "serve", bundle, "--host", "127.0.0.1", "--port",
                             str(port), "--threads", str(threads), "-q", *flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180:
        if proc.poll() is not None:
            raise RuntimeError("server exited: " + proc.stderr.read()[-1000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready in 180 s")


async def level(url: str, texts: list[str], want: list[str], concurrency: int, n: int) -> dict:
    import httpx

    lat, status = [], {"ok": 0, "wrong": 0, "rejected": 0, "lost": 0}
    jobs = iter(range(n))

    async def worker(client):
        for i in jobs:
            j = i % len(texts)
            t0 = time.perf_counter()
            try:
                r = await client.post("/predict", json={"texts": [texts[j]]})
            except httpx.HTTPError:
                status["lost"] += 1
                continue
            dt = time.perf_counter() - t0
            if r.status_code == 200:
                lat.append(dt)
                status["ok" if r.json()["labels"] == [want[j]] else "wrong"] += 1
            elif r.status_code == 503 and "error" in r.json():
                status["rejected"] += 1
            else:
                status["lost"] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await client.post("/predict", json={"texts": ["warm up"]})
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1e3
    return {"concurrency": concurrency, "requests": n, **status, "wall_s": round(wall, 2),
            "throughput": round((status["ok"] + status["wrong"]) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None}


def scrape(url: str) -> dict:
    import httpx

    m = httpx.get(url + "/metrics").text
    vals = {}
    for ln in m.splitlines():
        if ln.startswith(("chainpress_batch_size_sum", "chainpress_batch_size_count", "chainpress_drift_psi")):
            k, v = ln.rsplit(" ", 1)
            vals[k] = float(v)
    return vals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(bundle: str, levels: list[int], n: int, threads: int, overload_queue: int | None) -> dict:
    from .bundle import Bundle

    labels = Bundle.load(bundle).labels
    texts = sst2_test(1821)
    want_ids, offline_tps = offline(bundle, texts[:512], threads)
    want = [labels[k] for k in want_ids]
    texts = texts[:512]
    rows, extra = [], {}
    port = free_port()
    proc = start_server(bundle, port, threads)
    url = f"http://127.0.0.1:{port}"
    try:
        for c in levels:
            before = scrape(url)
            row = asyncio.run(level(url, texts, want, c, n))
            after = scrape(url)
            calls = after["chainpress_batch_size_count"] - before["chainpress_batch_size_count"]
            row["mean_batch"] = round((after["chainpress_batch_size_sum"] - before["chainpress_batch_size_sum"])
                                      / max(calls, 1), 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
        extra["drift_psi_after_sst2_traffic"] = {k: v for k, v in scrape(url).items() if "drift" in k}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    if overload_queue:
        port = free_port()
        proc = start_server(bundle, port, threads, "--max-queue", str(overload_queue), "--max-batch-size",
                            str(min(32, overload_queue)))
        try:
            row = asyncio.run(level(f"http://127.0.0.1:{port}", texts, want, max(levels), n))
            row["note"] = f"--max-queue {overload_queue}"
            rows.append(row)
            print(json.dumps(row), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    return {"offline_b32_texts_per_s": round(offline_tps, 1), "rows": rows, **extra}


def render(res: dict, cmd: str, env: dict) -> str:
    off = res["offline_b32_texts_per_s"]
    out = ["# Load test: `deploy serve` on loopback", "",
           f"Command: `{cmd}`", "",
           f"Machine: {env['cpu']}, {env['cores']} vCPUs; server and client on the same 2 vCPUs (loopback "
           f"127.0.0.1); 1-min load average before the run {env['load_before']}, after {env['load_after']} "
           "(other jobs were running on this machine). Date: " + env["date"] + ".", "",
           f"Bundle: {env['bundle']}. Offline batch-32 throughput of the same bundle in one process, same "
           f"threads: **{off} texts/s**.", "",
           "Each request is one real SST-2 test sentence; each answer is checked against the offline "
           "prediction of that sentence (`wrong` = mismatch); `rejected` = explicit 503; `lost` = anything "
           "else (timeout, reset, other status).", "",
           "| concurrency | requests | ok | wrong | rejected (503) | lost | p50 ms | p99 ms | throughput req/s "
           "| mean batch | vs offline b32 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        frac = f"{r['throughput'] / off:.2f}" if off else "—"
        out.append(f"| {r['concurrency']}{' (' + r['note'] + ')' if r.get('note') else ''} | {r['requests']} | "
                   f"{r['ok']} | {r['wrong']} | {r['rejected']} | {r['lost']} | {r['p50_ms']} | {r['p99_ms']} | "
                   f"{r['throughput']} | {r.get('mean_batch', '—')} | {frac} |")
    out += ["", "Drift gauges after this SST-2 traffic: " + ", ".join(
        f"`{k}` = {v:.3f}" for k, v in res.get("drift_psi_after_sst2_traffic", {}).items()), "",
            "Raw results: the JSON block below.", "", "```json", json.dumps(res, indent=1), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.loadtest", description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--levels", default="1,8,32,128")
    p.add_argument("--requests", type=int, default=300, help="requests per level")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--overload-queue", type=int, default=16, help="0 = no overload row")
    p.add_argument("--output", type=Path, required=True, help="Markdown report to write")
    a = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    res = run(a.bundle, [int(x) for x in a.levels.split(",")], a.requests, a.threads, a.overload_queue or None)
    from bench.environment import environment

    e = environment(a.threads)
    env = {"cpu": e.get("cpu"), "cores": e.get("cores"), "date": f"{e.get('date')} {e.get('time')}",
           "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
           "bundle": Path(a.bundle).name}
    cmd = "python -m deploy.loadtest " + " ".join(sys.argv[1:] if argv is None else argv)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(render(res, cmd, env))
    print(f"wrote {a.output}")
    return 0 if all(r["lost"] == 0 and r["wrong"] == 0 for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
