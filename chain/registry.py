"""Stage types a chain spec can name (``type: finetune``), mapped to stage classes.

A stage class is a dataclass with ``config`` (a typed config dataclass), ``name`` and
``parent`` fields and a ``run(parent, out_dir)`` method (``chain.stage.Stage``). The
registry is open:

* built-in types are listed below as ``"module:Class"`` strings and imported on first
  use, so importing ``chain`` never imports ``compress`` (or torch);
* ``compress/`` adds its own types without touching ``chain/``: a module-level dict
  ``STAGE_TYPES = {"prune": "compress.stages:Prune"}`` (or the class itself) in
  ``compress/stages.py`` is read the first time an unknown type is looked up;
* user code calls ``register_stage("my_stage", MyStage)`` before running a spec.

>>> register_stage("distill", Distill)
>>> stage_class("distill")
"""
from __future__ import annotations

import importlib
import typing

from .errors import SpecError

BUILTIN: dict[str, str] = {
    "finetune": "chain.finetune:FineTune",
    "quantize_int8": "compress.stages:QuantizeInt8",
    "export_onnx": "compress.stages:ExportOnnx",
    "quantize_onnx_int8": "compress.stages:QuantizeOnnxInt8",
    "kernels": "kernels.stage:FusedKernels",
}
# Modules whose ``STAGE_TYPES`` dict is merged in on the first unknown lookup.
PROVIDERS = ("compress.stages",)

_registered: dict[str, type | str] = {}


def register_stage(type_name: str, stage_cls: type | str) -> None:
    """Make ``type: <type_name>`` available to specs (a class or a ``"module:Class"`` string)."""
    if not type_name or not type_name.replace("_", "").replace("-", "").isalnum():
        raise SpecError(f"stage type name {type_name!r} must be letters, digits, '_' or '-'")
    _registered[type_name] = stage_cls


def _provided() -> dict[str, type | str]:
    out: dict[str, type | str] = {}
    for mod_name in PROVIDERS:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        out.update(getattr(mod, "STAGE_TYPES", {}) or {})
    return out


def known_types() -> list[str]:
    return sorted({*BUILTIN, *_registered, *_provided()})


def stage_class(type_name: str) -> type:
    """The stage class for ``type_name``; ``SpecError`` naming the known ones if unknown."""
    entry = _registered.get(type_name) or BUILTIN.get(type_name)
    if entry is None:
        entry = _provided().get(type_name)
    if entry is None:
        raise SpecError(f"unknown stage type {type_name!r}; known types: {', '.join(known_types())}")
    if isinstance(entry, str):
        mod_name, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(mod_name), attr)
    return entry


def config_class(stage_cls: type) -> type | None:
    """The dataclass type of a stage class's ``config`` field (None if untyped)."""
    hints = typing.get_type_hints(stage_cls)
    cfg = hints.get("config")
    return cfg if isinstance(cfg, type) and hasattr(cfg, "__dataclass_fields__") else None
