"""Frozen-dataclass configs that round-trip through ``config.json``.

Every config in trilemma is a frozen dataclass. :func:`to_dict` writes it as
plain JSON types; :func:`from_dict` reads it back, converting lists to tuples
and nested dicts to nested configs, and fails loudly on unknown keys, on values
of the wrong type and on values its checks refuse, so that a typo in a
hand-edited ``config.json`` never passes silently. Its errors name the file and
the field (``runs/x/config.json: diffusion.schedule.T: must be an integer in
[2, 100000], got -5``), never a command-line flag the user did not type.

A section read by :func:`trilemma.run.read_run_config` is a :class:`Section`: a
dict that knows its file and its place in it, so :func:`from_dict` can name
them even when the caller passes only the dict.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from trilemma.errors import TrilemmaError

C = TypeVar("C")


class Section(dict):
    """A dict read from a JSON file that knows where it came from (``file``, dotted ``name``).

    A missing key raises a one-line :class:`~trilemma.errors.RunError` naming the file and the key
    (``runs/x/config.json: no 'diffusion' section``) instead of a ``KeyError``.
    """

    file: str = "config"
    name: str = ""

    @classmethod
    def wrap(cls, value: Any, file: str, name: str = "") -> Any:
        """``value`` with every nested dict made a :class:`Section` (lists and scalars unchanged)."""
        if not isinstance(value, dict):
            return value
        out = cls({k: cls.wrap(v, file, f"{name}.{k}" if name else str(k)) for k, v in value.items()})
        out.file, out.name = file, name
        return out

    def __missing__(self, key):
        from trilemma.errors import RunError

        where = f"{self.name}.{key}" if self.name else str(key)
        what = "section" if not self.name else "field"
        raise RunError(f"{self.file}: no '{where}' {what}")


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


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if origin is tuple or tp is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list of {_describe(args[0])}s" if args else "a list"
    if _is_dataclass_type(tp):
        return "an object"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null", dict: "an object", list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


_INT64 = (-(2**63), 2**63 - 1)


def _fits(tp, value) -> bool:
    """Whether the JSON ``value`` has the type ``tp`` (ints fit int64; a float field takes ints; finite)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp) and not isinstance(value, bool)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            return math.isfinite(float(value))
        except OverflowError:
            return False
    if tp is str:
        return isinstance(value, str)
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(tp)
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(args[0], v) for v in value)
        return len(args) == len(value) and all(_fits(a, v) for a, v in zip(args, value))
    if origin in (list, dict) or tp in (list, dict):
        return isinstance(value, origin or tp)
    if _is_dataclass_type(tp):
        return isinstance(value, dict)
    return True                      # a type this check does not know: the dataclass decides


def _convert(tp, value, where: str, name: str):
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp) and isinstance(value, dict):
        return from_dict(tp, value, where, _name=name)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            if _is_dataclass_type(arg) and isinstance(value, dict):
                return from_dict(arg, value, where, _name=name)
            if typing.get_origin(arg) is tuple and isinstance(value, list):
                return tuple(value)
        return value
    if (origin is tuple or tp is tuple) and isinstance(value, list):
        return tuple(value)
    return value


def _flags(cls) -> dict[str, str]:
    """Command-line flag -> field name, for the declared options of ``cls`` (see trilemma.options)."""
    out = {}
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag") or f.name.replace("_", "-")
        out[f"--{flag}"] = f.name
    return out


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config", *, _name: str | None = None) -> C:
    """Build ``cls`` from a dict; unknown keys, wrong types and refused values raise a one-line
    :class:`TrilemmaError` naming ``where`` (the file) and the field (``section.field``)."""
    name = _name if _name is not None else (getattr(data, "name", "") or "")
    if isinstance(data, Section) and where == "config":
        where = data.file
    label = f"{where}: {name}" if name else where
    if not isinstance(data, dict):
        raise TrilemmaError(f"{label}: expected an object for {cls.__name__}, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise TrilemmaError(f"{label}: unknown option(s) for {cls.__name__}: {', '.join(map(str, unknown))}"
                            f" (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        field = f"{name}.{key}" if name else key
        if not _fits(hints[key], value):
            raise TrilemmaError(f"{where}: {field}: expected {_describe(hints[key])}, got {_show(value)}")
        kwargs[key] = _convert(hints[key], value, where, field)
    try:
        return cls(**kwargs)
    except TrilemmaError as e:               # a check of __post_init__, which names the flag: name the field
        message = str(e)
        flag, sep, rest = message.partition(": ")
        field = _flags(cls).get(flag)
        if sep and field is not None:
            raise TrilemmaError(f"{where}: {name + '.' if name else ''}{field}: {rest}") from None
        raise TrilemmaError(f"{label}: {message}") from None
    except (TypeError, ValueError) as e:
        raise TrilemmaError(f"{label}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
