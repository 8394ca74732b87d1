"""``trilemma experiment NAME``: the lecture's claims, each reproduced by one command.

Each experiment registers a subcommand through a function in :data:`EXPERIMENTS`.
"""

from __future__ import annotations

from trilemma.cli.common import Parser, subparser

# Functions `add(subparsers)`, one per experiment (gan-gradients, vae-vs-gan, latent-vs-pixel, …).
EXPERIMENTS: list = []


def register(sub) -> None:
    p = subparser(sub, "experiment", "reproduce an experiment from the lecture, with plots and a table")
    names = p.add_subparsers(dest="experiment", required=True, metavar="NAME", parser_class=Parser)
    for add in EXPERIMENTS:
        add(names)
