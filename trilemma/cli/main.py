"""``trilemma``: the command line.

Each command lives in its own module with a ``register(subparsers)`` function;
this file only assembles them and turns :class:`~trilemma.errors.TrilemmaError`
into a one-line message with exit code 2.
"""

from __future__ import annotations

import importlib
import sys
import warnings

from trilemma.cli.common import Parser
from trilemma.errors import Interrupted, TrilemmaError

# One module per top-level command, in the order --help lists them.
COMMAND_MODULES = (
    "trilemma.cli.demo",
    "trilemma.cli.train",
    "trilemma.cli.sample",
    "trilemma.cli.generate",
    "trilemma.cli.edit",
    "trilemma.cli.show",
    "trilemma.cli.eval",
    "trilemma.cli.compare",
    "trilemma.cli.experiment",
    "trilemma.cli.ui",
)


def build_parser() -> Parser:
    from trilemma import __version__

    parser = Parser(prog="trilemma", description="Train, sample and compare generative image models "
                    "on quality, coverage and speed.")
    parser.add_argument("--version", action="version", version=f"trilemma {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None):
    return f"trilemma: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:                                     # name the subcommand whose --help lists the options
        parser.exit(2, f"trilemma: error: unrecognized arguments: {' '.join(extra)} "
                       f"(see '{getattr(args, 'command_prog', parser.prog)} --help')\n")
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        return int(args.func(args) or 0)
    except TrilemmaError as e:
        print(f"trilemma: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:                      # an experiment's training stopped by Ctrl-C/SIGTERM, saved
        print(f"trilemma: {e}", file=sys.stderr)
        return 143 if e.signal == "SIGTERM" else 130
    except KeyboardInterrupt:
        print("trilemma: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
