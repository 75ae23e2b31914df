"""The one atomic writer for JSON and text files chainpress keeps (manifests, results, reports).

A reader never sees half a file: the text goes to ``NAME.part`` beside the target, is
fsync'ed and renamed over it. When the write fails (disk full, read-only directory), the
``.part`` file is removed and the old file, if any, is left as it was.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data, sort_keys: bool = False) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=str))


def read_json(path: str | os.PathLike) -> dict | list | None:
    """The parsed file, or None if it is missing, truncated, binary or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
