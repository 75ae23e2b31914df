"""``python -m bench.isolation_check``: do bench's figures match each model timed alone?

bench times every stage interleaved, either one worker process per model (``process``, the
default) or all models in one process (``inprocess``). Either is only honest if it gives
the figures a user gets running that model alone. This check times the gate check's
artifacts plus three, one per runtime bench times (PyTorch fp32, PyTorch dynamic int8, ONNX
Runtime fp32 and int8, OpenVINO of the fp32 ONNX, PyTorch bf16 autocast, NNCF int8 on
OpenVINO), together as bench
does in each ``--mode``, and each alone in a fresh process of its own, ``--repeats`` times in
rotating order, and reports together/alone for batch-1 p50 latency and batch-32 throughput.
By default (``--alone paired``) the alone processes run in the same minutes as the together
figures, in alternating segments (``bench/paired_alone.py``): timed minutes apart, the ratio
also carried how the shared host had changed meanwhile (ORT int8 alone: 4.90 then 3.86 ms
12 minutes later on a 2-vCPU EPYC).
Pass: every median ratio within ±10%.

>>> python -m bench.isolation_check --repeats 3 --mode both --report bench-out/gate-check/isolation.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from chain.cli import add_common, guarded, nonnegative_int, positive_int, quiet_libraries
from chain.environment import cpu_steal_s

from .gate_check import CHAIN, EXTRA, REFERENCE, GateCheckConfig, build
from .harness import ISOLATION, MeasureConfig
from .report import emit_markdown

# fp32 (PyTorch), int8 (torch-int8), onnx, onnx-int8 (ONNX Runtime), openvino, torch-bf16, openvino-int8 (NNCF)
MODELS = (REFERENCE, *CHAIN, *EXTRA)
METRICS = {"p50_ms": "latency p50", "samples_per_s": "throughput"}
ALONE = ("paired", "sequential")
TOLERANCE = 0.10


def _worker(cfg_path: Path, out: Path, mode: str, names: list[str]) -> None:
    """One fresh bench process: ``names`` timed together with ``mode`` (alone: one name)."""
    from chain.artifact import Artifact
    from chain.task import builtin_task

    from .harness import measure_speed

    d = json.loads(cfg_path.read_text())
    arts = [a for a in (Artifact.load(p) for p in d["dirs"]) if a.name in names]
    rows = measure_speed(arts, builtin_task("sst2").load("test").texts,
                         MeasureConfig(**{**d["measure"], "isolation": mode}))
    bad = {n: r["reason"] for n, r in rows.items() if r.get("status") == "failed"}
    if bad:
        raise RuntimeError(f"timing failed: {bad}")
    out.write_text(json.dumps({n: {"p50_ms": r["latency_ms"]["p50"], "samples_per_s": r["throughput"]["samples_per_s"],
                                   "timing": r["timing"], "memory_mb": r["memory_mb"]} for n, r in rows.items()}))


def _paired(cfg_path: Path, out: Path, mode: str, names: list[str]) -> None:
    """One fresh driver process: ``names`` together (``mode``) and each alone, paired in time."""
    from chain.artifact import Artifact
    from chain.task import builtin_task

    from .paired_alone import time_paired

    d = json.loads(cfg_path.read_text())
    arts = [a for a in (Artifact.load(p) for p in d["dirs"]) if a.name in names]
    got = time_paired(arts, builtin_task("sst2").load("test").texts, MeasureConfig(**{**d["measure"], "isolation": mode}),
                      mode, d.get("segment", 30))
    out.write_text(json.dumps({side: {n: {**f, "timing": {"mode": mode if side == "together" else "alone-paired",
                                                          "segment": got["segment"]}}
                                      for n, f in by.items()} for side, by in got["figures"].items()}))


def _spawn(cfg_path: Path, out: Path, mode: str, names: list[str], flag: str = "--worker") -> dict:
    """Run one process; its figures, plus its wall time and the CPU time the host stole meanwhile."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # as `python -m bench`
    steal0, t0 = cpu_steal_s(), time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "bench.isolation_check", flag, str(cfg_path), str(out), mode,
                        *names], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"isolation check process failed:\n{p.stderr[-3000:]}")
    steal1, wall = cpu_steal_s(), time.perf_counter() - t0
    stolen = None if steal0 is None or steal1 is None else round(steal1 - steal0, 2)
    return {**json.loads(out.read_text()), "_host": {"wall_s": round(wall, 1), "steal_s": stolen}}


def _figures(got: dict, alone: str, mode: str, name: str) -> tuple[dict, dict]:
    """(together, alone) figures of ``name`` in one repeat's processes."""
    if alone == "paired":
        return got[f"paired:{mode}"]["together"][name], got[f"paired:{mode}"]["alone"][name]
    return got[f"together:{mode}"][name], got[f"alone:{name}"][name]


def run_isolation_check(cfg: GateCheckConfig, repeats: int = 5, log=print, modes: tuple[str, ...] | None = None,
                        models: tuple[str, ...] = MODELS, alone: str = "paired", segment: int = 30) -> dict:
    """Per repeat, in rotating order: with ``alone="paired"`` one driver process per mode, which
    times the models together and each alone in alternating segments (``bench.paired_alone``);
    with ``"sequential"`` one 'together' process per mode, then one 'alone' process per model."""
    modes = modes or (cfg.measure.isolation,)
    if repeats < 1 or not modes or any(m not in ISOLATION for m in modes) or not set(models) <= set(MODELS) \
            or alone not in ALONE or segment < 1:
        raise ValueError(f"need repeats >= 1, modes among {ISOLATION}, models among {MODELS}, "
                         f"alone among {ALONE}, segment >= 1")
    dirs = build(cfg, log, extra=tuple(n for n in EXTRA if n in models))
    from chain.artifact import Artifact

    have = {Artifact.load(d).name for d in dirs}
    if missing := [n for n in models if n not in have]:
        log(f"not timed (their stage was skipped on this machine): {', '.join(missing)}")
        models = tuple(n for n in models if n in have)
    cfg_path = cfg.work / "isolation_config.json"
    cfg_path.write_text(json.dumps({"dirs": [str(d) for d in dirs], "measure": asdict(cfg.measure), "segment": segment}))
    out_dir = cfg.work / "isolation"
    out_dir.mkdir(parents=True, exist_ok=True)
    if alone == "paired":
        jobs = [(f"paired:{m}", m, list(models)) for m in modes]
    else:
        jobs = [(f"together:{m}", m, list(models)) for m in modes] + [(f"alone:{n}", "inprocess", [n]) for n in models]
    ratios = {m: {n: {k: [] for k in METRICS} for n in models} for m in modes}
    runs = []
    t0 = time.perf_counter()
    for r in range(repeats):
        got = {}
        k = r % len(jobs)
        for label, mode, names in jobs[k:] + jobs[:k]:  # rotate, so no job always runs first
            got[label] = _spawn(cfg_path, out_dir / f"{r}-{label.replace(':', '-')}.json", mode, names,
                                "--paired" if alone == "paired" else "--worker")
        for m in modes:
            for n in models:
                for metric in METRICS:
                    tog, alo = _figures(got, alone, m, n)
                    ratios[m][n][metric].append(tog[metric] / alo[metric])
        runs.append({**got, "loadavg_1m": round(os.getloadavg()[0], 2), "steal": _steal_share(got)})
        log(f"[{time.perf_counter() - t0:5.0f}s] repeat {r} (load {runs[-1]['loadavg_1m']}, "
            f"steal {_fmt_share(runs[-1]['steal'])}): " + "; ".join(
            f"{m} {n} p50 {ratios[m][n]['p50_ms'][-1]:.3f} thr {ratios[m][n]['samples_per_s'][-1]:.3f}"
            for m in modes for n in models))
    medians = {m: {n: {k: statistics.median(v) for k, v in ms.items()} for n, ms in by.items()}
               for m, by in ratios.items()}
    passed_by_mode = {m: all(abs(v - 1) <= TOLERANCE for ms in by.values() for v in ms.values())
                      for m, by in medians.items()}
    from chain.environment import environment

    summary = {"repeats": repeats, "alone": alone, "segment": segment, "modes": list(modes), "models": list(models), "ratios": ratios,
               "median_ratios": medians, "passed_by_mode": passed_by_mode, "passed": all(passed_by_mode.values()),
               "runs": runs, "measure": asdict(cfg.measure), "environment": environment(cfg.measure.threads),
               "tolerance": TOLERANCE, "wall_s": round(time.perf_counter() - t0)}
    (cfg.work / "isolation_check.json").write_text(json.dumps(summary, indent=2))
    return summary


def _steal_share(got: dict) -> dict:
    """Per process of a repeat: the share of its wall time x cores that the host stole."""
    cores = os.cpu_count() or 1
    return {label: (None if h["steal_s"] is None else round(h["steal_s"] / (h["wall_s"] * cores), 4))
            for label, h in ((label, r["_host"]) for label, r in got.items())}


def _fmt_share(shares: dict) -> str:
    vals = [v for v in shares.values() if v is not None]
    return "n/a" if not vals else f"max {100 * max(vals):.1f}%"


def markdown(summary: dict, command: str) -> str:
    env, m = summary["environment"], summary["measure"]
    loads = [r["loadavg_1m"] for r in summary["runs"]]
    pct = round(100 * summary["tolerance"])
    lines = [f"Command: `{command}`. Machine: {env['cpu']}, {env['cores']} cores, {m['threads']} threads, "
             f"torch {env['versions'].get('torch')}, onnxruntime {env['versions'].get('onnxruntime')}; "
             f"load average (1 min) after each repeat: {', '.join(map(str, loads))}; CPU time stolen by the host, "
             f"most of any process in each repeat: {', '.join(_fmt_share(r.get('steal', {})) for r in summary['runs'])}. "
             f"Date: {env['date']}. "
             f"Wall time {summary['wall_s']} s. {m['latency_calls']} batch-1 calls, {m['throughput_batches']}x"
             f"{m['throughput_rounds']} batch-32 rounds per process; batch-1 turns of {m.get('latency_block', 1)} "
             f"call(s) after {m.get('latency_turn_warmup', 0)} untimed, batch-32 turns of "
             f"{m.get('throughput_block', 1)} after {m.get('throughput_turn_warmup', 0)}. "
             "`process`: one worker process per model, "
             "driven in rotation; `inprocess`: all models in one process; alone: one fresh process per model"
             + (f", in the same driver process and minutes as the together figures, the two sides alternating "
                f"every {summary['segment']} batch-1 calls and every batch-32 round (`bench/paired_alone.py`)."
                if summary.get("alone") == "paired" else ", run after the together processes (`--alone sequential`)."),
             "",
             f"| mode | model | metric | together / alone, per repeat | median | within {pct}% |",
             "|---|---|---|---|---|---|"]
    for mode, by in summary["ratios"].items():
        for n, ms in by.items():
            for metric, vals in ms.items():
                med = summary["median_ratios"][mode][n][metric]
                lines.append(f"| {mode} | {n} | {METRICS[metric]} | {', '.join(f'{v:.3f}' for v in vals)} | "
                             f"{med:.3f} | {'yes' if abs(med - 1) <= summary['tolerance'] else 'NO'} |")
    if {"process", "inprocess"} <= set(summary["ratios"]):
        # the two modes' together figures of a repeat ran next to each other: their ratio shows
        # what the mode changes
        lines += ["", "| model | metric | process / inprocess, per repeat | median |", "|---|---|---|---|"]
        alone = summary.get("alone", "sequential")
        for n in summary["models"]:
            for metric in METRICS:
                vals = [_figures(r, alone, "process", n)[0][metric] / _figures(r, alone, "inprocess", n)[0][metric]
                        for r in summary["runs"]]
                lines.append(f"| {n} | {METRICS[metric]} | {', '.join(f'{v:.3f}' for v in vals)} | "
                             f"{statistics.median(vals):.3f} |")
    verdicts = ", ".join(f"{mode}: {'passed' if ok else 'FAILED'}" for mode, ok in summary["passed_by_mode"].items())
    return "\n".join(lines + ["", f"Check ({pct}% on every median): {verdicts}."])


def main(argv=None, prog: str = "python -m bench.isolation_check") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_common(p, output=True, output_default=str(GateCheckConfig.work),
               output_help="artifacts (shared with the gate check) and runs")
    p.add_argument("--model", help="HF model directory (default: embedded all-MiniLM-L6-v2)")
    p.add_argument("--mode", choices=(*ISOLATION, "both"), default=MeasureConfig.isolation,
                   help="how the 'together' figures are timed (default: bench's default)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    # fresh-process repeats at the full bench's 300 batch-1 calls: with 3 repeats of 150 calls
    # the run-to-run spread (0.99-1.57 for ORT int8 p50, in-process) swamped the 15% then checked.
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--threads", type=positive_int, default=2, metavar="N", help="intra-op threads (default: 2)")
    p.add_argument("--latency-calls", type=positive_int, default=300)
    # 4x3 batch-32 calls per process left throughput ratios at 0.83-1.26 between repeats on a
    # quiet 2-vCPU EPYC (docs/results/isolation-check-6-runtimes-2026-12-02.md)
    p.add_argument("--throughput-rounds", type=positive_int, default=3, help="rounds of 4 batches of 32 (default: 3)")
    p.add_argument("--alone", choices=ALONE, default="paired",
                   help="paired (default): each model alone in a worker of its own, alternating with the together "
                        "figures in one driver process, so both see the same minutes of the host; sequential: "
                        "fresh processes one after another (drift of the host lands in the ratio)")
    p.add_argument("--segment", type=positive_int, default=30, help="batch-1 calls per paired segment (default: 30)")
    p.add_argument("--latency-block", type=positive_int, default=MeasureConfig.latency_block,
                   help=f"batch-1 calls a model gets per turn of the rotation (default: bench's, "
                        f"{MeasureConfig.latency_block})")
    p.add_argument("--throughput-block", type=positive_int, default=MeasureConfig.throughput_block,
                   help=f"batch-32 calls a model gets per turn (default: bench's, {MeasureConfig.throughput_block})")
    p.add_argument("--throughput-turn-warmup", type=nonnegative_int, default=MeasureConfig.throughput_turn_warmup,
                   help=f"untimed batch-32 calls that start each turn (default: bench's, "
                        f"{MeasureConfig.throughput_turn_warmup})")
    p.add_argument("--report", type=Path, help="also write the Markdown table here")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--paired", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    quiet_libraries(a.verbose, a.quiet)
    if a.worker:
        _worker(Path(a.worker[0]), Path(a.worker[1]), a.worker[2], a.worker[3:])
        return 0
    if a.paired:
        _paired(Path(a.paired[0]), Path(a.paired[1]), a.paired[2], a.paired[3:])
        return 0
    if a.model and not Path(a.model).is_dir():
        print(f"error: --model {a.model} is not a directory", file=sys.stderr)
        return 2
    return guarded(lambda: _check(a, argv), "interrupted: artifacts built so far are kept under " + str(a.output))


def _check(a, argv) -> int:
    measure = MeasureConfig(threads=a.threads, latency_calls=a.latency_calls, throughput_batches=4,
                            throughput_rounds=a.throughput_rounds, warmup=5, latency_block=a.latency_block,
                            throughput_block=a.throughput_block, throughput_turn_warmup=a.throughput_turn_warmup)
    modes = ISOLATION if a.mode == "both" else (a.mode,)
    cfg = GateCheckConfig(work=a.output, model=a.model, measure=replace(measure, isolation=modes[0]))
    summary = run_isolation_check(cfg, a.repeats, modes=modes, models=tuple(a.models), alone=a.alone,
                                  segment=a.segment)
    md = markdown(summary, "python -m bench.isolation_check " + " ".join(argv if argv is not None else sys.argv[1:]))
    emit_markdown(md, a.report)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
