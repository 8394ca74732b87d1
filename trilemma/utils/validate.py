"""Validators for numeric options: one object for argparse ``type=`` and for config checks.

Each validator is an object with two entry points that share one rule and one message:

- ``validator(text)``: the argparse ``type=`` call. On failure it raises
  :class:`argparse.ArgumentTypeError` with ``"must be …, got …"``; argparse
  prefixes ``"argument --x: "`` itself and :class:`trilemma.cli.common.Parser`
  prints it as one line.
- ``validator.check(value, "--x")``: for ``__post_init__`` and other config
  checks. On failure it raises :class:`~trilemma.errors.TrilemmaError`
  ``"--x: must be …, got …"`` (also one line).

Both accept text (as argparse passes it) or numbers (as configs hold them) and
return the parsed ``int``/``float``. Booleans are not numbers here; NaN and
infinities are refused wherever a finite number is meant; integers must fit a
signed 64-bit integer (``torch.manual_seed`` and friends), e.g.::

    p.add_argument("--seed", type=nonneg_int)           # --seed 2**70 -> argument --seed: must be
    nonneg_int.check(config.seed, "--seed")              #   an integer in [0, 2**63-1], got '2**70'

:func:`check_memory` refuses work that would need more than ~80% of the
available memory, before it starts.
"""

from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import dataclass
from typing import Any

from trilemma.errors import TrilemmaError

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
MEMORY_FRACTION = 0.8  # check_memory refuses more than this share of the available memory


def _show(value: Any, limit: int = 40) -> str:
    """A value for an error message: repr of text (as the user typed it), str of numbers, short."""
    text = repr(value) if isinstance(value, str) else _number_text(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _number_text(value: Any) -> str:
    try:
        return str(value)
    except ValueError:  # ints above sys.get_int_max_str_digits()
        return f"an integer of {value.bit_length()} bits"


def _bound(x: float) -> str:
    """A range bound as written in messages: 2**63-1 for int64's limits, %g for floats."""
    if x == INT64_MAX:
        return "2**63-1"
    if x == INT64_MIN:
        return "-2**63"
    return f"{x:g}" if isinstance(x, float) else str(x)


class Validator:
    """Base class: ``__call__`` for argparse, :meth:`check` for configs; subclasses define :meth:`parse`."""

    __name__ = "value"  # argparse uses it in its own fallback messages

    def parse(self, value: Any) -> Any:
        """The accepted value, or raise ``ValueError`` with the reason ``"must be …, got …"``."""
        raise NotImplementedError

    def __call__(self, value: Any) -> Any:
        try:
            return self.parse(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    def check(self, value: Any, name: str) -> Any:
        """``value`` parsed, or :class:`TrilemmaError` ``"<name>: must be …, got …"``."""
        try:
            return self.parse(value)
        except ValueError as e:
            raise TrilemmaError(f"{name}: {e}") from None


@dataclass(frozen=True)
class IntRange(Validator):
    """An integer in ``[lo, hi]`` (both within int64). Text: decimal digits, as ``int()`` reads them."""

    lo: int = INT64_MIN
    hi: int = INT64_MAX

    def __post_init__(self) -> None:
        if not INT64_MIN <= self.lo <= self.hi <= INT64_MAX:
            raise ValueError(f"IntRange: need -2**63 <= lo <= hi <= 2**63-1, got [{self.lo}, {self.hi}]")

    @property
    def __name__(self) -> str:  # type: ignore[override]
        return "integer"

    @property
    def rule(self) -> str:
        return f"must be an integer in [{_bound(self.lo)}, {_bound(self.hi)}]"

    def parse(self, value: Any) -> int:
        number: int | None = None
        if isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:  # not an integer, or more digits than Python converts
                number = None
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
            number = int(value)
        if number is None or not self.lo <= number <= self.hi:
            raise ValueError(f"{self.rule}, got {_show(value)}")
        return number


@dataclass(frozen=True)
class FloatRange(Validator):
    """A finite float between ``lo`` and ``hi``, each end closed unless ``lo_open``/``hi_open``.

    ``lo``/``hi`` may be infinite (an open end); NaN and ±inf values are always refused.
    ``rule`` overrides the message's ``"must be …"`` part.
    """

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    text: str | None = None

    def __post_init__(self) -> None:
        if math.isnan(self.lo) or math.isnan(self.hi) or not self.lo <= self.hi:
            raise ValueError(f"FloatRange: need lo <= hi, got [{self.lo}, {self.hi}]")

    @property
    def __name__(self) -> str:  # type: ignore[override]
        return "number"

    @property
    def rule(self) -> str:
        if self.text is not None:
            return self.text
        if math.isinf(self.lo) and math.isinf(self.hi):
            return "must be a finite number"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"must be a number in {left}{_bound(float(self.lo))}, {_bound(float(self.hi))}{right}"

    def parse(self, value: Any) -> float:
        number: float | None = None
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float range
                number = None
        if number is None or not math.isfinite(number) or not self._inside(number):
            raise ValueError(f"{self.rule}, got {_show(value)}")
        return number

    def _inside(self, x: float) -> bool:
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return above and below


def int_in(lo: int, hi: int = INT64_MAX) -> IntRange:
    """An integer in the closed range ``[lo, hi]``."""
    return IntRange(lo, hi)


def float_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> FloatRange:
    """A finite number in ``[lo, hi]`` (ends open with ``lo_open``/``hi_open``)."""
    return FloatRange(lo, hi, lo_open, hi_open)


positive_int = IntRange(1, INT64_MAX)
nonneg_int = IntRange(0, INT64_MAX)
finite_float = FloatRange()
positive_float = FloatRange(0.0, math.inf, lo_open=True, text="must be a finite number > 0")
nonneg_float = FloatRange(0.0, math.inf, text="must be a finite number >= 0")
unit_interval = FloatRange(0.0, 1.0)
probability = FloatRange(0.0, 1.0, hi_open=True)


# --- memory ----------------------------------------------------------------------------------

def available_memory() -> int | None:
    """Bytes of memory available to this process, or ``None`` if unknown.

    ``MemAvailable`` from ``/proc/meminfo`` (psutil's ``available`` where there is
    no ``/proc``), lowered to the cgroup v2 limit minus usage when a container has one.
    """
    available = _meminfo_available()
    if available is None:
        try:
            import psutil

            available = int(psutil.virtual_memory().available)
        except Exception:  # noqa: BLE001 - not installed, or no support on this platform
            return None
    cgroup = _cgroup_available()
    return available if cgroup is None else min(available, cgroup)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; binary units up to EiB."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} bytes" if i == 0 else f"{n:.1f} {units[i]}"


def check_memory(bytes_needed: float, what: str, option: str, *,
                 available: int | None = None, error: type[TrilemmaError] = TrilemmaError) -> None:
    """Refuse (``error``, default :class:`TrilemmaError`) work that needs more than 80% of free memory.

    ``bytes_needed`` is the caller's estimate (e.g. ``n * C * H * W * 4`` for float32
    images); ``available`` defaults to :func:`available_memory`. When the available
    memory cannot be read, nothing is checked. Message::

        --n: sampling 100000000000 images of 3x32x32 needs about 1.1 TiB of memory, but only 20.3 GiB is available
    """
    if available is None:
        available = available_memory()
    if available is None:
        return
    if not bytes_needed <= MEMORY_FRACTION * available:  # also refuses NaN
        needed = format_bytes(bytes_needed) if math.isfinite(bytes_needed) else "an unbounded amount"
        raise error(f"{option}: {what} needs about {needed} of memory, but only "
                    f"{format_bytes(available)} is available")

