"""Frozen-dataclass configs that round-trip through ``config.json``.

Every config in trilemma is a frozen dataclass. :func:`to_dict` writes it as
plain JSON types; :func:`from_dict` reads it back, converting lists to tuples
and nested dicts to nested configs, and fails loudly on unknown keys so that
a typo in a hand-edited ``config.json`` never passes silently.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from trilemma.errors import TrilemmaError

C = TypeVar("C")


def to_dict(config) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp, value):
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            if _is_dataclass_type(arg) and isinstance(value, dict):
                return from_dict(arg, value)
            if typing.get_origin(arg) is tuple and isinstance(value, list):
                return tuple(value)
        return value
    if (origin is tuple or tp is tuple) and isinstance(value, list):
        return tuple(value)
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Build ``cls`` from a dict; unknown keys raise a one-line :class:`TrilemmaError`."""
    if not isinstance(data, dict):
        raise TrilemmaError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TrilemmaError(f"{where}: unknown option(s) for {cls.__name__}: {', '.join(unknown)}")
    kwargs = {k: _convert(hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise TrilemmaError(f"{where}: {e}") from None
