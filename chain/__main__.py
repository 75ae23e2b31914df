"""Command line for ``python -m chain``: parse arguments, call a typed function.

  python -m chain run SPEC.yaml [--output DIR] [--force STAGE] [--baseline]
  python -m chain validate SPEC.yaml
  python -m chain types
  python -m chain finetune --parent DIR --config STAGE.yaml --out DIR   # one stage; torchrun-able
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run or resume a chain spec")
    r.add_argument("spec", type=Path)
    r.add_argument("--output", type=Path, help="output directory (default: the spec's `output`, else runs/<name>)")
    r.add_argument("--force", metavar="STAGE", help="recompute STAGE and every stage after it")
    r.add_argument("--baseline", action="store_true",
                   help="also train the final task directly from the base model (the chain's stages on that "
                        "task, replayed from the base model)")
    r.add_argument("--quiet", action="store_true", help="no training progress bars")
    r.add_argument("--threads", type=int, help="torch threads for training and evaluation (overrides eval.threads; "
                                               "1 is fastest on a busy machine)")
    v = sub.add_parser("validate", help="check a spec and its data without training")
    v.add_argument("spec", type=Path)
    sub.add_parser("types", help="list the stage types a spec can use")
    f = sub.add_parser("finetune", help="run one fine-tune stage (works under torchrun / accelerate launch)")
    f.add_argument("--parent", type=Path, required=True, help="parent model or artifact directory")
    f.add_argument("--config", type=Path, required=True, help="YAML/JSON FineTuneConfig; `task` is a built-in "
                                                               "name or a task mapping")
    dest = f.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", type=Path, help="publish the artifact here (atomically)")
    dest.add_argument("--into", type=Path, help=argparse.SUPPRESS)  # chain.distributed: write into a staging dir
    for q in (r, v, f):
        q.add_argument("-v", "--verbose", action="store_true")
        q.add_argument("--trust-remote-code", action="store_true", help="allow a model's own Python code to run")
    return p.parse_args(argv)


def _quiet_libraries(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")
    # bitsandbytes' CPU backend tries `from kernels import get_kernel` (Hugging Face's hub-kernel
    # package), finds chainpress' own `kernels` and warns; it falls back to its built-in path.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub


def main(argv=None) -> int:
    a = parse(argv)
    if a.command == "types":
        from .registry import known_types

        print("\n".join(known_types()))
        return 0
    _quiet_libraries(a.verbose)
    from .errors import ChainpressError

    try:
        if a.command == "validate":
            from .spec import check_inputs, load_spec

            spec = load_spec(a.spec, check=False)
            spec.trust_remote_code = spec.trust_remote_code or a.trust_remote_code
            sizes = check_inputs(spec)
            print(f"{a.spec}: ok; {len(spec.stages)} stages; tasks " +
                  ", ".join(f"{t} {s}" for t, s in sizes.items()))
            from .overlap import train_eval_overlap

            for o in train_eval_overlap(spec):
                print(f"note: stage {o['stage']} trains on {o['shared']} of {o['eval_task']}'s {o['eval_size']} "
                      f"unique {o['split']} sentences ({o['train_task']} data); its {o['eval_task']} scores are "
                      "not fully held out")
            return 0
        if a.command == "finetune":
            from .distributed import finetune_cli

            finetune_cli(a.parent, a.config, out=a.out, into=a.into, trust_remote_code=a.trust_remote_code)
            return 0
        from .errors import SpecError
        from .executor import run_chain
        from .spec import load_spec

        spec = load_spec(a.spec, check=False)
        spec.trust_remote_code = spec.trust_remote_code or a.trust_remote_code
        if a.threads is not None:
            if a.threads < 1:
                raise SpecError(f"--threads must be >= 1, got {a.threads}")
            spec.eval.threads = a.threads
        if a.quiet:
            for s in spec.stages:
                if hasattr(s.config, "show_progress"):
                    s.config.show_progress = False
        results = run_chain(spec, a.output, force=a.force, baseline=True if a.baseline else None)
    except ChainpressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; run the same command again to resume", file=sys.stderr)
        return 130
    out = Path(results["output"])
    print(f"\nwrote {out / 'results.json'} and {out / 'report.md'}")
    # "skipped" alone (a stage that cannot run on this machine) is not a failure; a failed
    # stage's dependents are skipped too, and the failed stage itself makes the exit 1
    return 0 if all(s["status"] in ("ok", "cached", "rolled_back", "skipped") for s in results["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
