"""kill -9 at chosen and random moments, then resume: nothing finished is recomputed,
nothing finished is corrupted, and the final metrics equal an uninterrupted run's.

Kills land deterministically through ``chain.faults`` pause points (the process writes
the point's name to a flag file and sleeps; the test SIGKILLs it there), plus seeded
random delays.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chain.executor import run_chain
from chain.spec import load_spec
from tests.chain.conftest import make_spec

REPO = Path(__file__).resolve().parents[2]
STAGES = [{"name": "a", "type": "finetune", "task": "senti"},
          {"name": "b", "type": "finetune", "task": "topic", "gate": {"max_drop": 0.6}},
          {"name": "q", "type": "quantize_int8", "gate": {"max_drop": 0.05}}]


def _cmd(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "chain", "run", str(spec), "--output", str(out), "--quiet"]


def _env(**extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}
    env.pop("CHAINPRESS_PAUSE_AT", None)
    env.update(extra)
    return env


def _finished(out: Path) -> dict:
    """Published artifacts: dir name -> (inode, manifest 'created', model file bytes' mtime)."""
    snap = {}
    root = out / "artifacts"
    for d in root.iterdir() if root.is_dir() else []:
        if d.is_dir() and not d.name.startswith(".") and (d / "manifest.json").is_file():
            m = json.loads((d / "manifest.json").read_text())
            assert m["complete"]  # never a half-written artifact under a final name
            model = next(iter(sorted(d.glob("model*"))))
            snap[d.name] = (d.stat().st_ino, m["created"], model.stat().st_mtime_ns, model.stat().st_size)
    return snap


def _kill_at(spec: Path, out: Path, point: str, tmp: Path, timeout: float = 300) -> str:
    flag = tmp / f"flag-{abs(hash(point))}"
    flag.unlink(missing_ok=True)
    proc = subprocess.Popen(_cmd(spec, out), env=_env(CHAINPRESS_PAUSE_AT=point, CHAINPRESS_PAUSE_FLAG=str(flag)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before reaching {point}:\n{proc.stdout.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{point} not reached in {timeout}s")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    log = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL
    return log


def _kill_after(spec: Path, out: Path, seconds: float) -> str:
    proc = subprocess.Popen(_cmd(spec, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.communicate()[0]


def _ran(log: str) -> set[str]:
    return set(re.findall(r"stage (\S+): running", log))


def _check_resume(tmp: Path, spec: Path, kills: list) -> None:
    ref = run_chain(load_spec(spec), tmp / "ref", log=lambda _: None)  # uninterrupted, same seeds
    out = tmp / "killed"
    finished: dict = {}
    for kill in kills:
        log = _kill_at(spec, out, kill, tmp) if isinstance(kill, str) else _kill_after(spec, out, kill)
        now = _finished(out)
        done_before = {name.rsplit("-", 1)[0] for name in finished}
        assert not (_ran(log) & done_before), f"{kill}: recomputed a finished stage: {_ran(log) & done_before}"
        for name, snap in finished.items():
            assert now[name] == snap, f"{kill}: finished artifact {name} was touched"
        finished = now
    final = subprocess.run(_cmd(spec, out), env=_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    done_before = {name.rsplit("-", 1)[0] for name in finished}
    assert not (_ran(final.stdout) & done_before)
    assert all(_finished(out)[n] == s for n, s in finished.items())
    res = json.loads((out / "results.json").read_text())
    def done(rows):  # the last run finds some stages cached, others it finishes itself
        return [s["status"].replace("cached", "ok") for s in rows]

    assert done(res["stages"]) == done(ref["stages"]) == ["ok"] * len(ref["stages"])
    assert [s["accuracy"] for s in res["stages"]] == [s["accuracy"] for s in ref["stages"]]
    assert [s["key"] for s in res["stages"]] == [s["key"] for s in ref["stages"]]
    assert not [p for p in (out / "artifacts").iterdir() if p.name.startswith((".tmp", ".old"))]


def test_kill9_mid_save_then_resume(tmp_path, tiny_bert_dir, easy_tasks):
    """Fast version (two stages, two kills): a half-written staging directory, then a
    kill between fsync and rename of the next stage, while the first one is finished."""
    spec = make_spec(tmp_path / "spec.yaml", tiny_bert_dir, easy_tasks, [STAGES[0], STAGES[2]])
    _check_resume(tmp_path, spec, ["saved:a", "rename:q-*"])


@pytest.mark.slow
def test_kill9_at_many_points_then_resume(tmp_path, tiny_bert_dir, easy_tasks):
    """Six deterministic points (mid-save, mid-publish, after publish, mid-evaluation
    bookkeeping) and three seeded random ones."""
    spec = make_spec(tmp_path / "spec.yaml", tiny_bert_dir, easy_tasks, STAGES)
    rng = random.Random(1)
    kills = ["saved:a", "rename:a-*", "evaluated:a", rng.uniform(2, 12), "manifest:b", "published:b",
             rng.uniform(2, 12), "saved:q", "published:q", rng.uniform(2, 12)]
    _check_resume(tmp_path, spec, kills)
