"""Options declared once: a dataclass field carries its help, type, default, choices and check.

Every user-facing option of trilemma is one field of a frozen config dataclass, declared with
:func:`opt`::

    lr: float = opt(2e-4, "peak learning rate (AdamW)", check=positive)

From that one declaration come

- the command-line flag (:func:`add_options`: ``--lr``, its type, default, choices and help),
- the Python keyword (``train("ddpm", out, lr=1e-3)``: :func:`build` picks the fields of a class
  out of one flat dict of options, recursing into nested configs),
- the ``config.json`` section (:func:`trilemma.config.to_dict` / ``from_dict``), and
- validation (:func:`check_fields`, called from ``__post_init__``: the field's ``check`` and
  ``choices``, with a one-line :class:`~trilemma.errors.TrilemmaError` naming the flag).

Checks are small functions ``check(value) -> str | None`` that return what is wrong ("must be > 0").
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from dataclasses import MISSING, Field
from typing import Any, Callable, Iterable

from trilemma.errors import TrilemmaError

Check = Callable[[Any], "str | None"]
INT64_MAX = 2**63 - 1


# ------------------------------------------------------------------------------------------- checks
def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(value) -> str | None:
    return None if _number(value) and math.isfinite(value) else f"must be a finite number, got {value!r}"


def positive(value) -> str | None:
    return finite(value) or (None if value > 0 else f"must be > 0, got {value!r}")


def nonneg(value) -> str | None:
    return finite(value) or (None if value >= 0 else f"must be >= 0, got {value!r}")


def in_range(lo: float, hi: float, *, hi_open: bool = False) -> Check:
    """A check for lo ≤ value ≤ hi (or < hi with ``hi_open``)."""
    bracket = ")" if hi_open else "]"

    def check(value) -> str | None:
        bad = finite(value)
        if bad:
            return bad
        ok = lo <= value < hi if hi_open else lo <= value <= hi
        return None if ok else f"must be in [{lo:g}, {hi:g}{bracket}, got {value!r}"
    return check


def int_in(lo: int, hi: int = INT64_MAX) -> Check:
    """A check for an integer lo ≤ value ≤ hi (hi defaults to the int64 maximum)."""
    def check(value) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be an integer, got {value!r}"
        if not lo <= value <= hi:
            top = "2**63-1" if hi == INT64_MAX else str(hi)
            return f"must be an integer in [{lo}, {top}], got {value}"
        return None
    return check


positive_int = int_in(1)
nonneg_int = int_in(0)


def optional(check: Check) -> Check:
    """``check``, letting ``None`` through (options whose absence means "the preset's value")."""
    return lambda value: None if value is None else check(value)


# ------------------------------------------------------------------------------------------- declaring
def opt(default: Any = MISSING, help: str = "", *, flag: str | None = None, check: Check | None = None,
        choices: Iterable[Any] | None = None, cli: bool = True, factory: Callable[[], Any] | None = None,
        metavar: str | None = None) -> Any:
    """A dataclass field that is also an option (see the module docstring).

    ``flag``: the command-line name without dashes when it is not the field name with ``_`` → ``-``;
    ``cli=False``: stored in config.json and checked, but not a flag (set by trilemma itself).
    """
    metadata = {"help": help, "flag": flag, "check": check, "cli": cli, "metavar": metavar,
                "choices": None if choices is None else tuple(choices)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(f: Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name.replace("_", "-"))


def key_of(f: Field) -> str:
    """The option's name in a flat dict of options (and the Python keyword): the flag with ``_``."""
    return (f.metadata.get("flag") or f.name).replace("-", "_")


def check_fields(config) -> None:
    """Validate every declared field of ``config`` (call from ``__post_init__``)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        choices = f.metadata.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise TrilemmaError(f"{flag_of(f)}: must be one of {', '.join(map(str, choices))}, got {value!r}")
        check = f.metadata.get("check")
        problem = check(value) if check is not None else None
        if problem:
            raise TrilemmaError(f"{flag_of(f)}: {problem}")


def option_fields(cls) -> list[Field]:
    """The declared option fields of ``cls``, with nested config fields flattened (depth first)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.extend(option_fields(tp))
        elif "help" in f.metadata:
            out.append(f)
    return out


def _field_type(cls_hints: dict[str, Any], f: Field) -> type:
    tp = cls_hints.get(f.name, f.type)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else str
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0])
    return tp


def _hints(cls) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for klass in [cls, *_nested(cls)]:
        hints.update(typing.get_type_hints(klass))
    return hints


def _nested(cls) -> list[type]:
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.append(tp)
            out.extend(_nested(tp))
    return out


def _argparse_type(tp: type, f: Field) -> Callable[[str], Any]:
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str

        def parse_tuple(text: str):
            try:
                return tuple(inner(v) for v in text.split(",") if v.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected comma-separated values like 8,4, got {text!r}") from None
        return parse_tuple
    base = tp if tp in (int, float, str) else str

    def parse(text: str):
        try:
            value = base(text)
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(base, "a value")
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        check = f.metadata.get("check")
        problem = check(value) if check is not None else None
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value
    return parse


def add_options(parser: argparse.ArgumentParser, classes: Iterable[type], defaults: dict[str, Any] | None = None,
                *, override_of: dict[type, tuple[str, ...]] | None = None, skip: Iterable[str] = ()) -> None:
    """Add a flag for every declared field of ``classes`` (nested configs flattened).

    ``defaults`` overrides field defaults by name (a family's own defaults); ``override_of`` maps a
    model config class to the field names exposed as *overrides* of a preset (default ``None``).
    """
    defaults = defaults or {}
    skip = set(skip)
    seen: set[str] = set()

    def add(f: Field, tp: type, default: Any, help_suffix: str = "") -> None:
        if key_of(f) in skip or key_of(f) in seen or not f.metadata.get("cli", True):
            return
        seen.add(key_of(f))
        kwargs: dict[str, Any] = {"dest": key_of(f), "help": f.metadata["help"] + help_suffix, "default": default}
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        if tp is bool:
            parser.add_argument(flag_of(f), action=argparse.BooleanOptionalAction if default else "store_true",
                                **kwargs)
            return
        if f.metadata.get("choices") is not None:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag_of(f), type=_argparse_type(tp, f), **kwargs)

    for cls in classes:
        hints = _hints(cls)
        for f in option_fields(cls):
            default = defaults.get(key_of(f), f.default if f.default is not MISSING else None)
            add(f, _field_type(hints, f), default)
    for cls, names in (override_of or {}).items():
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in names:
            add(fields[name], _field_type(hints, fields[name]), defaults.get(name), " (default: the preset's)")


def option_names(classes: Iterable[type], override_of: dict[type, tuple[str, ...]] | None = None) -> set[str]:
    names = {key_of(f) for cls in classes for f in option_fields(cls)}
    for names_ in (override_of or {}).values():
        names |= set(names_)
    return names


def build(cls: type, values: dict[str, Any], **fixed: Any):
    """An instance of ``cls`` from the flat option dict ``values`` (keys: :func:`key_of`; absent or ``None``
    values keep the field's default).

    Nested config fields are built recursively from the same flat dict; ``fixed`` sets fields directly.
    """
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            kwargs[f.name] = fixed[f.name]
            continue
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            given = values.get(f.name)                       # a whole nested config given in Python
            kwargs[f.name] = given if isinstance(given, tp) else build(tp, values)
        elif values.get(key_of(f)) is not None:
            kwargs[f.name] = values[key_of(f)]
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TrilemmaError(f"{cls.__name__}: {e}") from None


def overrides(values: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The preset overrides among ``names`` that were given (not ``None``)."""
    return {n: values[n] for n in names if values.get(n) is not None}


def flat_options(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every whole config given in Python (a dataclass, e.g. ``schedule=ScheduleConfig(T=100)``)
    replaced by its flat options and paths made strings: the same options, storable as JSON."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            flat.update(flat_options(_fields_of(value)))
        else:
            flat[key] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return flat


def _fields_of(config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_fields_of(value))
        elif "help" in f.metadata:
            out[key_of(f)] = value
    return out
