"""Command line for ``python -m bench``: parse arguments, call ``bench.run.run_bench``."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
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
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def build_config(a: argparse.Namespace):
    from chain.errors import SpecError
    from chain.finetune import FineTuneConfig
    from chain.task import Task, builtin_task

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
        ft = FineTuneConfig(task=task.to_dict(), epochs=a.epochs or 1.0, max_train_samples=800,
                            max_eval_samples=200, freeze=["embeddings"], max_length=64)
        measure = MeasureConfig(threads=a.threads, latency_calls=60, throughput_batches=4,
                                throughput_rounds=2, warmup=3)
        test_limit = 300
    else:
        ft = FineTuneConfig(task=task.to_dict(), epochs=a.epochs or 3.0, freeze=["embeddings"], max_length=64)
        measure, test_limit = MeasureConfig(threads=a.threads), None
    return BenchConfig(task=task, output=a.output, model=a.model, quick=a.quick, threads=a.threads,
                       finetune=ft, measure=measure, test_limit=test_limit,
                       trust_remote_code=a.trust_remote_code)


def main(argv=None) -> int:
    a = parse(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING, format="%(message)s")
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
