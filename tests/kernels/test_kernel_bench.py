"""``python -m kernels.bench``: the no-CUDA exit path, and the harness on tiny CPU shapes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).parents[2]


def run_bench(*args: str, tmp_path: Path, cuda_hidden: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if cuda_hidden:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, "-m", "kernels.bench", "--output", str(tmp_path / "out"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_without_cuda_exits_2_with_one_line(tmp_path):
    proc = run_bench(tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "no CUDA device: kernel benchmarks need a GPU"
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_import_runs_nothing():
    proc = subprocess.run([sys.executable, "-c", "import kernels.bench"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


def test_smoke_run_writes_report(tmp_path):
    """Tiny shapes on CPU through the interpreter: every case builder, timer and writer runs."""
    proc = run_bench("--smoke", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out/results.json").read_text())
    rows = result["rows"]
    assert {r["op"] for r in rows} == {"bias_gelu", "residual_layernorm", "attention", "weight_only_gemm",
                                       "minilm_forward"}
    timed = [r for r in rows if r["ms"] is not None]
    skipped = [r for r in rows if r["ms"] is None]
    assert all(r["ms"] > 0 for r in timed)
    assert skipped and all(r["note"].startswith("skipped:") for r in skipped)  # compile / bnb, with a reason
    exact = [r for r in timed if r["backend"].startswith("triton") or r["backend"] == "fused"]
    assert len(exact) == 9 and all(r["max_rel_err"] is not None and r["max_rel_err"] < 1e-4 for r in exact)
    quantized = [r for r in timed if r["backend"] in ("fused-int8", "fused-int4")]  # vs the fp model
    assert len(quantized) == 4 and all(0 < r["max_rel_err"] < 0.3 for r in quantized)
    gemm = [r for r in timed if r["op"] == "weight_only_gemm"]
    assert all(r["gbps"] > 0 and r["tflops"] > 0 and r["frac_copy_bw"] > 0 for r in gemm)
    assert result["meta"]["copy_gbps"] > 0 and result["meta"]["matmul_tflops"] > 0
    md = (tmp_path / "out/results.md").read_text()
    assert md.startswith("# kernels benchmark: CPU (Triton interpreter, --smoke)")
    assert md.count("\n| ") == len(rows) + 1  # header + one line per row
    assert torch.__version__ in md
