"""Pieces every CLI command shares: a parser whose errors are one line, and option types."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from trilemma.metrics.report import format_value
from trilemma.utils.console import say
from trilemma.utils.validate import (
    FloatRange,
    finite_float,
    float_in,
    int_in,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    unit_interval,
)

__all__ = ["MAX_BATCH", "batch_size_int", "existing_dir", "finite_float", "float_in", "format_value",
           "guidance_float", "int_in", "minutes_float", "nonneg_float", "nonneg_int", "positive_float",
           "positive_int", "say", "seed_int", "subparser", "unit_float"]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``trilemma: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"trilemma: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


# Numeric option types (argparse ``type=``): the validators of trilemma.utils.validate, one rule and one
# message each ("argument --n: must be an integer in [1, 2**63-1], got '0'"). NaN, ±inf and integers beyond
# int64 are refused everywhere.
unit_float = unit_interval                                  # a number in [0, 1]
seed_int = nonneg_int                                       # --seed: 0 … 2**63-1 (torch.manual_seed's range)
# --guidance w: one rule for every command: finite and >= 0 (0 = unconditional ε(x_t, ∅), 1 = conditional
# only, > 1 = guided; docs/methods.md §8). Runs without a condition ignore it.
guidance_float = FloatRange(0.0, math.inf, text="must be a finite number >= 0 (0: unconditional, "
                            "1: conditional, > 1: guided)")
MAX_BATCH = 2**20                                           # as `trilemma train --batch-size`
batch_size_int = int_in(1, MAX_BATCH)
MAX_MINUTES = 10**7                                         # as `trilemma train --minutes`
minutes_float = FloatRange(0.0, MAX_MINUTES, lo_open=True, text=f"must be a number in (0, {MAX_MINUTES}]")


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return path


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default, except where there is none to show.

    No "(default: None)" after an option whose absence means "the run's or the sampler's
    choice" (its help says which), nor after flags, nor when the help states the default itself.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        if action.default is None or action.default is False or "default" in help:
            return action.help
        return super()._get_help_string(action)


def subparser(sub: argparse._SubParsersAction, name: str, help: str, **kwargs) -> Parser:
    """Add a subcommand that uses :class:`Parser` and shows defaults in --help."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=DefaultsFormatter, **kwargs)
    p.set_defaults(command_prog=p.prog)          # the deepest subcommand's, for errors the top level reports
    return p
