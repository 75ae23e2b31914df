"""bench runs through the chain executor: kill -9 mid-run resumes without retraining, and a
second bench on the same --output is refused while the first holds it (timing included)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO


def _cmd(model, files, out):
    return [sys.executable, "-m", "bench", "--model", str(model), "--num-labels", "2", "--train", str(files["train"]),
            "--dev", str(files["dev"]), "--test", str(files["test"]), "--output", str(out), "--quick",
            "--threads", "1", "--no-peers", "-q", "--isolation", "inprocess"]  # resume, not timing, is tested


def _env(**extra):
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CHAINPRESS_PAUSE")},
            "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}


def _wait_for(flag, proc, timeout=300):
    t0 = time.time()
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() - t0 < timeout, "pause point never reached"
        time.sleep(0.2)


@pytest.mark.parametrize("point", ["published:finetune"])
def test_kill_9_then_resume_and_lock(tiny_bert_dir, small_task_files, tmp_path, point):
    out, flag = tmp_path / "out", tmp_path / "flag"
    first = subprocess.Popen(_cmd(tiny_bert_dir, small_task_files, out), env=_env(
        CHAINPRESS_PAUSE_AT=point, CHAINPRESS_PAUSE_FLAG=str(flag)), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(flag, first)
        # while the first run holds the output directory, a second one is refused at once
        second = subprocess.run(_cmd(tiny_bert_dir, small_task_files, out), env=_env(), capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2 and "another chainpress run is using" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
    resumed = subprocess.run(_cmd(tiny_bert_dir, small_task_files, out), env=_env(), capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = {s["name"]: s for s in json.loads((out / "results.json").read_text())["stages"]}
    assert rows["finetune"]["status"] == "cached"  # finished before the kill: not trained again
    assert rows["int8"]["status"] == "ok" and rows["kernels"]["status"] == "skipped"
    assert rows["finetune"]["latency_ms"]["p50"] > 0  # timed in the resumed run
