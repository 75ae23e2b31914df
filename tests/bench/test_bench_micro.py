"""The pytest-benchmark micro-benchmarks (benchmarks/) still run, and their gate fails on a regression."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO


def _pytest(*args, cwd=REPO):
    # under pytest-xdist its worker variables would make pytest-benchmark disable itself in the child
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def test_micro_benchmarks_run_and_gate(tmp_path):
    """Record once, then gate a second run against a doctored copy whose medians are 100x faster."""
    store = tmp_path / "store"
    p = _pytest("benchmarks", "-k", "linear_fp32 or layernorm", "--benchmark-enable", "--benchmark-autosave",
                f"--benchmark-storage={store}", "--benchmark-max-time=0.05", "--benchmark-min-rounds=3")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    (saved,) = store.rglob("0001_*.json")
    doc = json.loads(saved.read_text())
    assert {b["name"] for b in doc["benchmarks"]} == {"test_linear_fp32", "test_residual_layernorm_reference"}
    assert all(b["extra_info"]["torch_threads"] == 1 for b in doc["benchmarks"])
    for b in doc["benchmarks"]:  # pretend main was 100x faster: today's run is a regression
        b["stats"]["median"] /= 100
    saved.write_text(json.dumps(doc))
    p = _pytest("benchmarks", "-k", "linear_fp32 or layernorm", "--benchmark-enable", f"--benchmark-storage={store}",
                "--benchmark-compare=0001", "--benchmark-compare-fail=median:15%", "--benchmark-max-time=0.05",
                "--benchmark-min-rounds=3")
    assert p.returncode == 1 and "Field 'median' has failed PercentageRegressionCheck" in p.stdout + p.stderr
