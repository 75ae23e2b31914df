"""``python -m compress.multitask_report RUN_DIR``: what one compressed multi-task model costs.

Reads a finished run of ``examples/multitask_chain.yaml`` (its ``results.json``) and writes
``docs/results/multitask-<date>.md`` + ``.json``:

* accuracy per task (the run's eval split) of the uncompressed final artifact (``--final``)
  and of each compressed stage, and the difference in points;
* one encoder pass of the multi-task graph (every task's output computed by one session
  run) vs the single-task graph of the same pruned model (``--single``: its own head
  only), at batch 1 and batch 32, on real test sentences, timed interleaved with the one
  timing primitive (``chain.runtime.timer``: bench's), medians and their paired-bootstrap
  interval. Ratios come from one interleaved run, so host load moves both sides.

>>> python -m compress.multitask_report runs/multitask_chain --out docs/results
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np

from chain.artifact import Artifact
from chain.cli import guarded
from chain.errors import SpecError

PAIRS = (("onnx-int8", "onnx-single-int8"), ("onnx", "onnx-single"))


def _rows(run_dir: Path) -> dict[str, dict]:
    path = run_dir / "results.json"
    if not path.is_file():
        raise SpecError(f"{run_dir} has no results.json; run `python -m chain run examples/multitask_chain.yaml` "
                        "first and give its output directory")
    return {r["name"]: r for r in json.loads(path.read_text())["stages"]}


def accuracy_table(rows: dict[str, dict], final: str, stages: list[str]) -> dict:
    if final not in rows or not rows[final].get("accuracy_by_task"):
        raise SpecError(f"stage {final!r} has no accuracies in results.json; name the uncompressed final stage "
                        "with --final")
    ref = rows[final]["accuracy_by_task"]
    table = {}
    for name in [final] + [s for s in stages if s in rows]:
        acc = rows[name].get("accuracy_by_task") or {}
        table[name] = {t: {"accuracy": acc.get(t),
                           "delta_points": None if acc.get(t) is None or ref.get(t) is None
                           else round(100 * (acc[t] - ref[t]), 2)} for t in ref}
    return table


def _session_fn(path: Path, threads: int):
    from .onnx_export import ort_session

    sess = ort_session(path / "model.onnx", threads)
    names = {i.name for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    return (lambda enc: sess.run(None, {k: v for k, v in enc.items() if k in names})), outputs


def time_pairs(rows: dict[str, dict], texts: list[str], threads: int, calls: dict[int, int]) -> dict:
    """{batch: {variant: stats, ratios}} for every (multi, single) pair present in ``rows``."""
    from transformers import AutoTokenizer

    from chain.runtime import timer

    time_interleaved = timer()
    pairs = [(m, s) for m, s in PAIRS if rows.get(m, {}).get("artifact") and rows.get(s, {}).get("artifact")]
    if not pairs:
        raise SpecError(f"results.json has none of the stage pairs {PAIRS}; run examples/multitask_chain.yaml")
    fns, outputs = {}, {}
    for m, s in pairs:
        for name in (m, s):
            fns[name], outputs[name] = _session_fn(Path(rows[name]["artifact"]), threads)
    tok = AutoTokenizer.from_pretrained(rows[pairs[0][0]]["artifact"])
    out = {"outputs": outputs}
    for bs, n in calls.items():
        rng = random.Random(bs)
        encs = []
        for _ in range(n):
            batch = rng.sample(texts, bs)
            enc = tok(batch, padding=True, truncation=True, max_length=128, return_tensors="np")
            encs.append({k: v.astype(np.int64) for k, v in enc.items()})
        timing = time_interleaved({name: (lambda i, f=f: f(encs[i % len(encs)])) for name, f in fns.items()},
                                  n_calls=n, warmup=5)
        stats = getattr(timing, "stats", timing)
        res = {name: {"p50_ms": round(stats[name].p50_ms, 3), "p90_ms": round(stats[name].p90_ms, 3),
                      "p50_ci95_ms": [round(x, 3) for x in stats[name].p50_ci95_ms], "calls": n} for name in fns}
        for m, s in pairs:
            r = timing.ratio(m, s)
            res[f"{m} / {s}"] = {"median_ratio": round(r.value, 4), "ci95": [round(x, 4) for x in r.ci95]}
        out[str(bs)] = res
    return out


def render(report: dict) -> str:
    lines = [f"# One compressed multi-task model out of the chain ({report['date']})", "",
             "Produced by:", "", "```", *report["commands"], "```", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} vCPUs; host load (uptime) before "
             f"timing {report['machine']['load_before']}, after {report['machine']['load_after']} (other jobs were "
             "running: timings are noisy, the ratios come from one interleaved run). ONNX Runtime "
             f"{report['machine']['onnxruntime']}, {report['threads']} intra-op thread(s).", "",
             f"## Accuracy per task ({report['split']} split), vs the uncompressed final artifact `{report['final']}`",
             "", "| stage | " + " | ".join(report["tasks"]) + " |", "|---|" + "---|" * len(report["tasks"])]
    for stage, per in report["accuracy"].items():
        cells = []
        for t in report["tasks"]:
            a, d = per[t]["accuracy"], per[t]["delta_points"]
            cells.append("—" if a is None else f"{a:.4f}" + ("" if stage == report["final"] else f" ({d:+.2f})"))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += ["", f"Goal: every task within 1.0 point of `{report['final']}` for the compressed multi-task export "
              f"(`{report['compressed']}`): **{'met' if report['accuracy_goal_met'] else 'not met'}** "
              f"(worst {report['worst_delta_points']:+.2f} points).", "",
              "## One encoder pass: multi-task graph (every output) vs single-task graph (own head), same pruned model",
              "", "| batch | variant | p50 ms | p50 95% CI | calls |", "|---|---|---|---|---|"]
    for bs in report["batches"]:
        res = report["timing"][str(bs)]
        for name, r in res.items():
            if "p50_ms" in r:
                lines.append(f"| {bs} | {name} | {r['p50_ms']:.3f} | {r['p50_ci95_ms'][0]:.3f}–{r['p50_ci95_ms'][1]:.3f}"
                             f" | {r['calls']} |")
    lines += ["", "| batch | ratio (median, multi / single) | 95% CI (paired bootstrap) |", "|---|---|---|"]
    for bs in report["batches"]:
        for name, r in report["timing"][str(bs)].items():
            if "median_ratio" in r:
                lines.append(f"| {bs} | {name}: {r['median_ratio']:.3f} | {r['ci95'][0]:.3f}–{r['ci95'][1]:.3f} |")
    lines += ["", f"Goal: one multi-task encoder pass <= 1.1x the single-task model (int8 pair): "
              f"**{'met' if report['timing_goal_met'] else 'not met'}**.", ""]
    return "\n".join(lines)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None, prog: str = "python -m compress.multitask_report") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="output directory of a multitask_chain run (has results.json)")
    p.add_argument("--final", default="sst2", help="the uncompressed final stage (default: sst2)")
    p.add_argument("--compressed", default="onnx-int8", help="the compressed multi-task stage (default: onnx-int8)")
    p.add_argument("--out", type=Path, default=Path("docs/results"), help="where the .md and .json go")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls-b1", type=int, default=300)
    p.add_argument("--calls-b32", type=int, default=40)
    args = p.parse_args(argv)

    def run() -> int:
        from chain.task import builtin_task

        if args.threads < 1 or args.calls_b1 < 10 or args.calls_b32 < 10:
            raise SpecError("--threads must be >= 1 and --calls-b1/--calls-b32 >= 10")
        rows = _rows(args.run_dir)
        stages = ["pruned", "recovered", "onnx", "onnx-int8", "onnx-single", "onnx-single-int8"]
        acc = accuracy_table(rows, args.final, stages)
        tasks = list(acc[args.final])
        comp = acc.get(args.compressed)
        if comp is None or any(comp[t]["accuracy"] is None for t in tasks):
            raise SpecError(f"stage {args.compressed!r} lacks an accuracy for some task in results.json")
        worst = min(comp[t]["delta_points"] for t in tasks)
        texts = [x for t in tasks for x in builtin_task(t).load("test").texts]
        load_before = _load()
        timing = time_pairs(rows, texts, args.threads, {1: args.calls_b1, 32: args.calls_b32})
        import onnxruntime

        date = time.strftime("%Y-%m-%d")
        ratios = [timing[str(b)].get("onnx-int8 / onnx-single-int8", {}).get("median_ratio") for b in (1, 32)]
        report = {"date": date, "final": args.final, "compressed": args.compressed, "tasks": tasks,
                  "split": json.loads((args.run_dir / "results.json").read_text())["eval"]["split"],
                  "accuracy": acc, "worst_delta_points": worst, "accuracy_goal_met": worst >= -1.0,
                  "timing": timing, "batches": [1, 32], "threads": args.threads,
                  "timing_goal_met": all(r is not None and r <= 1.1 for r in ratios),
                  "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "load_before": load_before,
                              "load_after": _load(), "onnxruntime": onnxruntime.__version__},
                  "commands": ["python -m chain run examples/multitask_chain.yaml",
                               f"python -m compress.multitask_report {args.run_dir} --threads {args.threads} "
                               f"--calls-b1 {args.calls_b1} --calls-b32 {args.calls_b32}"]}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"multitask-{date}.json").write_text(json.dumps(report, indent=1))
        (args.out / f"multitask-{date}.md").write_text(render(report))
        print(f"wrote {args.out / f'multitask-{date}.md'}")
        return 0

    return guarded(run)


if __name__ == "__main__":
    raise SystemExit(main())
