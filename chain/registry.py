"""Stage types and their plugins.

A stage type is registered beside its class with ``@register_stage("prune")``. chain
itself knows only its own types (``finetune``); compress, kernels and bench register
theirs when their plugin module is imported. Plugins are found through the
``chainpress.plugins`` entry points of the installed distributions (chainpress' own
pyproject lists ``compress.stages``, ``kernels.stage`` and ``bench.plugin``), so chain
never names, or imports, the layers above it. A plugin that fails to import is an
error that names it, never an "unknown stage type".

>>> @register_stage("my_stage")
... @dataclass
... class MyStage(Stage): ...
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import typing

from .errors import ChainpressError, SpecError

GROUP = "chainpress.plugins"
CORE = ("chain.finetune", "chain.link", "chain.distill_heads", "chain.ensemble", "chain.soup",
        "chain.knn")  # chain's own stage modules

_types: dict[str, type] = {}
_loaded = False


class PluginError(ChainpressError):
    """A chainpress plugin module could not be imported."""


def register_stage(type_name: str, stage_cls: type | None = None):
    """Make ``type: <type_name>`` available to specs; use as a class decorator or a call."""
    if not type_name or not type_name.replace("_", "").replace("-", "").isalnum():
        raise SpecError(f"stage type name {type_name!r} must be letters, digits, '_' or '-'")

    def add(cls: type) -> type:
        cls.type_name = type_name
        _types[type_name] = cls
        return cls

    return add(stage_cls) if stage_cls is not None else add


def load_plugins() -> None:
    """Import chain's own stage modules and every ``chainpress.plugins`` entry point, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in CORE:
        importlib.import_module(mod)
    for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
        try:
            ep.load()
        except Exception as e:
            _loaded = False
            raise PluginError(f"chainpress plugin {ep.name!r} ({ep.value}) failed to import: "
                              f"{type(e).__name__}: {e}; reinstall chainpress (pip install -e .)") from e


def known_types() -> list[str]:
    load_plugins()
    return sorted(_types)


def stage_class(type_name: str) -> type:
    """The stage class for ``type_name``; ``SpecError`` naming the known ones if unknown."""
    load_plugins()
    cls = _types.get(type_name)
    if cls is None:
        raise SpecError(f"unknown stage type {type_name!r}; known types: {', '.join(sorted(_types))}")
    return cls


def config_class(stage_cls: type) -> type | None:
    """The dataclass type of a stage class's ``config`` field (None if untyped)."""
    hints = typing.get_type_hints(stage_cls)
    cfg = hints.get("config")
    return cfg if isinstance(cfg, type) and hasattr(cfg, "__dataclass_fields__") else None
