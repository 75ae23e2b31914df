"""Typed construction of config dataclasses from plain YAML values.

``build_dataclass(FineTuneConfig, {"epochs": "three"}, "stages[0].config")`` raises
``SpecError("stages[0].config.epochs: expected a number, got str 'three'")``: every spec
error names the field it is about. YAML 1.1 reads ``1e-4`` as a string; numbers accept it.
"""
from __future__ import annotations

import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any

from .errors import ChainpressError, SpecError

def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _container_kind(tp) -> str | None:
    tp = typing.get_origin(tp) or tp
    if tp is dict or is_dataclass(tp):
        return "mapping"
    return "list" if tp in (list, tuple) else None


def coerce(value, tp, where: str):
    """``value`` checked against (and converted to) type ``tp``; ``SpecError`` naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except SpecError as e:
                errors.append((a, e))
        # A mapping given for a dataclass member, a list for a list member: the inner
        # error (which field is wrong) says more than "expected X or Y".
        shaped = [e for a, e in errors if _container_kind(a) and _container_kind(a) == _container_kind(type(value))]
        if len(shaped) == 1:
            raise shaped[0]
        raise SpecError(f"{where}: expected {_describe(tp)}, got {value!r}")
    bad = SpecError(f"{where}: expected {_describe(tp)}, got {type(value).__name__} {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        elem = args[0] if args else Any
        out = [coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin or tp) is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        vt = args[1] if len(args) == 2 else Any
        return {k: coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if is_dataclass(tp):
        return build_dataclass(tp, value, where)
    return value


def build_dataclass(cls: type, data, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.init]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; known: {', '.join(known)}")
    kwargs = {k: coerce(v, hints.get(k, Any), f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ChainpressError as e:
        raise type(e)(f"{where}: {e}") from None
    except (ValueError, TypeError) as e:
        raise SpecError(f"{where}: {e}") from None
