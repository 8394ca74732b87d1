"""Pieces every CLI command shares: a parser whose errors are one line, and option types."""

from __future__ import annotations

import argparse
from pathlib import Path

from trilemma.metrics.report import format_value
from trilemma.utils.console import say

__all__ = ["format_value", "say"]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``trilemma X: error: ...``), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def unit_float(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return path


def subparser(sub: argparse._SubParsersAction, name: str, help: str, **kwargs) -> Parser:
    """Add a subcommand that uses :class:`Parser` and shows defaults in --help."""
    return sub.add_parser(name, help=help, description=help,
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)
