"""``chainpress``: one command for everything chainpress does.

The top of the stack: each subcommand is the ``main(argv)`` of the module that owns it,
imported only when that subcommand runs, so ``chainpress --help`` stays instant.
``python -m bench``, ``python -m chain`` and the other module entry points keep working.
"""
from __future__ import annotations

import importlib
import inspect
import sys

from chain.cli import EXIT_BAD_INPUT, version

# subcommand -> ("module:function", whether argv keeps the subcommand's name, one-line help)
COMMANDS = {
    "bench": ("bench.__main__:main", False, "run the default chain (or --spec) and time every stage (~20-30 min on 2 cores)"),
    "compare": ("bench.compare_cli:main", False, "regression gate: a results.json against baseline runs"),
    "run": ("chain.__main__:main", True, "run or resume a chain spec"),
    "validate": ("chain.__main__:main", True, "check a spec, its model and data; train nothing"),
    "types": ("chain.__main__:main", True, "stage types a spec can name, with config fields and defaults"),
    "finetune": ("chain.__main__:main", True, "one fine-tune stage (torchrun / accelerate launch)"),
    "seeds": ("chain.seeds:main", False, "chain vs direct fine-tuning over several seeds"),
    "forgetting": ("chain.forgetting:main", False, "forgetting matrix of each forgetting-control method over seeds"),
    "sensitivity": ("compress.sensitivity_report:main", False, "per-layer int8/int4 accuracy cost of a model"),
    "multitask-report": ("compress.multitask_report:main", False,
                         "a multi-task chain: every task's accuracy and the shared encoder pass's cost"),
    "kernels-bench": ("kernels.bench:main", False, "time the fused Triton kernels on a CUDA GPU"),
    "gate-check": ("bench.gate_check:main", False, "does the regression gate catch slowdowns (and only those)?"),
    "isolation-check": ("bench.isolation_check:main", False, "in-run timings vs each model timed alone"),
    "export": ("deploy.cli:export_main", False, "export an artifact: bundle, portable ONNX, Triton repository, OpenVINO IR"),
    "serve": ("deploy.cli:serve_main", False, "HTTP inference server (KServe v2 + JSON) with metrics"),
    "predict": ("deploy.cli:predict_main", False, "batch prediction over a CSV/TSV/JSONL file"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: chainpress COMMAND [options]    (chainpress COMMAND --help for its options)", "",
             "Chain fine-tuning, compression, export and benchmarking of transformer classifiers.", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Every command: --output DIR, --threads N, -v/--verbose, -q/--quiet where they apply;",
              "exit 0 = ran (skips for want of hardware included), 1 = a stage failed or a gate fired,",
              "2 = bad input (one line saying what to do)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else EXIT_BAD_INPUT
    if argv[0] == "--version":
        print(f"chainpress {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; commands: {', '.join(COMMANDS)} (chainpress --help)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    target, keep_name, _ = COMMANDS[name]
    mod_name, _, fn_name = target.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except ImportError as e:
        print(f"error: `chainpress {name}` is not available in this installation ({e})", file=sys.stderr)
        return EXIT_BAD_INPUT
    prog = "chainpress" if keep_name else f"chainpress {name}"
    kwargs = {"prog": prog} if "prog" in inspect.signature(fn).parameters else {}
    return int(fn(([name] if keep_name else []) + rest, **kwargs) or 0)


if __name__ == "__main__":
    sys.exit(main())
