"""What makes a stage's cache entry: content keys, and one run per output directory.

A key hashes (parent's key, stage type, config minus fields that cannot change the
result, task data), so a changed config or data file recomputes that stage and its
descendants only; the source model's key hashes every file of its directory.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from pathlib import Path
from typing import Iterator

from .artifact import MANIFEST
from .errors import SpecError
from .stage import config_dict


def dir_hash(path: Path) -> str:
    """Content hash of a model directory (the source model's cache key). A chainpress
    artifact used as a source is hashed without its manifest, which gains evaluations."""
    h = hashlib.sha256()
    for p in sorted(q for q in Path(path).rglob("*") if q.is_file() and q.name != MANIFEST):
        h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def _by_content(value):
    """A task written out as a dict inside a config (a fine-tune's own task, an ``exclude``
    entry) enters the key as its fingerprint, its data: its file paths would tie every key
    to where the checkout lies (a clone moved to another folder retrained everything)."""
    if isinstance(value, dict):
        if "name" in value and ("files" in value or "dataset" in value):
            from .task import Task

            return {"task_fingerprint": Task.from_dict(value).fingerprint()}
        return {k: _by_content(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_by_content(v) for v in value]
    return value


def stage_key(parent_key: str, stage_type: str, config, task_fingerprint: str | None,
              not_in_key: tuple[str, ...] = ()) -> str:
    cfg = {k: _by_content(v) for k, v in config_dict(config).items() if k not in not_in_key}
    blob = json.dumps({"parent": parent_key, "type": stage_type, "config": cfg, "task": task_fingerprint},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """One run per output directory; the OS drops the lock if the process dies (kill -9)."""
    if out.exists() and not out.is_dir():
        raise SpecError(f"--output {out} is a file; give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / ".lock", "w")
    except OSError as e:
        raise SpecError(f"cannot write to --output {out} ({e.strerror}); choose a writable directory") from None
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpecError(f"another chainpress run is using {out}; wait for it or choose another --output") from None
        yield
    finally:
        f.close()
