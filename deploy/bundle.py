"""The bundle: one self-describing directory a server, a device or a batch job takes.

A bundle holds ``model.onnx``, ``config.json`` (with ``id2label``), the tokenizer files,
``bundle.json`` (max length, input/output names, labels, the dev-set reference the drift
monitor compares live traffic with, where the model came from), a model card
(``README.md``) and ``checksums.sha256`` in ``sha256sum`` format, so ``sha256sum -c
checksums.sha256`` checks it on any machine. Every path inside is relative: the
directory can be copied, zipped or mounted anywhere.

>>> b = Bundle.load("out/sst2-bundle")       # verifies every checksum
>>> b.labels, b.max_length
(['negative', 'positive'], 128)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from chain.errors import ModelError

BUNDLE_JSON = "bundle.json"
CHECKSUMS = "checksums.sha256"
BUNDLE_FORMAT = "chainpress-bundle"
BUNDLE_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")

# Label names of the vendored tasks (chain/data/README.md); other tasks keep config.json's.
BUILTIN_LABELS = {
    "sst2": ["negative", "positive"],
    "sst5": ["very negative", "negative", "neutral", "positive", "very positive"],
    "subj": ["subjective", "objective"],
    "trec": ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"],
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(root: Path) -> dict[str, str]:
    """Hash every file under ``root`` (but the checksum file) into ``checksums.sha256``."""
    sums = {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
    (root / CHECKSUMS).write_text("".join(f"{h}  {name}\n" for name, h in sums.items()))
    return sums


def verify_checksums(root: Path) -> int:
    """Check ``checksums.sha256``; raise ``ModelError`` naming every bad or missing file."""
    listing = root / CHECKSUMS
    if not listing.is_file():
        raise ModelError(f"{root} has no {CHECKSUMS}; it is not a complete bundle (re-export it)")
    bad = []
    lines = [ln for ln in listing.read_text().splitlines() if ln.strip()]
    for line in lines:
        digest, name = line.split("  ", 1)
        p = root / name
        if not p.is_file():
            bad.append(f"{name} missing")
        elif sha256_file(p) != digest:
            bad.append(f"{name} changed")
    if bad:
        raise ModelError(f"bundle {root} fails its checksums ({', '.join(bad[:5])}); re-export it")
    return len(lines)


@dataclass
class Bundle:
    path: Path
    meta: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def max_length(self) -> int:
        return int(self.meta["max_length"])

    @property
    def model_file(self) -> Path:
        return self.path / self.meta["model"]

    @property
    def tasks(self) -> dict[str, dict]:
        """{task: {"output": graph output, "labels": [...]}} of a multi-task bundle, its own task
        first; {} for a single-task one (its one head is ``labels``)."""
        return dict(self.meta.get("tasks") or {})

    @property
    def task(self) -> str | None:
        """The bundle's own task (the ``logits`` output's, what ``labels`` name)."""
        return (self.meta.get("source") or {}).get("task")

    @property
    def reference(self) -> dict | None:
        return self.meta.get("reference")

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        p = Path(path)
        if not (p / BUNDLE_JSON).is_file():
            raise ModelError(f"{p} is not a chainpress bundle (no {BUNDLE_JSON}); make one with "
                             "`python -m deploy export ARTIFACT DIR --target bundle`")
        try:
            meta = json.loads((p / BUNDLE_JSON).read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{p / BUNDLE_JSON} is not valid JSON ({e}); re-export the bundle") from None
        if meta.get("format") != BUNDLE_FORMAT or meta.get("version") != BUNDLE_VERSION:
            raise ModelError(f"{p} has bundle format {meta.get('format')!r} v{meta.get('version')}; "
                             f"this chainpress reads {BUNDLE_FORMAT} v{BUNDLE_VERSION}")
        if verify:
            verify_checksums(p)
        return cls(p, meta)


def staged_output(out_dir: Path) -> Path:
    """A fresh hidden directory next to ``out_dir``; ``publish_dir`` renames it into place."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not _ours(out_dir))):
        raise ModelError(f"{out_dir} exists and is not an earlier export; choose an empty or new directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _ours(d: Path) -> bool:
    return (d / BUNDLE_JSON).is_file() or (d / "chainpress-export.json").is_file()


def publish_dir(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``tmp`` with renames, so a reader never sees half an export."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".old-{out_dir.name}-{uuid.uuid4().hex[:8]}"
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
