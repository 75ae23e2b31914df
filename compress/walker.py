"""One module walker for every compression verb.

``linear_layers`` yields the linear-like modules a verb should touch (``nn.Linear``, and
the classes an architecture declares, e.g. GPT-2's ``Conv1D``), honouring skip globs and
a filter; ``as_linear`` gives any of them as an ``nn.Linear`` (weight (N, K)), so every
transform is written once; ``set_module`` swaps one in place.
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterator

import torch
from torch import nn


def is_linear(mod: nn.Module, kinds: tuple[str, ...] = ("Linear",)) -> bool:
    return isinstance(mod, nn.Linear) or (type(mod).__name__ in kinds and hasattr(mod, "weight")
                                         and getattr(mod.weight, "dim", lambda: 0)() == 2)


def linear_layers(model: nn.Module, skip: tuple[str, ...] = (),
                  filter_fn: Callable[[nn.Module, str], bool] | None = None,
                  kinds: tuple[str, ...] = ("Linear",)) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) for each linear-like module not matched by a ``skip`` glob."""
    for name, mod in list(model.named_modules()):
        if not is_linear(mod, kinds):
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in skip):
            continue
        if filter_fn is not None and not filter_fn(mod, name):
            continue
        yield name, mod


def as_linear(mod: nn.Module) -> nn.Linear:
    """``mod`` itself if it is an ``nn.Linear``; else an equivalent one (Conv1D stores W as (K, N))."""
    if isinstance(mod, nn.Linear):
        return mod
    k, n = mod.weight.shape  # transformers.pytorch_utils.Conv1D: y = x @ W + b
    lin = nn.Linear(k, n, bias=mod.bias is not None, device=mod.weight.device, dtype=mod.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(mod.weight.t())
        if mod.bias is not None:
            lin.bias.copy_(mod.bias)
    return lin


def set_module(model: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, attr = qualname.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
