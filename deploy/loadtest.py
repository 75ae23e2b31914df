"""A bounded load test of ``python -m deploy serve`` on loopback, from an async client.

For each concurrency level, ``--requests`` single-sentence ``/predict`` requests (real
SST-2 test sentences) are sent by that many concurrent client tasks; every answer is
checked against the bundle's offline prediction of the same sentence (so a mixed-up or
garbled batch shows as ``garbled``), every refusal must be an explicit 503, and anything
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

# How far an answer may be from the sentence's own batch-1 probabilities and still be its
# answer: batching moves fp32 scores by ~1e-6, but a dynamic-int8 graph computes its
# activation scales over the whole batch, so batch-mates move its scores (by ~0.1 on the
# fine-tuned MiniLM). The tolerance is twice what offline batching moved them (batch 1 vs
# file-order batches of 32), and at least 1e-4.
MIN_TOLERANCE = 1e-4


def sst2_test(n: int) -> list[str]:
    from chain.task import builtin_task

    return builtin_task("sst2").load("test").texts[:n]


def offline(bundle: str, texts: list[str], threads: int) -> tuple[np.ndarray, float, float]:
    """(probabilities at batch 1, batch-32 texts/s, max |batch-32 - batch-1| probability)."""
    from .bundle import Bundle
    from .runtime import Classifier

    clf = Classifier(Bundle.load(bundle), threads=threads)
    probs = np.concatenate([clf.probabilities([t]) for t in texts])  # batch 1: no batch-mates
    batches = [texts[i:i + 32] for i in range(0, len(texts) - 31, 32)]
    b32 = np.concatenate([clf.probabilities(b) for b in batches])  # also the warm-up
    effect = float(np.abs(b32 - probs[:len(b32)]).max())
    t0 = time.perf_counter()
    for _ in range(2):
        for b in batches:
            clf.probabilities(b)
    return probs, 2 * 32 * len(batches) / (time.perf_counter() - t0), effect


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


async def level(url: str, texts: list[str], want: np.ndarray, labels: list[str], concurrency: int,
                n: int, tolerance: float) -> dict:
    """``n`` requests from ``concurrency`` client tasks (aiohttp: a lighter client than httpx,
    so less of the shared CPU goes to the load generator)."""
    import aiohttp

    lat, dev = [], []
    status = {"ok": 0, "flipped": 0, "garbled": 0, "rejected": 0, "lost": 0}
    jobs = iter(range(n))

    async def worker(session):
        for i in jobs:
            j = i % len(texts)
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/predict", json={"texts": [texts[j]]}) as r:
                    code, body = r.status, await r.json()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                status["lost"] += 1
                continue
            dt = time.perf_counter() - t0
            if code == 200:
                lat.append(dt)
                got = np.array([body["scores"][0][lab] for lab in labels])
                d = float(np.abs(got - want[j]).max())
                dev.append(d)
                # garbled: not this sentence's answer (another request's, or broken); flipped:
                # this sentence's answer, but a near-tie whose argmax moved with its batch-mates
                if d > tolerance:
                    status["garbled"] += 1
                else:
                    status["ok" if body["labels"] == [labels[int(want[j].argmax())]] else "flipped"] += 1
            elif code == 503 and "error" in body:
                status["rejected"] += 1
            else:
                status["lost"] += 1

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.post(url + "/predict", json={"texts": ["warm up"]}) as r:
            await r.read()
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(session) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1e3
    answered = status["ok"] + status["flipped"] + status["garbled"]
    return {"concurrency": concurrency, "requests": n, **status, "wall_s": round(wall, 2),
            "throughput": round(answered / wall, 1),
            "max_abs_score_diff": round(max(dev), 6) if dev else None,
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
    texts = texts[:512]
    want, offline_tps, effect = offline(bundle, texts, threads)
    tol = max(MIN_TOLERANCE, 2 * effect)
    rows, extra = [], {}
    port = free_port()
    proc = start_server(bundle, port, threads)
    url = f"http://127.0.0.1:{port}"
    try:
        for c in levels:
            before = scrape(url)
            row = asyncio.run(level(url, texts, want, labels, c, n, tol))
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
            row = asyncio.run(level(f"http://127.0.0.1:{port}", texts, want, labels, max(levels), n, tol))
            row["note"] = f"--max-queue {overload_queue}"
            rows.append(row)
            print(json.dumps(row), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    return {"offline_b32_texts_per_s": round(offline_tps, 1), "offline_batch_effect": round(effect, 6),
            "tolerance": round(tol, 6), "rows": rows, **extra}


def render(res: dict, cmd: str, env: dict) -> str:
    off = res["offline_b32_texts_per_s"]
    out = ["# Load test: `deploy serve` on loopback", "",
           f"Command: `{cmd}`", "",
           f"Machine: {env['cpu']}, {env['cores']} vCPUs; server and client on the same 2 vCPUs (loopback "
           f"127.0.0.1); 1-min load average before the run {env['load_before']}, after {env['load_after']} "
           "(other jobs were running on this machine). Date: " + env["date"] + ".", "",
           f"Bundle: {env['bundle']}. Offline batch-32 throughput of the same bundle in one process, same "
           f"threads: **{off} texts/s**.", "",
           "Each request is one real SST-2 test sentence; each answer is compared with the offline batch-1 "
           "probabilities of that sentence: `ok` = same label; `flipped` = within the tolerance of them but "
           "the other label (a near-tie moved by its batch-mates); `garbled` = further than the tolerance "
           "(someone else's answer); `rejected` = explicit 503 with a message; `lost` = anything else "
           "(timeout, reset, other status). `max Δp` = the largest |probability difference| seen. Tolerance "
           f"= max(1e-4, 2 x what offline batching moved the probabilities: {res['offline_batch_effect']}) = "
           f"{res['tolerance']}.", "",
           "| concurrency | requests | ok | flipped | garbled | rejected (503) | lost | p50 ms | p99 ms | "
           "throughput req/s | mean batch | max Δp | vs offline b32 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        frac = f"{r['throughput'] / off:.2f}" if off else "—"
        out.append(f"| {r['concurrency']}{' (' + r['note'] + ')' if r.get('note') else ''} | {r['requests']} | "
                   f"{r['ok']} | {r['flipped']} | {r['garbled']} | {r['rejected']} | {r['lost']} | {r['p50_ms']} | "
                   f"{r['p99_ms']} | {r['throughput']} | {r.get('mean_batch', '—')} | {r['max_abs_score_diff']} | "
                   f"{frac} |")
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
    from chain.environment import environment

    e = environment(a.threads)
    env = {"cpu": e.get("cpu"), "cores": e.get("cores"), "date": f"{e.get('date')} {e.get('time')}",
           "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
           "bundle": Path(a.bundle).name}
    cmd = "python -m deploy.loadtest " + " ".join(sys.argv[1:] if argv is None else argv)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(render(res, cmd, env))
    print(f"wrote {a.output}")
    return 0 if all(r["lost"] == 0 and r["garbled"] == 0 for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
