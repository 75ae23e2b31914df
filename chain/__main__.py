"""python -m chain (chainpress run|validate|types|finetune): run chain specs.

  run SPEC        run or resume a chain spec (finished stages are reused)
  validate SPEC   check the spec, its model and its data; train nothing
  types [TYPE]    the stage types a spec can name, with their config fields and defaults
  finetune        one fine-tune stage, runnable under torchrun / accelerate launch

Exit 0 = every stage ran (or was skipped for want of hardware), 1 = a stage failed or a
gate fired (rolled back or stopped), 2 = bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .cli import add_common, guarded, quiet_libraries, version


def parser(prog: str = "python -m chain") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"chainpress {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("run", help="run or resume a chain spec")
    r.add_argument("spec", type=Path)
    add_common(r, output=True, output_help="output directory (default: the spec's `output`, else runs/<name>)",
               threads=True, remote_code=True)
    r.add_argument("--force", metavar="STAGE", help="recompute STAGE and every stage after it")
    r.add_argument("--baseline", action="store_true",
                   help="also train the final task directly from the base model (the chain's stages on that "
                        "task, replayed from the base model)")
    v = sub.add_parser("validate", help="check a spec and its data without training")
    v.add_argument("spec", type=Path)
    add_common(v, remote_code=True)
    t = sub.add_parser("types", help="list the stage types a spec can use, with their config fields")
    t.add_argument("type", nargs="?", help="one type: its fields and defaults")
    f = sub.add_parser("finetune", help="run one fine-tune stage (works under torchrun / accelerate launch)")
    f.add_argument("--parent", type=Path, required=True, help="parent model or artifact directory")
    f.add_argument("--config", type=Path, required=True, help="YAML/JSON FineTuneConfig; `task` is a built-in "
                                                               "name or a task mapping")
    dest = f.add_mutually_exclusive_group(required=True)
    dest.add_argument("--output", type=Path, help="publish the artifact here (atomically)")
    dest.add_argument("--into", type=Path, help=argparse.SUPPRESS)  # chain.distributed: write into a staging dir
    add_common(f, remote_code=True)
    return p


def describe_types(only: str | None = None) -> str:
    from .registry import config_class, known_types, stage_class

    names = [only] if only else known_types()
    out = []
    for name in names:
        cls = stage_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        out.append(f"{name}: {doc}" + (" (peer)" if cls.peer else ""))
        cfg = config_class(cls)
        if cfg is None:
            continue
        for fld in dataclasses.fields(cfg):
            if not fld.init or fld.name == "task":
                continue
            default = fld.default if fld.default is not dataclasses.MISSING else (
                fld.default_factory() if fld.default_factory is not dataclasses.MISSING else "required")
            out.append(f"    {fld.name} = {default!r}")
    return "\n".join(out)


def validate(a) -> int:
    from .overlap import train_eval_overlap
    from .spec import check_inputs, load_spec

    spec = load_spec(a.spec, check=False)
    spec.trust_remote_code = spec.trust_remote_code or a.trust_remote_code
    sizes = check_inputs(spec)
    print(f"{a.spec}: ok; {len(spec.stages)} stages; tasks " + ", ".join(f"{t} {s}" for t, s in sizes.items()))
    for o in train_eval_overlap(spec):
        print(f"note: stage {o['stage']} trains on {o['shared']} of {o['eval_task']}'s {o['eval_size']} "
              f"unique {o['split']} sentences ({o['train_task']} data); its {o['eval_task']} scores are "
              "not fully held out")
    return 0


def run(a) -> int:
    from .executor import exit_code, run_chain
    from .spec import load_spec
    from .stage import RunContext

    spec = load_spec(a.spec, check=False)
    spec.trust_remote_code = spec.trust_remote_code or a.trust_remote_code
    if a.threads is not None:
        spec.eval.threads = a.threads
    log = (lambda msg: None) if a.quiet else print
    ctx = RunContext(threads=spec.eval.threads, trust_remote_code=spec.trust_remote_code, log=log,
                     verbose=a.verbose, quiet=a.quiet)
    results = run_chain(spec, a.output, force=a.force, baseline=True if a.baseline else None, log=log, ctx=ctx)
    out = Path(results["output"])
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    return exit_code(results)


def main(argv=None, prog: str = "python -m chain") -> int:
    a = parser(prog).parse_args(argv)
    if a.command == "types":
        return guarded(lambda: print(describe_types(a.type)))
    quiet_libraries(a.verbose, a.quiet)
    if a.command == "validate":
        return guarded(lambda: validate(a))
    if a.command == "finetune":
        from .distributed import finetune_cli

        return guarded(lambda: finetune_cli(a.parent, a.config, out=a.output, into=a.into,
                                            trust_remote_code=a.trust_remote_code))
    return guarded(lambda: run(a))


if __name__ == "__main__":
    sys.exit(main())
