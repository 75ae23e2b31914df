"""Plots: the Pareto front, PNG files from results.json alone, nothing drawn without data."""
import numpy as np

from bench.plots import pareto_front, write_plots
from bench.report import write_reports


def test_pareto_front():
    pts = [("fp32", 10.0, 90.0), ("int8", 5.0, 89.5), ("onnx", 6.0, 90.0), ("slow-bad", 12.0, 85.0),
           ("int4", 3.0, 80.0), ("same-as-onnx-slower", 7.0, 90.0)]
    assert pareto_front(pts) == ["int4", "int8", "onnx"]


def _results():
    rng = np.random.default_rng(0)
    stages = []
    for name, ms, acc, peer in (("finetune", 20, 0.91, False), ("int8", 11, 0.905, False),
                                ("onnx-int8", 7, 0.90, False), ("torch-compile", 15, 0.91, True)):
        samples = list(ms * rng.lognormal(0, 0.1, 100))
        stages.append({"name": name, "status": "ok", "accuracy": acc, "peer": peer,
                       "latency_ms": {"p50": float(np.median(samples)), "p50_ci95": [ms * 0.97, ms * 1.03]},
                       "samples_ms": {"latency": samples}})
    stages.append({"name": "optimum-int8", "status": "failed", "reason": "Unable to find data type", "peer": True})
    return {"task": "sst2", "reference": "finetune", "measure": {"latency_calls": 100},
            "environment": {"cpu": "test cpu", "threads": 2, "date": "2026-01-01", "versions": {}}, "stages": stages}


def test_write_plots_makes_pngs(tmp_path):
    assert write_plots(_results(), tmp_path) == ["accuracy_latency.png", "latency_distribution.png"]
    for f in ("accuracy_latency.png", "latency_distribution.png"):
        data = (tmp_path / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real figure, not an empty canvas


def test_no_data_no_plot(tmp_path):
    res = _results()
    for s in res["stages"]:
        s.pop("samples_ms", None)
    assert write_plots(res, tmp_path) == ["accuracy_latency.png"]  # results from before samples were stored
    res["stages"] = [s for s in res["stages"] if s["status"] != "ok"]
    assert write_plots(res, tmp_path / "none") == []


def test_report_lists_failures_and_links_plots(tmp_path):
    write_reports(_results(), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "![accuracy latency](accuracy_latency.png)" in md and "(latency_distribution.png)" in md
    assert "- `optimum-int8` failed: Unable to find data type" in md
    assert (tmp_path / "results.json").is_file()
