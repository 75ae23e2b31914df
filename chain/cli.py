"""The flag vocabulary and error handling every chainpress command shares.

One rule for every command, so a script can rely on it:

* the same flags mean the same thing everywhere: ``--output DIR``, ``--threads N``,
  ``-v/--verbose`` (library logs, tracebacks of failed stages), ``-q/--quiet`` (errors
  only), ``--trust-remote-code``;
* exit codes: 0 = everything ran (or was skipped for want of hardware, and the row says
  why), 1 = a stage failed or a gate/regression fired, 2 = bad input, 130 = interrupted;
* bad input is one line on stderr (``error: what was wrong; what to do``), never a
  traceback; an ``OSError`` (disk full, read-only output) is reported the same way.

>>> p = argparse.ArgumentParser(); add_common(p, output=True, threads=True)
>>> sys.exit(guarded(lambda: work(p.parse_args())))
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def version() -> str:
    import importlib.metadata as md

    try:
        return md.version("chainpress")
    except md.PackageNotFoundError:
        return "unknown (not installed; run pip install -e .)"


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
    return v


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def nonnegative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def add_common(p: argparse.ArgumentParser, output: bool = False, output_default: str | None = None,
               output_help: str = "output directory", threads: bool = False, remote_code: bool = False) -> None:
    """Add the shared flags a command uses; each keeps its meaning across commands."""
    if output:
        p.add_argument("--output", type=Path, default=Path(output_default) if output_default else None,
                       metavar="DIR", help=output_help + (f" (default: {output_default})" if output_default else ""))
    if threads:
        p.add_argument("--threads", type=positive_int, metavar="N",
                       help="intra-op threads for torch and ONNX Runtime (default: 2, or the cores there are)")
    if remote_code:
        p.add_argument("--trust-remote-code", action="store_true",
                       help="allow a model's own Python code to run (review it first)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="library logs and tracebacks of failed stages")
    g.add_argument("-q", "--quiet", action="store_true", help="print errors and the final table only")


def default_threads() -> int:
    return min(2, os.cpu_count() or 1)


def quiet_libraries(verbose: bool = False, quiet: bool = False) -> None:
    """Logging for a command run: library chatter only with ``-v``; nothing fetched from a hub."""
    level = logging.DEBUG if verbose else (logging.ERROR if quiet else logging.WARNING)
    logging.basicConfig(level=level, format="%(message)s")
    logging.getLogger("chainpress").setLevel(logging.DEBUG if verbose else logging.INFO if not quiet else logging.ERROR)
    # bitsandbytes' CPU backend tries `from kernels import get_kernel` (Hugging Face's hub-kernel
    # package), finds chainpress' own `kernels` and warns; it falls back to its built-in path.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub


def os_error_message(e: OSError) -> str:
    where = f" at {e.filename}" if getattr(e, "filename", None) else ""
    if e.errno == errno.ENOSPC:
        return f"no space left on device{where}; free some space or choose another --output"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{where} ({e.strerror}); choose a writable --output"
    if e.errno == errno.ENOTDIR:
        return f"{e.filename} is not a directory ({e.strerror}); give a directory path"
    return f"{e.strerror or e}{where}"


def guarded(fn: Callable[[], int | None], interrupted: str = "interrupted: finished stages are kept; "
            "run the same command again to resume") -> int:
    """Run a command body; map user errors to one line + exit 2, Ctrl-C to 130."""
    from .errors import ChainpressError

    try:
        rc = fn()
        return EXIT_OK if rc is None else int(rc)
    except ChainpressError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
