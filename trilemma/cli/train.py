"""``trilemma train KIND``: one subcommand per model family, generated from the family's declared options.

Every flag comes from one declaration (a dataclass field made with :func:`trilemma.options.opt`):
the shared ones (data, budget, optimiser, …) from :class:`~trilemma.data.DataConfig` and
:class:`~trilemma.train.common.TrainConfig`, the family's own from its configs. See
:mod:`trilemma.train.family`.
"""

from __future__ import annotations

import argparse

from trilemma.cli.common import Parser, int_in, say, subparser

# The kinds with a trainer, in `trilemma train --help` order, and their one-line help (kept here so that
# `trilemma --help` does not import torch); tests check it against the registry.
TRAINERS = {
    "ddpm": "train a pixel-space diffusion model (DDPM, Algorithm 1)",
    "vae": "train a variational autoencoder (maximise the ELBO); reports the test −ELBO",
    "gan": "train a DCGAN with Algorithm 1 (k D steps per G step); a step = one iteration",
    "autoencoder": "latent diffusion, phase 1: a KL-regularised autoencoder; reports the test PSNR and "
                   "reconstruction FID and stores the latent scale factor",
    "ldm": "latent diffusion, phase 2: a DDPM on the latents of an autoencoder run (the dataset is encoded once "
           "and cached)",
    "t2i": "text-to-image diffusion: a frozen text encoder, cross-attention, caption dropout for classifier-free "
           "guidance (docs/methods.md §8)",
    "ddgan": "train a denoising diffusion GAN (T large steps, each a conditional GAN; docs/methods.md §11); a step = "
             "one D and one G update",
}


def report(result) -> int:
    if result.interrupted:
        how = "SIGTERM" if result.signal == "SIGTERM" else "interrupted"
        say(f"trilemma: {how} at step {result.step}; checkpoint saved in {result.run_dir} (continue with --resume)")
        return 143 if result.signal == "SIGTERM" else 130
    say(f"trilemma: trained {result.step} steps in {result.elapsed_s / 60:.1f} min "
        f"(last loss {result.last_loss:.4f}); run folder: {result.run_dir}")
    return 0


def add_family_options(p: argparse.ArgumentParser, kind: str) -> None:
    """Every option of ``kind``'s trainer, from its declarations."""
    from trilemma.options import add_options
    from trilemma.registry import train_spec

    spec = train_spec(kind)
    p.add_argument("--out", required=True, help="run folder to create (or to continue with --resume)")
    p.add_argument("--preset", choices=spec.presets, default=spec.all_defaults["preset"],
                   help="model size: tiny (tests), small (CPU), base (GPU)")
    add_options(p, (*spec.options, *spec.extra), spec.all_defaults, override_of=spec.overrides)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _given(p: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The options the user typed (so --resume can refuse the ones it cannot change)."""
    given = set()
    for token in argv:
        name = token.split("=", 1)[0]
        action = p._option_string_actions.get(name)
        if action is not None:
            given.add(action.dest)
    return given


def _run(args) -> int:
    from trilemma.registry import train_spec
    from trilemma.train.family import train
    from trilemma.train.rundir import check_run_dir
    from trilemma.utils.outputs import output_dir

    spec = train_spec(args.family)
    if getattr(args, "image_size", None) is not None:   # checked by the data layer too, but naming its flag here
        from trilemma.data.config import MAX_IMAGE_SIZE

        int_in(1, MAX_IMAGE_SIZE).check(args.image_size, "--image-size")
    output_dir(args.out, "--out")                      # before any work: a writable folder, not a file
    given = _given(args.parser, args.argv) if args.resume else set()
    check_run_dir(args.out, resume=args.resume, steps=args.steps if "steps" in given else None,
                  minutes=args.minutes if "minutes" in given else None, kind=args.family)
    if args.resume:        # every section of config.json and the weights read back, before config.json is rewritten
        from trilemma.registry import load_run

        load_run(args.out, device="cpu")
    values = {k: v for k, v in vars(args).items()
              if k not in ("func", "family", "command", "out", "resume", "quiet", "parser", "argv")}
    if args.resume:
        given = _given(args.parser, args.argv)
        values = {k: v for k, v in values.items() if k in given}
    elif values.get("steps") is None and values.get("minutes") is None:
        from trilemma.errors import TrilemmaError

        raise TrilemmaError("give a training budget: --steps N or --minutes M")
    return report(train(spec, args.out, resume=args.resume, progress=not args.quiet, **values))


def register(sub) -> None:
    p = subparser(sub, "train", "train a model into a run folder")
    fam = p.add_subparsers(dest="family", required=True, metavar="KIND", parser_class=Parser)
    for kind, help_text in TRAINERS.items():
        q = subparser(fam, kind, help_text)
        add_family_options(q, kind)
        q.set_defaults(func=_run, parser=q)
