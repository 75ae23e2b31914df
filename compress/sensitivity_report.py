"""Per-layer quantization sensitivity report: which Linears cost the most accuracy under int8 and int4.

    python -m compress.sensitivity_report bench-out/default/artifacts/00-finetune --eval-samples 256

>>> report = sensitivity_report("bench-out/default/artifacts/00-finetune", schemes=("int8",))
>>> report["schemes"]["int8"]["layers"][0]        # the costliest layer first
{'layer': 'bert...', 'accuracy': ..., 'drop_points': ...}
>>> print(markdown(report, top=5))

Each row quantizes one Linear while every other stays fp32 (``layer_sensitivity``); the
"all layers" line quantizes every eligible Linear at once, because per-layer costs do not
add up. Evaluations: 1 (fp32) + per scheme L (one per Linear) + 1 (all layers); L = 37 for
MiniLM-L6 (6 x 6 encoder Linears + the pooler; the classifier is never quantized).
Drops are fp32 - quantized, in accuracy points (0.01 accuracy = 1 point).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from chain.artifact import Artifact
from chain.errors import DataError, ModelError, SpecError
from chain.task import SPLITS, Task, builtin_task
from chain.jsonio import write_json_atomic

# torch, transformers and compress.sensitivity are imported inside the functions: the
# command line sets OMP_WAIT_POLICY before torch loads (see main).

DEFAULT_OUTPUT = Path("bench-out/sensitivity")
DEFAULT_TOP = 10


def _points(fp32: float, accuracy: float) -> float:
    return round(100 * (fp32 - accuracy), 4)  # rounded so 1 example in 32 reads 3.125, not 3.1250000000000027


def _resolve_task(artifact: Artifact, task: str | Task | None) -> tuple[Task, str]:
    """The task given explicitly wins (it is what the caller asked for); else the manifest's."""
    if isinstance(task, Task):
        return task, "argument"
    if task is not None:
        return builtin_task(task), "argument"
    if artifact.manifest.get("task"):
        return Task.from_dict(artifact.manifest["task"]), "manifest"
    raise SpecError(f"{artifact.path} records no task to measure accuracy on; pass the task it was "
                    "fine-tuned on (--task sst2, or task=Task(...))")


def _scheme_configs(schemes) -> list:
    from .sensitivity import SCHEMES, AccuracyAwareConfig

    schemes = list(dict.fromkeys([schemes] if isinstance(schemes, str) else schemes))
    if not schemes:
        raise SpecError(f"give at least one scheme ({', '.join(SCHEMES)})")
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise SpecError(f"unknown scheme(s) {unknown}; choose from {list(SCHEMES)}")
    return [AccuracyAwareConfig(scheme=s) for s in schemes]


def _describe(cfg) -> str:
    if cfg.scheme == "int8":
        return "int8 dynamic (per-channel int8 weights, activations quantized per batch)"
    return f"int4 weight-only (group-wise, group size {cfg.group_size})"


def _all_layers_accuracy(model, eval_fn, cfg) -> tuple[float, int]:
    """Quantize every eligible Linear at once, measure, then put the fp32 modules back."""
    from .quantize import quantize_
    from .walker import linear_layers, set_module

    originals = dict(linear_layers(model, cfg.skip))
    quantize_(model, cfg.quant_config(), skip=cfg.skip)
    try:
        return float(eval_fn(model)), len(originals)
    finally:
        for name, lin in originals.items():
            set_module(model, name, lin)


def sensitivity_report(model_dir: str | os.PathLike, schemes: tuple[str, ...] = ("int8", "int4"),
                       split: str = "dev", eval_samples: int | None = None, task: str | Task | None = None,
                       threads: int | None = None) -> dict:
    """Measure fp32 accuracy once, then every Linear's cost per scheme and the all-layers cost.

    ``model_dir``: a chainpress ``hf`` artifact or a Hugging Face directory. ``task``: a
    built-in name or a ``Task``; needed only when the artifact's manifest records none.
    ``eval_samples``: the first N examples of ``split`` (None = all of it).
    """
    configs = _scheme_configs(schemes)  # bad input fails before any weights are read
    if split not in SPLITS:
        raise SpecError(f"unknown split {split!r}; choose from {list(SPLITS)}")
    if eval_samples is not None and (isinstance(eval_samples, bool) or not isinstance(eval_samples, int)
                                     or eval_samples <= 0):
        raise SpecError(f"eval_samples must be a positive integer or None (all), got {eval_samples!r}")
    if threads is not None and threads < 1:
        raise SpecError(f"threads must be >= 1, got {threads!r}")
    artifact = Artifact.load(model_dir)
    if artifact.format != "hf":
        raise ModelError(f"{artifact.path} holds a {artifact.format} model; sensitivity is measured from fp32 "
                         "weights: give the Hugging Face artifact it was made from (e.g. the fine-tune stage)")
    the_task, source = _resolve_task(artifact, task)
    if not the_task.has_split(split):
        have = [s for s in SPLITS if the_task.has_split(s)]
        raise DataError(f"task {the_task.name!r} has no {split!r} split (it has {have}); pass --split with "
                        "one of those, or give the task a file for it")
    data = the_task.load(split)
    data = data.head(eval_samples) if eval_samples else data

    import torch

    from chain.model import load_model, load_tokenizer

    from .sensitivity import accuracy_fn, layer_sensitivity

    model, tokenizer = load_model(artifact), load_tokenizer(artifact)
    outputs = getattr(model.config, "num_labels", the_task.num_labels)
    if outputs != the_task.num_labels:
        raise SpecError(f"{artifact.path} has {outputs} outputs but task {the_task.name!r} has "
                        f"{the_task.num_labels} labels; give the task the model was fine-tuned on")
    measure = accuracy_fn(tokenizer, data.texts, data.labels)
    calls = 0

    def eval_fn(m) -> float:
        nonlocal calls
        calls += 1
        return measure(m)

    started, previous_threads = time.perf_counter(), torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        fp32 = float(eval_fn(model))
        results = {}
        for cfg in configs:
            sens = layer_sensitivity(model, eval_fn, cfg, baseline=fp32)
            total, n = _all_layers_accuracy(model, eval_fn, cfg)
            results[cfg.scheme] = {
                "description": _describe(cfg),
                "config": {"scheme": cfg.scheme, **({"group_size": cfg.group_size} if cfg.scheme == "int4" else {}),
                           "skip": list(cfg.skip)},
                "layers": [{"layer": r["layer"], "accuracy": r["metric"], "drop_points": _points(fp32, r["metric"])}
                           for r in sens["layers"]],
                "all_layers": {"layers": n, "accuracy": total, "drop_points": _points(fp32, total)},
            }
    finally:
        torch.set_num_threads(previous_threads)
    return {"model": str(artifact.path), "stage": artifact.name, "task": the_task.name, "task_source": source,
            "split": split, "examples": len(data), "fp32_accuracy": fp32, "schemes": results,
            "evaluations": calls, "wall_time_s": round(time.perf_counter() - started, 1),
            "threads": threads or previous_threads, "created": time.strftime("%Y-%m-%d %H:%M:%S%z")}


def markdown(report: dict, top: int = DEFAULT_TOP) -> str:
    """One table per scheme: the ``top`` costliest layers, then the all-layers line."""
    fp32 = report["fp32_accuracy"]
    source = "from the artifact manifest" if report["task_source"] == "manifest" else "given explicitly"
    lines = [f"# Quantization sensitivity: {report['stage']}", "",
             f"Model `{report['model']}`, task `{report['task']}` ({source}), split `{report['split']}`, "
             f"{report['examples']} examples, {report['created']}; {report['evaluations']} evaluations in "
             f"{report['wall_time_s']} s on {report['threads']} threads.", "",
             f"fp32 accuracy: **{100 * fp32:.2f}**. Each row quantizes that one Linear, every other stays fp32; "
             f"drop = fp32 - quantized, in accuracy points (one example = {100 / report['examples']:.3g} points). "
             "Per-layer drops do not add up, so the last line is measured with every layer quantized at once.", ""]
    for scheme, res in report["schemes"].items():
        rows, total = res["layers"], res["all_layers"]
        shown = rows[:top]
        lines += [f"## {scheme}: {res['description']}", "",
                  f"Top {len(shown)} of {len(rows)} layers (all of them in sensitivity.json).", "",
                  "| # | layer | accuracy | drop (points) |", "|---:|---|---:|---:|"]
        lines += [f"| {i} | `{r['layer']}` | {100 * r['accuracy']:.2f} | {r['drop_points']:.2f} |"
                  for i, r in enumerate(shown, start=1)]
        lines += [f"| | **all {total['layers']} layers** | {100 * total['accuracy']:.2f} | "
                  f"{total['drop_points']:.2f} |", ""]
    return "\n".join(lines)


def _check_output(output: Path, top: int) -> None:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise SpecError(f"top must be a positive number of layers per table, got {top!r}")
    if output.exists() and not output.is_dir():
        raise SpecError(f"output {output} is a file; give a directory (--output DIR)")


def write_report(report: dict, output: str | os.PathLike = DEFAULT_OUTPUT, top: int = DEFAULT_TOP) -> str:
    """Write ``sensitivity.json`` and ``sensitivity.md`` into ``output``; return the markdown."""
    out = Path(output)
    _check_output(out, top)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report, top)
    write_json_atomic(out / "sensitivity.json", report)
    (out / "sensitivity.md").write_text(text)
    return text


def run_report(model_dir: str | os.PathLike, output: str | os.PathLike = DEFAULT_OUTPUT, top: int = DEFAULT_TOP,
               schemes: tuple[str, ...] = ("int8", "int4"), split: str = "dev", eval_samples: int | None = None,
               task: str | Task | None = None, threads: int | None = None) -> str:
    """``sensitivity_report`` + ``write_report``, checking ``output`` and ``top`` before the long part."""
    _check_output(Path(output), top)
    report = sensitivity_report(model_dir, schemes, split, eval_samples, task, threads)
    return write_report(report, output, top)


def parse(argv=None, prog: str = "python -m compress.sensitivity_report") -> argparse.Namespace:
    from chain.cli import add_common

    p = argparse.ArgumentParser(prog=prog,
                                description="Per-layer int8/int4 accuracy cost of a fine-tuned model; writes "
                                            "sensitivity.json and sensitivity.md into --output.")
    p.add_argument("model_dir", type=Path, help="chainpress hf artifact (e.g. the fine-tune stage) or HF model dir")
    p.add_argument("--schemes", nargs="+", default=["int8", "int4"], help="int8 and/or int4 (default both)")
    p.add_argument("--split", default="dev", help="split to measure on (default dev; test is the gates' split)")
    p.add_argument("--eval-samples", type=int, help="first N examples of the split (default: all)")
    p.add_argument("--task", help="built-in task (sst2, sst5, subj, trec) when the manifest records none, or to "
                                  "override it")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, help=f"layers per table (default {DEFAULT_TOP})")
    add_common(p, output=True, output_default=str(DEFAULT_OUTPUT), output_help="sensitivity.json and .md",
               threads=True)
    return p.parse_args(argv)


def main(argv=None, prog: str = "python -m compress.sensitivity_report") -> int:
    from chain.cli import guarded, quiet_libraries

    a = parse(argv, prog)
    # Passive OpenMP waits on a shared host (see bench/__main__.py); must precede torch's import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    quiet_libraries(a.verbose, a.quiet)

    def body() -> int:
        text = run_report(a.model_dir, a.output, a.top, schemes=tuple(a.schemes), split=a.split,
                          eval_samples=a.eval_samples, task=a.task, threads=a.threads)
        if not a.quiet:
            print(text)
        print(f"wrote {a.output / 'sensitivity.json'} and {a.output / 'sensitivity.md'}", file=sys.stderr)
        return 0

    return guarded(body, interrupted="interrupted: nothing was written")


if __name__ == "__main__":
    sys.exit(main())
