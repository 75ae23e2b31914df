"""bench end to end on a tiny model, its results.json contract, and its bad-input answers."""
import json
import subprocess
import sys

import pytest

from bench.__main__ import build_config, parser
from bench.run import run_bench
from tests.conftest import REPO, write_tsv


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_tiny_end_to_end(tiny_bert_dir, small_task_files, tmp_path):
    a = parser().parse_args(["--model", str(tiny_bert_dir), "--num-labels", "2", "--train", str(small_task_files["train"]),
               "--dev", str(small_task_files["dev"]), "--test", str(small_task_files["test"]),
               "--output", str(tmp_path / "out"), "--quick", "--threads", "1", "--no-peers"])  # peers: tests/bench
    res = run_bench(build_config(a), log=lambda *_: None, quiet=True)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["reference"] == "finetune" and saved["environment"]["threads"] == 1
    assert [s["name"] for s in saved["stages"]] == ["finetune", "int8", "onnx", "onnx-int8", "onnx-int4", "pruned",
                                                    "recovered", "recovered-onnx", "recovered-onnx-int8",
                                                    "recovered-openvino-int8", "kernels"]
    assert len({tuple(sorted(s)) for s in saved["stages"]}) == 1  # every row has the same keys
    assert saved["exit_code"] == 0  # the kernels row is skipped for want of CUDA: not a failure
    kernels = saved["stages"].pop()  # no CUDA here: reported, not timed
    assert kernels["status"] == "skipped" and "CUDA" in kernels["reason"] and kernels["latency_ms"] is None
    for s in saved["stages"]:
        assert s["status"] == "ok", s
        assert 0 <= s["accuracy"] <= 1 and s["examples"] == 48
        assert s["latency_ms"]["batch"] == 1 and s["latency_ms"]["p50"] <= s["latency_ms"]["p90"] <= s["latency_ms"]["p99"]
        assert s["throughput"]["batch"] == 32 and s["throughput"]["samples_per_s"] > 0
        assert s["size_mb"] > 0
        assert 0 <= s["selection_accuracy"] <= 1  # on dev: what the best-per-workload pick budgets on
    assert saved["best"]["selection_split"] == "dev"
    compute = saved["compute"]  # the batch-32 pick's GOP/s next to the measured peak
    assert compute["row"] == saved["best"]["throughput_b32"]["ours"]["name"] and compute["achieved_gops"] > 0
    rows = {s["name"]: s for s in saved["stages"]}
    # pruning shrinks the graph; every compression row says whether its speed-up is real
    assert rows["recovered-onnx-int8"]["size_mb"] < rows["onnx-int8"]["size_mb"] < rows["onnx"]["size_mb"]
    assert all(isinstance(s["speedup_is_real"], bool) for s in saved["stages"][1:])
    ref = saved["stages"][0]
    assert ref["speedup"]["throughput"] == 1.0 and ref["accuracy_delta_points"] == 0
    # fp32 ONNX computes the same function as the reference PyTorch model
    assert saved["stages"][2]["accuracy"] == ref["accuracy"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| onnx-int8 |" in report
    costs = next(ln for ln in report.split("## Memory and time")[1].splitlines() if ln.startswith("| onnx-int8 |"))
    assert float(costs.split(" | ")[4]) == round(rows["onnx-int8"]["memory_mb"]["peak_rss"])  # its own worker's peak
    assert res["stages"][:-1] == saved["stages"]


def _one_line_error(p, *needles):
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_missing_data_file(tmp_path):
    _one_line_error(_cli("--num-labels", "2", "--train", str(tmp_path / "nope.tsv"), "--test", str(tmp_path / "nope.tsv"),
                         "--output", str(tmp_path / "o")), "not found", "nope.tsv")


def test_cli_missing_label_column(tmp_path):
    f = write_tsv(tmp_path / "d.tsv", [(1, "great")], header=("polarity", "sentence"))
    _one_line_error(_cli("--num-labels", "2", "--train", str(f), "--test", str(f), "--output", str(tmp_path / "o")),
                    "no column 'label'", "set --label-column")  # the flag this user can set, not the spec field


def test_cli_empty_file(tmp_path):
    f = tmp_path / "e.tsv"
    f.write_text("")
    _one_line_error(_cli("--num-labels", "2", "--train", str(f), "--test", str(f), "--output", str(tmp_path / "o")), "no data rows")


def test_cli_unknown_model_path(tmp_path):
    _one_line_error(_cli("--model", str(tmp_path / "no-model"), "--output", str(tmp_path / "o")),
                    "not a directory")


def test_cli_pickled_weights_refused(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (d / "pytorch_model.bin").write_bytes(b"\0")
    _one_line_error(_cli("--model", str(d), "--output", str(tmp_path / "o")), "safetensors")


def test_cli_remote_code_needs_flag(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "x", "auto_map": {"AutoModel": "m.X"}}))
    _one_line_error(_cli("--model", str(d), "--output", str(tmp_path / "o")), "--trust-remote-code")


@pytest.mark.slow
def test_real_model_quick_chain(tmp_path):
    """The embedded MiniLM through the whole default chain (`--quick`): ~1-2 minutes."""
    p = _cli("--quick", "--output", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr[-3000:]
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert all(s["status"] in ("ok", "skipped") for s in saved["stages"] if not s["peer"])
    assert saved["stages"][2]["accuracy"] == saved["stages"][0]["accuracy"]
