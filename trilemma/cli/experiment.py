"""``trilemma experiment NAME``: the lecture's claims, each reproduced by one command.

Each experiment registers a subcommand through a function in :data:`EXPERIMENTS`.
"""

from __future__ import annotations

from trilemma.cli.common import Parser, subparser
from trilemma.experiments import add_gan_gradients, add_latent_vs_pixel, add_vae_vs_gan

# Functions `add(subparsers)`, one per experiment (gan-gradients, vae-vs-gan, latent-vs-pixel, …).
EXPERIMENTS: list = [add_gan_gradients, add_vae_vs_gan, add_latent_vs_pixel]


def register(sub) -> None:
    p = subparser(sub, "experiment", "reproduce an experiment from the lecture, with plots and a table")
    names = p.add_subparsers(dest="experiment", required=True, metavar="NAME", parser_class=Parser)
    for add in EXPERIMENTS:
        add(names)
