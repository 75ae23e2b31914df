"""PSI and the drift monitor on known distributions; the micro-batcher's batching,
refusal and drain; the CLI's bad input."""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from deploy.batching import BatchConfig, MicroBatcher, QueueFull, ShuttingDown
from deploy.drift import DriftMonitor, psi, reference_from_probs
from tests.conftest import REPO


def test_psi_is_zero_for_equal_and_grows_with_shift():
    assert psi([50, 50], [0.5, 0.5]) == pytest.approx(0.0, abs=1e-12)
    assert psi([60, 40], [0.5, 0.5]) == pytest.approx(0.1 * np.log(0.6 / 0.5) + 0.1 * np.log(0.5 / 0.4), rel=1e-9)
    assert psi([60, 40], [0.5, 0.5]) < psi([90, 10], [0.5, 0.5]) < psi([100, 0], [0.5, 0.5])


def probs_from(p_pos: np.ndarray) -> np.ndarray:
    return np.stack([1 - p_pos, p_pos], axis=1)


def test_monitor_quiet_on_same_distribution_alerts_on_shift(caplog):
    rng = np.random.default_rng(0)
    ref = reference_from_probs(probs_from(rng.beta(2, 2, 2000)), split="dev", task="t")
    assert len(ref["confidence_freq"]) == 10 and max(ref["confidence_freq"]) < 0.11
    caplog.set_level(logging.INFO, logger="chainpress.deploy.drift")
    mon = DriftMonitor(ref, window=400, threshold=0.2, min_samples=100)
    same = probs_from(rng.beta(2, 2, 400))
    s = mon.observe(same.argmax(-1), same.max(-1))
    assert s.samples == 400 and s.psi < 0.1 and not s.alert and mon.alerts == 0
    shifted = probs_from(rng.beta(8, 1, 400))  # nearly all positive and confident
    s = mon.observe(shifted.argmax(-1), shifted.max(-1))
    assert s.alert and s.label_psi > 0.2 and s.confidence_psi > 0.2 and mon.alerts == 1
    s = mon.observe(shifted.argmax(-1), shifted.max(-1))  # still drifting: no second warning within a minute
    assert mon.alerts == 1
    assert [r.levelno for r in caplog.records if "drift alert" in r.getMessage()] == [logging.WARNING]
    mon.observe(same.argmax(-1), same.max(-1))
    assert not mon.state.alert and any("back under" in r.getMessage() for r in caplog.records)


def test_monitor_waits_for_min_samples():
    ref = reference_from_probs(probs_from(np.linspace(0.01, 0.99, 100)), split="dev", task=None)
    mon = DriftMonitor(ref, window=200, min_samples=50)
    s = mon.observe([1] * 49, [0.99] * 49)  # all one label, but too few to judge
    assert s.samples == 49 and not s.alert
    assert mon.observe([1], [0.99]).alert


def run(coro):
    return asyncio.run(coro)


def test_batcher_groups_concurrent_requests_and_keeps_rows_apart():
    calls = []

    def fn(texts):
        calls.append(len(texts))
        return np.array([[float(len(t)), float(t.count("a"))] for t in texts])

    async def go():
        b = MicroBatcher(fn, BatchConfig(max_batch_size=8, max_queue_delay_ms=50, max_queue=64))
        await b.start()
        reqs = [["a" * i, "b" * i + "a"] for i in range(1, 11)]
        outs = await asyncio.gather(*[b.submit(r) for r in reqs])
        await b.stop()
        return reqs, outs
    reqs, outs = run(go())
    for r, o in zip(reqs, outs):
        np.testing.assert_array_equal(o, [[len(t), t.count("a")] for t in r])
    assert sum(calls) == 20 and max(calls) <= 8 and len(calls) == 3  # 8 + 8 + 4, not 20 calls


def test_batcher_refuses_whole_requests_when_full_and_drains_on_stop():
    async def go():
        b = MicroBatcher(lambda t: np.zeros((len(t), 2)), BatchConfig(max_batch_size=2, max_queue_delay_ms=200,
                                                                       max_queue=4))
        await b.start()
        first = asyncio.ensure_future(b.submit(["x", "y", "z"]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit(["1", "2"])  # 3 + 2 > 4: refused whole
        second = asyncio.ensure_future(b.submit(["w"]))  # 3 + 1 fits
        await asyncio.sleep(0)
        await b.stop()  # answers both, though the 200 ms window has not passed
        with pytest.raises(ShuttingDown):
            await b.submit(["late"])
        return (await first).shape, (await second).shape
    assert run(go()) == ((3, 2), (1, 2))


def test_model_failure_reaches_every_request_of_the_batch():
    def boom(texts):
        raise RuntimeError("model exploded")

    async def go():
        b = MicroBatcher(boom, BatchConfig(max_batch_size=4, max_queue_delay_ms=20))
        await b.start()
        rs = await asyncio.gather(b.submit(["a"]), b.submit(["b"]), return_exceptions=True)
        await b.stop()
        return rs
    assert [str(e) for e in run(go())] == ["model exploded"] * 2


@pytest.mark.parametrize("args,message", [
    ([], "give a command"),
    (["export"], "the following arguments are required"),
    (["export", "/nonexistent", "/tmp/x"], "not a directory"),
    (["serve", "/nonexistent"], "not a chainpress bundle"),
    (["serve", "/nonexistent", "--max-batch-size", "0"], "must be >= 1"),
    (["serve", "/nonexistent", "--drift-threshold", "-1"], "must be > 0"),
])
def test_cli_bad_input_is_one_line_exit_2(args, message):
    r = subprocess.run([sys.executable, "-m", "deploy", *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_nothing_below_imports_deploy():
    import re

    pattern = re.compile(r"^\s*(from\s+deploy[\s.]|import\s+deploy\b)", re.M)
    offenders = [str(p.relative_to(REPO)) for pkg in ("chain", "compress", "kernels", "bench")
                 for p in (REPO / pkg).rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_importing_deploy_loads_no_server_or_model_library():
    code = ("import sys, deploy, deploy.export, deploy.predict, deploy.drift\n"
            "heavy = [m for m in ('fastapi', 'uvicorn', 'prometheus_client', 'onnxruntime', 'torch') if m in sys.modules]\n"
            "print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
