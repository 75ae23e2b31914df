"""One module walker for every compression verb.

``linear_layers`` yields the ``nn.Linear`` modules a verb should touch, honouring a
filter and per-module overrides by qualified name; ``set_module`` swaps one in place.
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterator

from torch import nn


def linear_layers(model: nn.Module, skip: tuple[str, ...] = (),
                  filter_fn: Callable[[nn.Module, str], bool] | None = None) -> Iterator[tuple[str, nn.Linear]]:
    """(qualified name, module) for each ``nn.Linear`` not matched by a ``skip`` glob."""
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear):
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in skip):
            continue
        if filter_fn is not None and not filter_fn(mod, name):
            continue
        yield name, mod


def set_module(model: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, attr = qualname.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
