"""``python -m bench.isolation_check``: do in-process, interleaved figures match each model timed alone?

bench times every stage in one process, interleaved. That is only honest if sharing the
process does not change the numbers (ONNX Runtime threads spinning into PyTorch's time,
allocator or cache interference). This check times PyTorch fp32 and ONNX Runtime int8
(the gate check's artifacts) together in one fresh process, and each alone in its own
fresh process, ``--repeats`` times in rotating order, and reports together/alone for
batch-1 p50 latency and batch-32 throughput. Pass: every median ratio within ±15%.

>>> python -m bench.isolation_check --repeats 5 --report bench-out/gate-check/isolation.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .gate_check import REFERENCE, GateCheckConfig, build
from .harness import MeasureConfig
from .report import emit_markdown

PAIR = (REFERENCE, "onnx-int8")
TOLERANCE = 0.15


def _worker(cfg_path: Path, out: Path, names: list[str]) -> None:
    from chain.artifact import Artifact
    from chain.model import load_tokenizer
    from chain.task import builtin_task

    from .harness import load_predictors, measure_predictors

    d = json.loads(cfg_path.read_text())
    arts = [Artifact.load(p) for p in d["dirs"]]
    arts = [a for a in arts if a.name in names]
    preds, _ = load_predictors(arts, MeasureConfig(**d["measure"]))
    rows = measure_predictors(preds, load_tokenizer(arts[0]), builtin_task("sst2").load("test").texts,
                              MeasureConfig(**d["measure"]))
    out.write_text(json.dumps({n: {"p50_ms": r["latency_ms"]["p50"], "samples_per_s": r["throughput"]["samples_per_s"]}
                               for n, r in rows.items()}))


def _spawn(cfg_path: Path, out: Path, names: list[str]) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    p = subprocess.run([sys.executable, "-m", "bench.isolation_check", "--worker", str(cfg_path), str(out), *names],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"isolation check worker failed:\n{p.stderr[-3000:]}")
    return json.loads(out.read_text())


def run_isolation_check(cfg: GateCheckConfig, repeats: int = 5, log=print) -> dict:
    dirs = build(cfg, log)
    cfg_path = cfg.work / "isolation_config.json"
    cfg_path.write_text(json.dumps({"dirs": [str(d) for d in dirs], "measure": asdict(cfg.measure)}))
    out_dir = cfg.work / "isolation"
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [("together", list(PAIR))] + [(f"alone:{n}", [n]) for n in PAIR]
    ratios: dict[str, dict[str, list[float]]] = {n: {"p50_ms": [], "samples_per_s": []} for n in PAIR}
    runs = []
    t0 = time.perf_counter()
    for r in range(repeats):
        got = {}
        for label, names in jobs[r % 3:] + jobs[:r % 3]:  # rotate, so no job always runs first
            got[label] = _spawn(cfg_path, out_dir / f"{r}-{label.replace(':', '-')}.json", names)
        for n in PAIR:
            for m in ("p50_ms", "samples_per_s"):
                ratios[n][m].append(got["together"][n][m] / got[f"alone:{n}"][n][m])
        runs.append(got)
        log(f"[{time.perf_counter() - t0:5.0f}s] repeat {r}: " + ", ".join(
            f"{n} together/alone p50 {ratios[n]['p50_ms'][-1]:.3f} throughput {ratios[n]['samples_per_s'][-1]:.3f}"
            for n in PAIR))
    medians = {n: {m: statistics.median(v) for m, v in ms.items()} for n, ms in ratios.items()}
    passed = all(abs(v - 1) <= TOLERANCE for ms in medians.values() for v in ms.values())
    from chain.environment import environment

    summary = {"repeats": repeats, "ratios": ratios, "median_ratios": medians, "passed": passed, "runs": runs,
               "measure": asdict(cfg.measure), "environment": environment(cfg.measure.threads),
               "wall_s": round(time.perf_counter() - t0)}
    (cfg.work / "isolation_check.json").write_text(json.dumps(summary, indent=2))
    return summary


def markdown(summary: dict, command: str) -> str:
    env, m = summary["environment"], summary["measure"]
    lines = [f"Command: `{command}`. Machine: {env['cpu']}, {env['cores']} cores, {m['threads']} threads, "
             f"load average {env.get('loadavg_1m')} at the end. Date: {env['date']}. Wall time {summary['wall_s']} s. "
             f"{m['latency_calls']} batch-1 calls, {m['throughput_batches']}x{m['throughput_rounds']} batch-32 "
             "rounds per process.", "",
             "| model | metric | together / alone, per repeat | median | within 15% |", "|---|---|---|---|---|"]
    for n, ms in summary["ratios"].items():
        for metric, vals in ms.items():
            med = summary["median_ratios"][n][metric]
            lines.append(f"| {n} | {'latency p50' if metric == 'p50_ms' else 'throughput'} | "
                         f"{', '.join(f'{v:.3f}' for v in vals)} | {med:.3f} | {'yes' if abs(med - 1) <= TOLERANCE else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.isolation_check", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=GateCheckConfig.work, help="shares the gate check's artifacts")
    p.add_argument("--model", help="HF model directory (default: embedded all-MiniLM-L6-v2)")
    # 5 fresh-process repeats at the full bench's 300 batch-1 calls: with 3 repeats of 150 calls
    # the run-to-run spread (0.99-1.57 for ORT int8 p50) swamped the 15% being checked.
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-calls", type=int, default=300)
    p.add_argument("--report", type=Path, help="also write the Markdown table here")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.worker:
        _worker(Path(a.worker[0]), Path(a.worker[1]), a.worker[2:])
        return 0
    measure = MeasureConfig(threads=a.threads, latency_calls=a.latency_calls, throughput_batches=4,
                            throughput_rounds=3, warmup=5)
    summary = run_isolation_check(GateCheckConfig(work=a.work, model=a.model, measure=measure), a.repeats)
    md = markdown(summary, "python -m bench.isolation_check " + " ".join(argv if argv is not None else sys.argv[1:]))
    emit_markdown(md, a.report)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
