"""Command line for ``python -m bench``: parse arguments, call ``bench.run.run_bench``.

``python -m bench compare BASELINE.json [MORE_BASELINES.json ...] CURRENT.json`` is the regression gate
(``bench.compare.run_compare``): exit 0 = pass, 1 = regression, 2 = bad input.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--output", type=Path, default=Path("bench-out"), help="results, report and artifacts")
    p.add_argument("--model", help="Hugging Face model directory (default: embedded all-MiniLM-L6-v2)")
    p.add_argument("--task", default="sst2", help="built-in task: sst2, sst5, subj, trec (default sst2)")
    p.add_argument("--train", help="your own train file (TSV/CSV/JSONL); needs --test too")
    p.add_argument("--dev", help="your own dev file (default: seeded 10%% of train)")
    p.add_argument("--test", help="your own test file")
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--label-column", default="label")
    p.add_argument("--num-labels", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small subset smoke test (~3 min)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--epochs", type=float, help="fine-tuning epochs (default 3, quick 1)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model's own Python code to run")
    p.add_argument("--no-peers", action="store_true", help="skip the torch-compile and Optimum-only int8 rows")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def build_config(a: argparse.Namespace):
    from chain.errors import SpecError
    from chain.finetune import FineTuneConfig
    from chain.task import Task, builtin_task

    from .chains import PRUNE
    from .harness import MeasureConfig
    from .run import BenchConfig

    if a.train or a.test:
        if not (a.train and a.test):
            raise SpecError("--train and --test go together; give both files")
        files = {"train": a.train, "test": a.test, **({"dev": a.dev} if a.dev else {})}
        task = Task("custom", files, a.num_labels, a.text_column, a.label_column)
    else:
        task = builtin_task(a.task)
    if a.threads < 1:
        raise SpecError(f"--threads must be >= 1, got {a.threads}")
    if a.quick:
        # A smoke test that still learns: 800 sentences at 1e-4 (25 steps) left SST-2 at chance (0.52).
        ft = FineTuneConfig(task=task.to_dict(), epochs=a.epochs or 1.0, max_train_samples=1600,
                            learning_rate=3e-4, max_eval_samples=200, freeze=["embeddings"], max_length=64)
        measure = MeasureConfig.quick(a.threads)
        test_limit = 300
    else:
        ft = FineTuneConfig(task=task.to_dict(), epochs=a.epochs or 3.0, freeze=["embeddings"], max_length=64)
        measure, test_limit = MeasureConfig(threads=a.threads), None
    return BenchConfig(task=task, output=a.output, model=a.model, quick=a.quick, threads=a.threads,
                       finetune=ft, measure=measure, test_limit=test_limit,
                       trust_remote_code=a.trust_remote_code, peers=not a.no_peers,
                       recover_epochs=ft.epochs if a.quick else 2.0,
                       # 4 Taylor batches instead of 16 keep --quick under 3 minutes
                       prune=replace(PRUNE, taylor_batches=4) if a.quick else PRUNE)


def parse_compare(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench compare",
                                description="Gate CURRENT against BASELINE: exit 1 only when a metric regresses "
                                            "beyond its threshold and outside the noise interval; 2 on bad input.")
    p.add_argument("baseline", nargs="+", help="results.json of the baseline run; several runs of the same code "
                                               "are merged into their median (steadier; 3-5 recommended)")
    p.add_argument("current", help="results.json of the run to gate")
    p.add_argument("--rerun", nargs="+", default=[], metavar="RESULTS", help="results of re-running the current "
                   "code: gated together with CURRENT (median). Confirms a failure on a noisy host")
    p.add_argument("--max-slowdown", default="10%", help="per stage, vs the reference (ratio mode) or in absolute "
                                                         "time (--absolute); default 10%%")
    p.add_argument("--max-accuracy-drop", type=float, default=0.5, help="accuracy points; default 0.5")
    p.add_argument("--noise-floor", default="5%", help="run-to-run noise one run cannot see (95%% half-width per "
                                                       "run); default 5%% (measured on a busy 2-core host); "
                                                       "lower it on a quiet dedicated machine")
    p.add_argument("--absolute", action="store_true", help="gate ms and samples/s, not speedups: only for a "
                                                           "baseline recorded on this machine")
    p.add_argument("--include-peers", action="store_true", help="also gate the peer rows (torch-compile, optimum)")
    p.add_argument("--json", help="also write the comparison as JSON here")
    return p.parse_args(argv)


def compare_main(argv) -> int:
    from chain.errors import ChainpressError

    from .compare import Thresholds, parse_percent, run_compare

    a = parse_compare(argv)
    try:
        thresholds = Thresholds(parse_percent(a.max_slowdown), a.max_accuracy_drop, parse_percent(a.noise_floor))
        return run_compare(a.baseline, a.current, thresholds,
                           absolute=a.absolute, include_peers=a.include_peers, json_out=a.json, reruns=a.rerun)
    except ChainpressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    # PyTorch's OpenMP threads sleep instead of spinning while they wait, as ONNX Runtime's
    # do (spinning off): on a busy host a spinning 2-thread PyTorch ran batch-1 MiniLM
    # 17x slower (786 vs 45 ms, load average 8 on 2 cores). Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    a = parse(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING, format="%(message)s")
    # bitsandbytes' CPU backend tries `from kernels import get_kernel` (Hugging Face's hub-kernel
    # package), finds chainpress' own `kernels` and warns; it falls back to its built-in path.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if not a.verbose:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub
    from chain.errors import ChainpressError

    from .run import run_bench

    try:
        results = run_bench(build_config(a))
    except ChainpressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished stages are kept under {a.output / 'artifacts'}", file=sys.stderr)
        return 130
    return 0 if all(s["status"] == "ok" for s in results["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
