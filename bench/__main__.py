"""python -m bench (chainpress bench): run a chain spec, then time every stage it kept.

With no arguments: the default chain (bench/default_chain.yaml) on the embedded
all-MiniLM-L6-v2 and SST-2, about 20-30 min on 2 cores (--quick: about 3 min). Finished
stages are cached under OUTPUT/artifacts: a re-run, or a run killed and started again,
reuses them. Exit 0 = every stage ran or was skipped for want of hardware, 1 = a stage
(not a peer) failed or a gate fired, 2 = bad input.

  python -m bench compare BASELINE.json [MORE.json ...] CURRENT.json   # the regression gate
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from chain.cli import add_common, default_threads, guarded, nonnegative_float, positive_int, quiet_libraries, version


def parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, output=True, output_default="bench-out", output_help="results.json, report.md, plots, artifacts",
               threads=True, remote_code=True)
    p.add_argument("--version", action="version", version=f"chainpress {version()}")
    p.add_argument("--spec", type=Path, help="a chain spec to run and time instead of the default chain")
    p.add_argument("--model", help="Hugging Face model directory (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--finetuned", action="store_true", help="--model is already fine-tuned for the task: make it "
                   "the reference row and compress it as it is (no training stage)")
    p.add_argument("--task", help="built-in task for every fine-tune stage: sst2 (default), sst5, subj, trec")
    p.add_argument("--train", help="your own train file (TSV/CSV/JSONL); needs --test too")
    p.add_argument("--dev", help="your own dev file (default: a seeded 10%% of train; with --finetuned: none, picks are budgeted on test and say so)")
    p.add_argument("--test", help="your own test file")
    p.add_argument("--text-column", default="sentence", help="(default: sentence)")
    p.add_argument("--label-column", default="label", help="(default: label)")
    p.add_argument("--num-labels", type=positive_int, help="classes, for integer label ids (names are counted)")
    p.add_argument("--quick", action="store_true", help="1600 training and 300 test sentences: a ~3 min smoke test")
    p.add_argument("--epochs", type=float, help="epochs of every fine-tune stage (default: 3, recovery 2; quick 1)")
    p.add_argument("--reference", help="the stage speedups are measured against (default: finetune)")
    p.add_argument("--force", metavar="STAGE", help="recompute STAGE and every stage after it")
    p.add_argument("--no-peers", action="store_true", help="skip the peer rows (torch.compile, Optimum int8, ...)")
    p.add_argument("--search", action="store_true", help="walk pruning levels mild to aggressive, each with "
                   "distilled recovery, while the dev accuracy stays within --max-drop; then time every level kept")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="dev accuracy points the picked output may lose vs the reference (default 1.0)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="--search starts no level that would end after this many seconds of walking, judged by "
                   "the last level's time (default 1800; the timing after the walk takes 10-15 min more)")
    p.add_argument("--retry-epochs", type=nonnegative_float, default=None, metavar="EPOCHS",
                   help="--search retries a level over budget once, its recovery trained EPOCHS epochs "
                   "(default 4, twice the default chain's; 0: no retry)")
    p.add_argument("--ray", metavar="ADDRESS", help="--search runs each level as a Ray Tune trial of --threads "
                   "CPUs: 'local' (a Ray started here), 'auto' or ray://host:10001 (--output on shared storage)")
    p.add_argument("--isolation", choices=("process", "inprocess"),
                   help="time each model in a worker process of its own (default) or all in this process")
    return p


def build_config(a: argparse.Namespace):
    from chain.errors import SpecError

    from .spec import BenchConfig

    files = None
    if a.train or a.test or a.dev:
        if not (a.train and a.test):
            raise SpecError("--train and --test go together; give both files")
        files = {"train": a.train, "test": a.test, **({"dev": a.dev} if a.dev else {})}
    return BenchConfig(output=a.output, spec=a.spec, model=a.model, task=a.task, files=files,
                       text_column=a.text_column, label_column=a.label_column, num_labels=a.num_labels,
                       quick=a.quick, epochs=a.epochs, threads=a.threads or default_threads(),
                       peers=not a.no_peers, trust_remote_code=a.trust_remote_code, reference=a.reference,
                       finetuned=a.finetuned, isolation=a.isolation, max_drop=a.max_drop)


# a task given by --train/--test: its errors name the task's spec fields, which this user never wrote
FLAG_WORDS = {"`text_column`": "--text-column", "`label_column`": "--label-column", "`num_labels`": "--num-labels",
              "`files`": "--train/--dev/--test"}


def in_flag_words(msg: str) -> str:
    for field, flag in FLAG_WORDS.items():
        msg = msg.replace(field, flag)
    return msg


def main(argv=None, prog: str = "python -m bench") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        from .compare_cli import main as compare_main

        return compare_main(argv[1:])
    a = parser(prog).parse_args(argv)
    # PyTorch's OpenMP threads sleep instead of spinning while they wait, as ONNX Runtime's
    # do (spinning off): on a busy host a spinning 2-thread PyTorch ran batch-1 MiniLM
    # 17x slower (786 vs 45 ms, load average 8 on 2 cores). Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    quiet_libraries(a.verbose, a.quiet)

    def body() -> int:
        from chain.errors import ChainpressError, SpecError

        from .run import run_bench

        log = (lambda msg: None) if a.quiet else print
        cfg = build_config(a)
        from .timing import pin_interop_threads

        pin_interop_threads(cfg.threads)  # before any training or timing in this process
        search = None
        if a.search:
            from .search import SearchConfig

            if a.ray and a.retry_epochs:
                raise SpecError("--retry-epochs retries levels in the in-process walk; with --ray every level is "
                                "one trial, not retried: drop one of them")
            given = {"time_budget_s": a.time_budget, "retry_epochs": 0 if a.ray else a.retry_epochs}
            search = SearchConfig(max_drop=a.max_drop, ray=a.ray, **{k: v for k, v in given.items() if v is not None})
        elif a.time_budget is not None:
            raise SpecError("--time-budget bounds --search; add --search or drop it")
        elif a.retry_epochs is not None:
            raise SpecError("--retry-epochs is part of --search; add --search or drop it")
        elif a.ray:
            raise SpecError("--ray runs --search's trials on Ray Tune; add --search or drop it")
        if not a.max_drop >= 0:
            raise SpecError(f"--max-drop must be >= 0 accuracy points, got {a.max_drop}")
        try:
            results = run_bench(cfg, log=log, force=a.force, verbose=a.verbose, quiet=a.quiet, search=search)
        except ChainpressError as e:
            if cfg.files and not a.spec:  # the task came from flags: name the flag, not the spec field
                raise type(e)(in_flag_words(str(e))) from None
            raise
        if a.quiet:
            from .report import text_table

            print(text_table(results))
        return results["exit_code"]

    return guarded(body, interrupted=f"interrupted: finished stages are kept under {a.output / 'artifacts'}; "
                                    "run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
