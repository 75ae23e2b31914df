"""Artifacts: a directory holding one model plus ``manifest.json``.

The model is in Hugging Face format (``config.json`` + ``model.safetensors``), in ONNX
(``model.onnx``, loadable by ``ORTModelForSequenceClassification``), or in chainpress'
int8 format for PyTorch. The manifest records how the model was made: stage name,
parent artifact, the stage's full config, metrics, wall time and library versions.

Writes are atomic: a stage fills a hidden temporary directory next to the destination,
the manifest is written last, everything is fsync'ed, and one ``rename`` publishes it.
A crash or Ctrl-C leaves at most a ``.tmp-*`` directory, which nothing ever trusts.

What is on disk is trusted only after checking it: the manifest records the size and
sha256 of every file of the artifact and a ``seal`` (a hash of the manifest itself), and
``verify`` names the first file that is missing, truncated or changed, or a manifest
edited by hand, so a cache never reuses a damaged artifact.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import ModelError
from .faults import pause_point
from .jsonio import write_json_atomic

MANIFEST = "manifest.json"
FORMATS = ("hf", "onnx", "torch-int8", "openvino", "ensemble", "knn")
STALE_PREFIXES = (".tmp-", ".old-")


def clean_stale(root: str | os.PathLike) -> list[str]:
    """Remove what an interrupted ``staging_dir`` can leave under ``root``; return the names.

    Call it only while no other process writes under ``root`` (the chain runner holds a
    lock on its output directory).
    """
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            original = root / p.name[len(".old-"):-9]  # ".old-<name>-<8 hex>"
            if p.name.startswith(".old-") and p.is_dir() and not original.exists():
                os.rename(p, original)  # killed between the two renames of a replace: undo
                continue
            if p.name.startswith(STALE_PREFIXES):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p.name)
            elif p.is_dir() and (p / (MANIFEST + ".part")).exists():
                (p / (MANIFEST + ".part")).unlink(missing_ok=True)
    return removed


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
                 "openvino", "nncf", "optimum-intel", "bitsandbytes", "triton", "peft", "chainpress"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


@dataclass
class Artifact:
    path: Path
    manifest: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.get("stage", self.path.name)

    @property
    def format(self) -> str:
        return self.manifest.get("format", "hf")

    @property
    def num_labels(self) -> int:
        return int(self.manifest["num_labels"])

    def size_mb(self) -> float:
        """Bytes of model files on disk (tokenizer and manifest excluded), in MB (1e6)."""
        skip = {MANIFEST, "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                "special_tokens_map.json", "config.json", "ort_config.json"}
        total = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file() and p.name not in skip)
        return total / 1e6

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Artifact":
        """Open a finished artifact, or wrap a plain Hugging Face model directory."""
        p = Path(path)
        if not p.is_dir():
            raise ModelError(f"model path {p} is not a directory; give a Hugging Face model directory "
                             "or a chainpress artifact")
        if (p / MANIFEST).is_file():
            manifest = read_manifest(p)
            if manifest is None:
                raise ModelError(f"{p / MANIFEST} is not a readable chainpress manifest (truncated or not JSON); "
                                 "delete the directory and re-run the stage")
            if not manifest.get("complete"):
                raise ModelError(f"{p} is an unfinished artifact; delete it and re-run the stage")
            return cls(p, manifest)
        if not (p / "config.json").is_file():
            raise ModelError(f"{p} has no config.json; give a Hugging Face model directory")
        if not any(p.glob("*.safetensors")) and (p / "model.onnx").is_file():  # as optimum-cli exports it
            return cls(p, {"stage": "source", "format": "onnx", "parent": None, "complete": True})
        return cls(p, {"stage": "source", "format": "hf", "parent": None, "complete": True})


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on clean exit it becomes ``dest`` atomically.

    The caller writes the model and then ``finalize``s the manifest; on any exception
    (KeyboardInterrupt included) the temporary directory is removed and ``dest`` is
    untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, dest: Path) -> None:
    """fsync a filled staging directory and rename it to ``dest`` (replacing any old one)."""
    if not (tmp / MANIFEST).is_file():
        raise RuntimeError(f"stage wrote no {MANIFEST} into {tmp}")
    _fsync_tree(tmp)
    pause_point(f"rename:{dest.name}")
    old = None
    if dest.exists():
        old = dest.parent / f".old-{dest.name}-{uuid.uuid4().hex[:8]}"
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def link_files(src: Path, dst: Path) -> None:
    """Hard-link (else copy) ``src``'s files but its manifest into ``dst``: a stage that only
    changes how a model runs (torch.compile, fused kernels) shares its parent's weights."""
    for f in Path(src).iterdir():
        if f.is_file() and f.name != MANIFEST:
            try:
                os.link(f, Path(dst) / f.name)
            except OSError:
                shutil.copy2(f, Path(dst) / f.name)


def file_digests(directory: Path) -> dict[str, dict]:
    """{relative path: {"bytes", "sha256"}} of every file but the manifest."""
    out = {}
    for p in sorted(q for q in Path(directory).rglob("*") if q.is_file()):
        rel = str(p.relative_to(directory))
        if rel in (MANIFEST, MANIFEST + ".part"):
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[rel] = {"bytes": p.stat().st_size, "sha256": h.hexdigest()}
    return out


def _seal(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "seal"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_manifest(directory: Path) -> dict | None:
    from .jsonio import read_json

    m = read_json(Path(directory) / MANIFEST)
    return m if isinstance(m, dict) else None


def save_manifest(directory: Path, manifest: dict) -> None:
    """Write ``manifest`` (re-sealed) atomically; the one way chainpress changes a manifest."""
    manifest["seal"] = _seal(manifest)
    write_json_atomic(Path(directory) / MANIFEST, manifest, sort_keys=True)


def write_manifest(directory: Path, **fields) -> dict:
    manifest = {"complete": True, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": library_versions(), **fields}
    if manifest.get("format", "hf") not in FORMATS:
        raise ValueError(f"unknown artifact format {manifest['format']!r}")
    manifest["files"] = file_digests(directory)
    save_manifest(directory, manifest)
    return manifest


def verify(directory: Path) -> str | None:
    """Why the artifact in ``directory`` cannot be trusted (None: every file is as recorded)."""
    directory = Path(directory)
    m = read_manifest(directory)
    if m is None:
        return f"{directory / MANIFEST} is truncated or not JSON"
    if "seal" not in m or "files" not in m:
        return f"{directory / MANIFEST} records no checksums (written by an older chainpress)"
    if m["seal"] != _seal(m):
        return f"{directory / MANIFEST} was edited after chainpress wrote it"
    for rel, rec in m["files"].items():
        p = directory / rel
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != rec["bytes"]:
            return f"{p} has {p.stat().st_size} bytes, {rec['bytes']} were written"
    digests = file_digests(directory)
    for rel, rec in m["files"].items():
        if digests[rel]["sha256"] != rec["sha256"]:
            return f"{directory / rel} changed after it was written (checksum mismatch)"
    return None
