"""``python -m bench.gate_check``: does the gate cry wolf, and does it catch real regressions?

Builds the chain's compressed stages once from an untrained-head model (no fine-tuning:
latency does not care about the head), then records, each in a fresh process like a CI
job would:

* ``--baseline-runs`` baseline runs (default 3), merged into their median
  (``bench.compare.merge_runs``), as docs/gating.md recommends;
* ``--runs`` same-code runs: the gate should fire at most once in 10;
* ``--runs`` runs where one stage is made ``--slowdown`` times slower (its predictor
  busy-waits for the extra fraction of its own call time, so every call pays it): the
  gate should fire in at least 9 of 10;
* each same-code run again with one stage's accuracy lowered by ``--accuracy-drop``
  points (edited into the results): the gate must always fire.

Same-code and slowed runs alternate, so a busy period of the shared machine hits both.

>>> python -m bench.gate_check --runs 10 --report bench-out/gate-check/report.md
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .compare import Thresholds, compare_results, merge_runs
from .harness import MeasureConfig
from .report import emit_markdown
from chain.jsonio import write_json_atomic

REFERENCE = "fp32"
CHAIN = ("int8", "onnx", "onnx-int8")
# the other runtimes bench times (the isolation check's, not the gate check's): OpenVINO of the
# fp32 ONNX, the reference under torch bf16 autocast, and NNCF int8 on OpenVINO as the default
# chain builds it (bf16 where the CPU has it, 4-bit embeddings: bench's batch-32 pick on AVX-512)
RUNTIME_STAGES = ({"name": "openvino", "type": "export_openvino", "parent": "onnx"},
                  {"name": "torch-bf16", "type": "peer_torch_bf16", "parent": "source"},
                  {"name": "openvino-int8", "type": "quantize_openvino_int8", "parent": "onnx",
                   # the reference's head is untrained (timing only): its logits are near ties, which
                   # int8 flips (agreement 0.930 on 64 sentences), so the stage's check is loosened
                   "config": {"precision": "auto", "embeddings": "int4", "min_agreement": 0.5}})
EXTRA = tuple(s["name"] for s in RUNTIME_STAGES)


@dataclass
class GateCheckConfig:
    work: Path = Path("bench-out/gate-check")
    model: str | None = None  # HF directory; None = the embedded all-MiniLM-L6-v2
    runs: int = 10
    baseline_runs: int = 3
    confirm: bool = True  # a first run that fires is re-run once; the median of both is gated
    slowdown: float = 1.2  # the injected regression: the slowed stage takes 1.2x its time
    slow_stage: str = "onnx-int8"
    accuracy_drop_pts: float = 1.0
    eval_examples: int = 300  # SST-2 test sentences for the (fixed) accuracies
    thresholds: Thresholds = field(default_factory=Thresholds)
    measure: MeasureConfig = field(default_factory=MeasureConfig.quick)

    def __post_init__(self) -> None:
        if self.runs < 1 or self.baseline_runs < 1 or self.slowdown <= 1 or self.slow_stage not in CHAIN:
            raise ValueError(f"need runs >= 1, baseline_runs >= 1, slowdown > 1 and slow_stage in {CHAIN}: {self}")


def build(cfg: GateCheckConfig, log=print, extra: tuple[str, ...] = ()) -> list[Path]:
    """The reference (model + seeded 2-label head) and the chain's stages, built once and reused
    (through the chain executor: a second call finds every stage cached); ``extra`` names the
    ``RUNTIME_STAGES`` to add, so every runtime the caller times has an artifact."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from chain.artifact import MANIFEST, staging_dir, write_manifest
    from chain.executor import run_chain
    from chain.spec import parse_spec
    from chain.task import builtin_task

    from .spec import default_model_path

    src = cfg.model or default_model_path()
    ref_dir = cfg.work / REFERENCE
    if not (ref_dir / MANIFEST).is_file():
        log(f"building {REFERENCE} + {', '.join(CHAIN)} from {src} under {cfg.work}")
        with staging_dir(ref_dir) as tmp:
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2, use_safetensors=True)
            model.save_pretrained(tmp, safe_serialization=True)
            AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
            write_manifest(tmp, stage=REFERENCE, format="hf", num_labels=2, source=str(src),
                           task=builtin_task("sst2").to_dict(), note="untrained classification head: for timing only")
    spec = parse_spec({"name": "gate-check", "model": str(ref_dir),
                       "eval": {"max_samples": cfg.eval_examples, "threads": cfg.measure.threads},
                       "stages": [{"name": "int8", "type": "quantize_int8", "parent": "source"},
                                  {"name": "onnx", "type": "export_onnx", "parent": "source"},
                                  {"name": "onnx-int8", "type": "quantize_onnx_int8", "parent": "onnx"},
                                  *(s for s in RUNTIME_STAGES if s["name"] in extra)]})
    results = run_chain(spec, cfg.work / "chain", log=lambda msg: None)
    built = []
    for r in results["stages"]:
        if r["status"] == "skipped" and r["name"] in EXTRA:  # e.g. no native bf16 on this CPU
            log(f"{r['name']} skipped: {r['reason']}")
        elif r["status"] not in ("ok", "cached"):
            raise RuntimeError(f"gate check: stage {r['name']} {r['status']}: {r['reason']}")
        else:
            built.append(Path(r["artifact"]))
    return [ref_dir] + built


def slowed(pred, factor: float):
    """``pred`` made ``factor`` times slower on every call (busy-wait, so it costs CPU like real work)."""
    from chain.predict import Predictor

    def run(enc):
        t0 = time.perf_counter()
        out = pred(enc)
        until = t0 + factor * (time.perf_counter() - t0)
        while time.perf_counter() < until:
            pass
        return out

    return Predictor(pred.name, pred.backend, run)


def measure_run(cfg: GateCheckConfig, dirs: list[Path], slow: bool) -> dict:
    """One run's results.json (same schema as ``python -m bench``), timed in this process."""
    from chain.artifact import Artifact
    from chain.environment import environment
    from chain.evaluate import EvalConfig, Evaluator
    from chain.model import load_tokenizer
    from chain.task import builtin_task

    from .harness import load_predictors, measure_predictors

    arts = [Artifact.load(d) for d in dirs]
    preds, _ = load_predictors(arts, cfg.measure)
    if slow:
        preds[cfg.slow_stage] = slowed(preds[cfg.slow_stage], cfg.slowdown)
    texts = builtin_task("sst2").load("test").texts
    speed = measure_predictors(preds, load_tokenizer(arts[0]), texts, cfg.measure, reference=REFERENCE)
    ev = Evaluator(EvalConfig(max_samples=cfg.eval_examples, threads=cfg.measure.threads),
                   {"sst2": builtin_task("sst2")})
    rows = []
    for a in arts:
        m = ev.accuracy(a, ["sst2"])["sst2"]
        rows.append({"name": a.name, "status": "ok", "accuracy": m["accuracy"], "examples": m["examples"],
                     "size_mb": round(a.size_mb(), 2), **speed[a.name]})
    return {"reference": REFERENCE, "task": "sst2", "quick": True, "environment": environment(cfg.measure.threads),
            "measure": asdict(cfg.measure), "stages": rows,
            "gate_check": {"slowed_stage": cfg.slow_stage if slow else None, "slowdown": cfg.slowdown if slow else 1.0}}


def _spawn(cfg_path: Path, out: Path, slow: bool) -> dict:
    cmd = [sys.executable, "-m", "bench.gate_check", "--worker", str(cfg_path), str(out)] + (["--slow"] if slow else [])
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # as `python -m bench`
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"gate check worker failed:\n{p.stderr[-3000:]}")
    return json.loads(out.read_text())


def drop_accuracy(results: dict, stage: str, points: float) -> dict:
    out = copy.deepcopy(results)
    row = next(s for s in out["stages"] if s["name"] == stage)
    row["accuracy"] = row["accuracy"] - points / 100
    return out


def _change(cmp, stage: str, metric: str) -> float | None:
    return next((c.change_pct for c in cmp.changes if c.stage == stage and c.metric == metric), None)


def _gate(cfg: GateCheckConfig, cfg_path: Path, base: dict, name: Path, slow: bool) -> tuple[dict, object, object]:
    """One CI-style gate: a run; if it fires and ``confirm``, one re-run and the median of both."""
    first = _spawn(cfg_path, name, slow)
    first["_path"] = str(name)
    c1 = compare_results(base, first, cfg.thresholds)
    if not (c1.regressed and cfg.confirm):
        return first, c1, c1
    again = _spawn(cfg_path, name.with_name(name.stem + "-rerun.json"), slow)
    again["_path"] = str(name.with_name(name.stem + "-rerun.json"))
    return first, c1, compare_results(base, merge_runs([first, again], "current"), cfg.thresholds)


def run_gate_check(cfg: GateCheckConfig, log=print) -> dict:
    """Record the runs, gate each against the baseline, return counts and per-run rows."""
    dirs = build(cfg, log)
    runs_dir = cfg.work / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = cfg.work / "gate_check_config.json"
    cfg_path.write_text(json.dumps({**asdict(cfg), "dirs": [str(d) for d in dirs]}, default=str))
    t0 = time.perf_counter()
    bases = []
    for k in range(cfg.baseline_runs):
        bases.append(_spawn(cfg_path, runs_dir / f"baseline-{k}.json", slow=False))
        bases[-1]["_path"] = str(runs_dir / f"baseline-{k}.json")
    base = merge_runs(bases)
    rows = []
    for k in range(cfg.runs):
        same_doc, same1, same = _gate(cfg, cfg_path, base, runs_dir / f"same-{k:02d}.json", slow=False)
        _, slow1, slow = _gate(cfg, cfg_path, base, runs_dir / f"slow-{k:02d}.json", slow=True)
        acc = compare_results(base, drop_accuracy(same_doc, cfg.slow_stage, cfg.accuracy_drop_pts), cfg.thresholds)
        worst = max((c for c in same1.changes if c.change_pct is not None and c.metric != "accuracy"),
                    key=lambda c: c.change_pct)
        row = {"run": k, "same_first_fired": same1.regressed, "same_fired": same.regressed,
               "same_rerun": same is not same1, "slow_rerun": slow is not slow1,
               "same_worst": f"{worst.stage} {worst.metric} {worst.change_pct:+.1f}% (±{worst.noise_pct:.1f})",
               "slow_first_fired": slow1.regressed, "slow_fired": slow.regressed,
               "slow_latency_change": _change(slow1, cfg.slow_stage, "speedup latency_tmean"),
               "slow_throughput_change": _change(slow1, cfg.slow_stage, "speedup throughput"),
               "slow_overall_change": _change(slow1, cfg.slow_stage, "speedup overall"),
               "accuracy_drop_fired": acc.regressed, "loadavg_1m": same_doc["environment"]["loadavg_1m"]}
        rows.append(row)
        log(f"[{time.perf_counter() - t0:5.0f}s] run {k}: same code {_cell(row, 'same')} (worst {row['same_worst']}); "
            f"{cfg.slowdown:g}x-slow {cfg.slow_stage} {_cell(row, 'slow')} (latency {row['slow_latency_change']:+.1f}%, "
            f"throughput {row['slow_throughput_change']:+.1f}%); accuracy -{cfg.accuracy_drop_pts:g} pts "
            f"{'FIRED' if row['accuracy_drop_fired'] else 'missed'}")
    summary = {"runs": cfg.runs, "same_code_fired": sum(r["same_fired"] for r in rows),
               "same_code_first_run_fired": sum(r["same_first_fired"] for r in rows),
               "slowed_fired": sum(r["slow_fired"] for r in rows),
               "slowed_first_run_fired": sum(r["slow_first_fired"] for r in rows),
               "accuracy_drop_fired": sum(r["accuracy_drop_fired"] for r in rows),
               "wall_s": round(time.perf_counter() - t0), "environment": base["environment"],
               "config": json.loads(json.dumps(asdict(cfg), default=str)), "rows": rows}
    summary["passed"] = (summary["same_code_fired"] <= max(1, cfg.runs // 10)
                         and summary["slowed_fired"] >= 0.9 * cfg.runs and summary["accuracy_drop_fired"] == cfg.runs)
    write_json_atomic(cfg.work / "gate_check.json", summary)
    return summary


def _cell(row: dict, kind: str) -> str:
    """pass | FIRED | FIRED, confirmed | fired, not confirmed (the re-run's median passed)."""
    if not row[f"{kind}_first_fired"]:
        return "pass"
    if not row[f"{kind}_rerun"]:
        return "FIRED"
    return "FIRED, confirmed" if row[f"{kind}_fired"] else "fired, not confirmed"


def markdown(summary: dict, command: str) -> str:
    env, c = summary["environment"], summary["config"]
    m = c["measure"]
    confirm = "; a first run that fires is re-run once and the median of both is gated" if c["confirm"] else ""
    lines = [f"Command: `{command}`. Machine: {env['cpu']}, {env['cores']} cores, {env['threads']} threads, "
             f"torch {env['versions'].get('torch')}, onnxruntime {env['versions'].get('onnxruntime')}; "
             f"load average at baseline {env.get('loadavg_1m')}. Date: {env['date']}. Wall time {summary['wall_s']} s.",
             f"Timing per run: {m['latency_calls']} batch-1 calls and {m['throughput_batches']}x"
             f"{m['throughput_rounds']} batch-32 rounds per stage, {m['threads']} threads. Baseline: median of "
             f"{c['baseline_runs']} runs{confirm}. Thresholds: max slowdown "
             f"{c['thresholds']['max_slowdown_pct']:g}%, max accuracy drop {c['thresholds']['max_accuracy_drop_pts']:g} "
             f"pts, noise floor {c['thresholds']['noise_floor_pct']:g}%.",
             "", f"| run | same code: gate | same code: worst change (± noise) | {c['slowdown']:g}x slower "
             f"`{c['slow_stage']}`: gate | its latency / throughput / overall change | accuracy "
             f"-{c['accuracy_drop_pts']:g} pts: gate | load avg |", "|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['run']} | {_cell(r, 'same')} | {r['same_worst']} | {_cell(r, 'slow')} | "
                     f"{r['slow_latency_change']:+.1f}% / {r['slow_throughput_change']:+.1f}% / "
                     f"{r['slow_overall_change']:+.1f}% | {'FIRED' if r['accuracy_drop_fired'] else 'missed'} "
                     f"| {r['loadavg_1m']} |")
    n = summary["runs"]
    lines += ["", f"**Same code: gate failed {summary['same_code_fired']}/{n} (first runs fired "
                  f"{summary['same_code_first_run_fired']}/{n}). {c['slowdown']:g}x slowdown: gate failed "
                  f"{summary['slowed_fired']}/{n} (first runs {summary['slowed_first_run_fired']}/{n}). "
                  f"Accuracy drop: fired {summary['accuracy_drop_fired']}/{n}.** "
                  f"Check {'passed' if summary['passed'] else 'FAILED'} (needs <= 1/10, >= 9/10, 10/10)."]
    return "\n".join(lines)


def main(argv=None, prog: str = "python -m bench.gate_check") -> int:
    from chain.cli import add_common, quiet_libraries

    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_common(p, output=True, output_default=str(GateCheckConfig.work), output_help="artifacts and runs")
    p.add_argument("--model", help="HF model directory (default: embedded all-MiniLM-L6-v2)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--baseline-runs", type=int, default=3)
    p.add_argument("--no-confirm", action="store_true", help="gate single runs, no re-run of a run that fires")
    p.add_argument("--slowdown", type=float, default=1.2)
    p.add_argument("--threads", type=int, default=2, metavar="N", help="intra-op threads (default: 2)")
    p.add_argument("--latency-calls", type=int, help="override the --quick measurement's batch-1 calls")
    p.add_argument("--report", type=Path, help="also write the Markdown table here")
    p.add_argument("--worker", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--slow", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    quiet_libraries(a.verbose, a.quiet)
    if a.worker:
        d = json.loads(Path(a.worker[0]).read_text())
        cfg = GateCheckConfig(work=Path(d["work"]), model=d["model"], runs=d["runs"], baseline_runs=d["baseline_runs"],
                              confirm=d["confirm"], slowdown=d["slowdown"],
                              slow_stage=d["slow_stage"], thresholds=Thresholds(**d["thresholds"]),
                              measure=MeasureConfig(**d["measure"]))
        Path(a.worker[1]).write_text(json.dumps(measure_run(cfg, [Path(x) for x in d["dirs"]], a.slow), indent=1))
        return 0
    measure = MeasureConfig.quick(a.threads)
    if a.latency_calls:
        measure.latency_calls = a.latency_calls
    cfg = GateCheckConfig(work=a.output, model=a.model, runs=a.runs, baseline_runs=a.baseline_runs,
                          confirm=not a.no_confirm, slowdown=a.slowdown, measure=measure)
    summary = run_gate_check(cfg)
    md = markdown(summary, "python -m bench.gate_check " + " ".join(argv if argv is not None else sys.argv[1:]))
    emit_markdown(md, a.report)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
