"""``python -m bench``: run a chain spec through the chain executor, then time what it kept.

The chain part is ``chain.executor`` itself (content-hash cache, resume after ``kill -9``,
gates, the output-directory lock); bench holds that lock until its timing is written, so
two runs on one ``--output`` never overwrite each other's artifacts. Accuracy comes from
the executor's evaluation (saved in each manifest as soon as a stage finishes); timing
runs once all stages exist.
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

from chain.artifact import Artifact
from chain.environment import environment
from chain.executor import chain_session, exit_code
from chain.records import StageRecord, Status
from chain.stage import RunContext

from .best import best_per_workload
from .harness import MeasureConfig, measure_speed
from .report import text_table, write_reports
from .spec import BenchConfig, bench_spec, drop_unsupported, reference_of


def run_bench(cfg: BenchConfig, log=print, force: str | None = None, verbose: bool = False,
              quiet: bool = False, search=None) -> dict:
    """Validate inputs, run the chain (cached), measure, write reports; return the results dict.

    ``search``: a ``bench.search.SearchConfig``: first walk the pruning ladder on dev, then
    time the default chain plus every level kept."""
    record = None
    if search is not None:
        from .search import run_search

        spec, record = run_search(cfg, search, log)
    else:
        spec = bench_spec(cfg)
    budget = search.max_drop if search is not None else cfg.max_drop
    order = {s.name: i for i, s in enumerate(spec.stages)}  # rows in the chain's order, skipped ones too
    spec, unsupported = drop_unsupported(spec) if cfg.spec is None else (spec, [])
    ref = reference_of(cfg, spec)
    measure = cfg.measure or (MeasureConfig.quick(cfg.threads) if cfg.quick else MeasureConfig(threads=cfg.threads))
    if cfg.isolation:
        measure = replace(measure, isolation=cfg.isolation)
    ref_task = next(s.task for s in spec.stages if s.name == ref) or next((s.task for s in spec.stages if s.task), None)
    header = {"reference": ref, "task": ref_task, "quick": cfg.quick, "measure": asdict(measure),
              **({"search": record} if record else {})}
    out = Path(cfg.output)

    skipped_rows = [StageRecord(name, kind, Status.SKIPPED, reason=why, parent=parent).to_dict()
                    for name, kind, parent, why in unsupported]
    for name, _, _, why in unsupported:
        log(f"stage {name}: skipped, {why}")

    def writer(results: dict) -> None:  # after every stage: accuracy is safe on disk before timing
        results.update(header)
        names = {r["name"] for r in results.get("stages", [])}
        results.setdefault("stages", []).extend(r for r in skipped_rows if r["name"] not in names)
        results["stages"].sort(key=lambda r: order.get(r["name"], len(order)))
        results.setdefault("environment", environment(cfg.threads, measure.device))
        write_reports(results, out, plots=False)

    ctx = RunContext(threads=cfg.threads, trust_remote_code=spec.trust_remote_code, log=log, verbose=verbose,
                     quiet=quiet)
    t0 = time.perf_counter()
    log(f"chainpress bench: {len(spec.stages)} stages on task {ref_task} -> {out}")
    with chain_session(spec, out, force, log, ctx, writer) as run:
        results = run.run(baseline=False)
        rows = results["stages"]
        timed = [r for r in rows if Status(r["status"]).kept and r.get("artifact")]
        if timed:
            texts = spec.tasks[ref_task].load("test").texts if ref_task else []
            if spec.eval.max_samples:
                texts = texts[:spec.eval.max_samples]
            speed = measure_speed([Artifact.load(r["artifact"]) for r in timed], texts, measure,
                                  spec.trust_remote_code,
                                  progress=lambda what: log(f"[{time.perf_counter() - t0:6.0f}s] timing {what}"),
                                  reference=ref)
            for i, row in enumerate(rows):  # one key set for every row, timed or not
                rows[i] = StageRecord.from_dict({**row, **speed.get(row["name"], {})}).to_dict()
        add_relative(rows, ref)
        if warning := one_class_reference(rows, ref, ref_task, run):
            results["warnings"] = [warning]
            log(f"warning: {warning}")
        split = add_selection_accuracy(rows, run)
        results["best"] = best_per_workload(rows, ref, budget, split)
        if timed:
            results["compute"] = compute_of_pick(results["best"], rows, texts, measure, spec.trust_remote_code, log)
        results["total_wall_time_s"] = round(time.perf_counter() - t0, 1)
        results["exit_code"] = exit_code(results)
        writer(results)
        write_reports(results, out)
    if not quiet:
        log("\n" + text_table(results) + f"\n\nwrote {out / 'results.json'} and {out / 'report.md'}")
    return results


def one_class_reference(rows: list[dict], ref: str, task: str | None, run) -> str | None:
    """Why the run's accuracy figures say nothing, when the reference answers one class for every
    example (a failed fine-tune, or labels that do not match the text): every row then sits
    'within budget' of a constant."""
    row = next((r for r in rows if r["name"] == ref and r.get("artifact")), None)
    if row is None or task is None or task not in run.spec.tasks:
        return None
    try:  # cached in the artifact's manifest: no second pass; a report line, never a reason to lose timings
        res = run.evaluator.accuracy(Artifact.load(row["artifact"]), [task])[task]
    except Exception:  # noqa: BLE001
        return None
    if res.get("predicted_classes") != 1 or run.spec.tasks[task].num_labels < 2:
        return None
    return (f"the reference `{ref}` predicts one class for every {run.spec.eval.split} example of {task} "
            f"(accuracy {res['accuracy']:.4f} is that class's share), so no accuracy or delta here measures a "
            "model; check that the labels match the texts, or fine-tune longer (--epochs) or from another model")


def compute_of_pick(best: dict, rows: list[dict], texts: list[str], measure: MeasureConfig,
                    trust_remote_code: bool, log=print) -> dict | None:
    """GOP/s of the batch-32 pick vs the machine's peak, counted on its nearest Hugging Face
    ancestor (an ONNX or OpenVINO graph has the shapes of the model it was exported from)."""
    from chain.model import load_model, load_tokenizer

    from .flops import compute_report
    from .harness import timing_inputs

    pick = ((best.get("throughput_b32") or {}).get("ours") or {}).get("name")
    by_name = {r["name"]: r for r in rows}
    row = node = by_name.get(pick)
    while node is not None and node.get("format") != "hf":
        node = by_name.get(node.get("parent"))
    if row is None or node is None or not node.get("artifact"):
        return None
    try:
        art = Artifact.load(node["artifact"])
        _, b32 = timing_inputs(load_tokenizer(art, trust_remote_code), texts, measure)
        return {**compute_report(row, load_model(art, trust_remote_code=trust_remote_code), b32, measure.threads),
                "shapes_from": node["name"]}
    except Exception as e:  # a report section, never a reason to lose the timings
        log(f"compute report skipped: {type(e).__name__}: {e}")
        return {"row": pick, "error": f"{type(e).__name__}: {e}"}


def add_selection_accuracy(rows: list[dict], run) -> str:
    """Each kept row's accuracy on the gates' split (dev), what the best-per-workload pick
    budgets on: choosing on test would make its accuracy a selected, optimistic figure.
    Cached in the manifests like every evaluation. A task with no dev split (a fine-tuned
    model given with its test file only) is budgeted on the eval split, and the split
    returned says so."""
    split = run.gate_evaluator.cfg.split
    tasks = {r["task"] for r in rows if r.get("task")}
    if not all(run.spec.tasks[t].has_split(split) for t in tasks if t in run.spec.tasks):
        split = f"{run.evaluator.cfg.split} (the task has no {split} split)"
        for row in rows:
            row["selection_accuracy"] = row.get("accuracy")
        return split
    for row in rows:
        if not (Status(row["status"]).kept and row.get("artifact") and row.get("task")):
            continue
        task = row["task"]
        got = (row.get("gate_accuracy") or {}).get(task)
        if got is None:
            res = run.gate_evaluator.accuracy(Artifact.load(row["artifact"]), [task])[task]
            got = res["accuracy"]
        row["selection_accuracy"] = got
    return split


def add_relative(rows: list[dict], reference: str) -> None:
    ref = next((r for r in rows if r["name"] == reference and Status(r["status"]).kept), None)
    if ref is None:
        return
    for r in rows:
        if r.get("accuracy") is not None and ref.get("accuracy") is not None:
            r["accuracy_delta_points"] = round(100 * (r["accuracy"] - ref["accuracy"]), 2)
        if r.get("throughput") and ref.get("throughput") and not r.get("speedup"):  # else: measured, with CI
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
