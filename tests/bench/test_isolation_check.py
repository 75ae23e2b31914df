"""`python -m bench.isolation_check` on the tiny BERT: together (either mode) vs alone, machinery only."""
import json
import subprocess
import sys

import pytest

from bench.gate_check import GateCheckConfig
from bench.harness import MeasureConfig
from bench.isolation_check import markdown, run_isolation_check
from tests.conftest import REPO


def test_isolation_check_on_tiny_models(tiny_bert_dir, tmp_path):
    """Both 'together' modes against each model alone, over every runtime bench times (OpenVINO
    of the ONNX, torch bf16 autocast where the CPU has bf16), in one build."""
    from bench.isolation_check import MODELS
    from compress.openvino import cpu_has_bf16

    assert {"fp32", "int8", "onnx", "onnx-int8", "openvino", "torch-bf16", "openvino-int8"} <= set(MODELS)
    cfg = GateCheckConfig(work=tmp_path, model=str(tiny_bert_dir), eval_examples=16,
                          measure=MeasureConfig(threads=1, latency_calls=10, throughput_batches=2,
                                                throughput_rounds=2, warmup=2, throughput_block=2,
                                                throughput_turn_warmup=1))
    s = run_isolation_check(cfg, repeats=1, log=lambda *_: None, modes=("process", "inprocess"),
                            models=("fp32", "onnx-int8", "openvino", "torch-bf16"), alone="sequential")
    # OpenVINO is installed with chainpress: it must be timed; torch bf16 only where it is native
    expected = ["fp32", "onnx-int8", "openvino"] + (["torch-bf16"] if cpu_has_bf16() else [])
    assert s["models"] == expected
    assert s["modes"] == ["process", "inprocess"] and set(s["passed_by_mode"]) == {"process", "inprocess"}
    for mode in s["modes"]:
        for n in expected:
            for metric in ("p50_ms", "samples_per_s"):
                assert len(s["ratios"][mode][n][metric]) == 1 and s["ratios"][mode][n][metric][0] > 0
    run = s["runs"][0]  # one fresh process per 'together' mode and per model alone, each saying how it timed
    jobs = {"together:process", "together:inprocess", *(f"alone:{n}" for n in expected)}
    assert {k for k in run if k not in ("loadavg_1m", "steal")} == jobs
    # each process says how long it ran and how much CPU time the host stole meanwhile
    assert set(run["steal"]) == jobs and all(run[j]["_host"]["wall_s"] > 0 for j in jobs)
    assert all(v is None or 0 <= v <= 1 for v in run["steal"].values())
    assert run["together:process"]["fp32"]["timing"]["mode"] == "process"
    assert run["together:process"]["fp32"]["timing"]["latency_turn_warmup"] == 1
    for mode in ("process", "inprocess"):  # batch 32 in turns of 2 after 1 untimed, as configured
        t = run[f"together:{mode}"]["fp32"]["timing"]
        assert (t["throughput_block"], t["throughput_turn_warmup"]) == (2, 1)
    assert "batch-32 turns of 2 after 1" in markdown(s, "x")
    assert run["together:inprocess"]["fp32"]["timing"]["mode"] == "inprocess"
    assert all(run[f"alone:{n}"][n]["timing"]["mode"] == "inprocess" for n in expected)
    saved = json.loads((tmp_path / "isolation_check.json").read_text())
    assert saved["median_ratios"] == s["median_ratios"]
    md = markdown(s, "python -m bench.isolation_check")
    rows = 2 * len(expected)  # a latency and a throughput row per model and mode
    assert md.count("| process |") == rows and md.count("| inprocess |") == rows and "within 10%" in md
    assert md.count("| onnx-int8 | latency p50 |") == 3 and "process / inprocess, per repeat" in md
    assert "CPU time stolen by the host" in md


def test_paired_check_times_alone_in_the_same_driver_process(tiny_bert_dir, tmp_path):
    """--alone paired (the default): one driver process per mode, which holds both sides."""
    cfg = GateCheckConfig(work=tmp_path, model=str(tiny_bert_dir), eval_examples=16,
                          measure=MeasureConfig(threads=1, latency_calls=10, throughput_batches=1,
                                                throughput_rounds=2, warmup=2))
    s = run_isolation_check(cfg, repeats=1, log=lambda *_: None, modes=("process", "inprocess"),
                            models=("fp32", "onnx-int8"), segment=4)
    assert s["alone"] == "paired" and s["segment"] == 4
    run = s["runs"][0]
    assert {k for k in run if k not in ("loadavg_1m", "steal")} == {"paired:process", "paired:inprocess"}
    for mode in ("process", "inprocess"):
        got = run[f"paired:{mode}"]
        assert got["together"]["fp32"]["timing"]["mode"] == mode
        assert got["alone"]["onnx-int8"]["timing"] == {"mode": "alone-paired", "segment": 4}
        for n in ("fp32", "onnx-int8"):
            r = s["ratios"][mode][n]["p50_ms"][0]
            assert r == pytest.approx(got["together"][n]["p50_ms"] / got["alone"][n]["p50_ms"])
    md = markdown(s, "python -m bench.isolation_check")
    assert "alternating every 4 batch-1 calls" in md and "process / inprocess, per repeat" in md
    assert "batch-1 turns of 10 call(s) after 1 untimed" in md  # bench's default turn, stated


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench.isolation_check", "--model", str(tmp_path / "nope"),
                        "--output", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip() == f"error: --model {tmp_path / 'nope'} is not a directory"


def test_rejects_unknown_modes_and_models(tmp_path):
    with pytest.raises(ValueError, match="modes among"):
        run_isolation_check(GateCheckConfig(work=tmp_path), modes=("thread",))
    with pytest.raises(ValueError, match="models among"):
        run_isolation_check(GateCheckConfig(work=tmp_path), models=("fp16",))
