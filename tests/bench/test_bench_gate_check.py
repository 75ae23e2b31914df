"""The gate experiment (`python -m bench.gate_check`) and the in-process vs alone check."""
import time

import numpy as np
import pytest

from chain.predict import Predictor
from bench.compare import Thresholds
from bench.gate_check import GateCheckConfig, drop_accuracy, run_gate_check, slowed
from bench.harness import MeasureConfig
from bench.isolation_check import run_isolation_check


def test_slowed_predictor_pays_the_fraction_on_every_call():
    inner_s = []

    def fn(enc):
        t0 = time.perf_counter()
        time.sleep(0.01)
        inner_s.append(time.perf_counter() - t0)
        return np.zeros((1, 2))

    pred = slowed(Predictor("x", "pytorch", fn), 1.2)
    for _ in range(3):
        t0 = time.perf_counter()
        out = pred({})
        assert time.perf_counter() - t0 >= 1.2 * inner_s[-1]
        assert out.shape == (1, 2)
    assert pred.name == "x" and pred.backend == "pytorch"


def test_drop_accuracy_edits_a_copy():
    res = {"stages": [{"name": "onnx-int8", "accuracy": 0.9}]}
    out = drop_accuracy(res, "onnx-int8", 1.0)
    assert out["stages"][0]["accuracy"] == pytest.approx(0.89) and res["stages"][0]["accuracy"] == 0.9


def test_config_is_validated():
    with pytest.raises(ValueError, match="slow_stage"):
        GateCheckConfig(slow_stage="finetune")
    with pytest.raises(ValueError, match="slowdown > 1"):
        GateCheckConfig(slowdown=1.0)


@pytest.mark.slow
def test_gate_check_on_the_tiny_model(tiny_bert_dir, tmp_path):
    """Fresh processes, as in CI. A 1.5x slowdown and a 1-point accuracy drop are always caught."""
    cfg = GateCheckConfig(work=tmp_path, model=str(tiny_bert_dir), runs=2, baseline_runs=1, slowdown=1.5,
                          eval_examples=64,
                          measure=MeasureConfig(threads=1, latency_calls=60, throughput_batches=2,
                                                throughput_rounds=4, warmup=3),
                          thresholds=Thresholds(10, 0.5))
    s = run_gate_check(cfg, log=lambda *_: None)
    assert s["runs"] == 2 and len(s["rows"]) == 2
    assert s["slowed_fired"] == 2 and s["accuracy_drop_fired"] == 2 and s["same_code_fired"] <= 1
    assert all(r["slow_latency_change"] > 25 for r in s["rows"])  # measured ~+50%
    assert (tmp_path / "gate_check.json").is_file() and len(list((tmp_path / "runs").glob("*.json"))) == 5


@pytest.mark.slow
def test_in_process_figures_match_alone(tmp_path):
    """Real MiniLM, PyTorch fp32 and ONNX Runtime int8: together/alone within 15% (one repeat)."""
    cfg = GateCheckConfig(work=tmp_path, measure=MeasureConfig(threads=2, latency_calls=100, throughput_batches=4,
                                                                throughput_rounds=3, warmup=5))
    s = run_isolation_check(cfg, repeats=1, log=lambda *_: None)
    assert s["passed"], s["median_ratios"]
