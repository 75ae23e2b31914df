"""bench on the tiny model with peers: every row present, timed in the same run, plots and gate work."""
import json

import pytest

from bench.__main__ import build_config, main, parser
from bench.harness import MeasureConfig
from bench.run import run_bench

PEERS = ("torch-compile", "optimum-int8", "optimum-int8-noopt")


@pytest.fixture(scope="module")
def tiny_run(tiny_bert_dir, tmp_path_factory):
    from tests.conftest import SST2

    d = tmp_path_factory.mktemp("peers")
    files = {}
    for split, n in (("train", 64), ("test", 48)):
        lines = (SST2 / f"{split}.tsv").read_text().splitlines()
        files[split] = d / f"{split}.tsv"
        files[split].write_text("\n".join(lines[: n + 1]) + "\n")
    a = parser().parse_args(["--model", str(tiny_bert_dir), "--num-labels", "2", "--train", str(files["train"]), "--test", str(files["test"]),
               "--output", str(d / "out"), "--quick", "--threads", "1"])
    cfg = build_config(a)
    cfg.measure = MeasureConfig.quick(1)
    cfg.measure.latency_calls, cfg.measure.throughput_rounds = 40, 2  # machinery, not statistics
    cfg.measure.isolation = "inprocess"  # rows, not isolation: 14 worker interpreters cost ~100 s here
    run_bench(cfg, log=lambda *_: None, quiet=True)
    return d / "out"


def test_peers_are_rows_of_the_same_run(tiny_run):
    res = json.loads((tiny_run / "results.json").read_text())
    rows = {s["name"]: s for s in res["stages"]}
    assert list(rows)[:4] == ["finetune", "int8", "onnx", "onnx-int8"] and tuple(rows)[-len(PEERS):] == tuple(PEERS)
    assert all(rows[p].get("peer") is True for p in PEERS)
    assert not any(rows[n].get("peer") for n in ("finetune", "int8", "onnx", "onnx-int8"))
    ref = rows["finetune"]
    timed = [r for r in rows.values() if r["status"] == "ok"]
    # one interleaved measurement: every timed row has the same number of calls and a speedup interval
    assert {r["latency_ms"]["calls"] for r in timed} == {40}
    for r in timed:
        lo, hi = r["speedup_ci95"]["latency_tmean"]
        assert lo <= r["speedup"]["latency_tmean"] <= hi
        assert len(r["samples_ms"]["latency"]) == 40 and r["memory_mb"]["process_peak_rss"] > 0
    assert ref["speedup"] == {"throughput": 1.0, "latency_p50": 1.0, "latency_tmean": 1.0}
    # the Optimum path that works on this graph has numbers; O2 + quantize either works or says why
    assert rows["optimum-int8-noopt"]["status"] == "ok" and rows["optimum-int8-noopt"]["backend"] == "onnxruntime"
    o2 = rows["optimum-int8"]
    assert o2["status"] == "ok" or "Unable to find data type" in o2["reason"], o2
    tc = rows["torch-compile"]
    if tc["status"] == "ok":  # compiled fp32 is the same function as the reference
        assert tc["backend"] == "pytorch+compile" and tc["accuracy"] == ref["accuracy"] and tc["extra"]["compile_s"] > 0
    else:
        assert tc["status"] == "skipped" and tc["reason"].startswith("torch.compile failed on this machine")
    assert "omp_wait_policy" in res["environment"] and res["environment"]["threads"] == 1


def test_report_links_readable_plots(tiny_run):
    md = (tiny_run / "report.md").read_text()
    for png in ("accuracy_latency.png", "latency_distribution.png"):
        assert f"]({png})" in md
        data = (tiny_run / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert "| torch-compile (peer) |" in md and "| optimum-int8-noopt (peer) |" in md


def test_run_gates_against_itself(tiny_run, capsys):
    r = str(tiny_run / "results.json")
    assert main(["compare", r, r]) == 0
    out = capsys.readouterr().out
    assert "peer row, not gated" in out and "REGRESSION" not in out
