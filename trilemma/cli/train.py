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
    """The closing line (printed by one process: under torchrun, rank 0) and the exit code."""
    import os

    speak = say if int(os.environ.get("RANK", "0")) == 0 else (lambda _: None)
    if result.interrupted:
        how = "SIGTERM" if result.signal == "SIGTERM" else "interrupted"
        speak(f"trilemma: {how} at step {result.step}; checkpoint saved in {result.run_dir} (continue with --resume)")
        return 143 if result.signal == "SIGTERM" else 130
    speak(f"trilemma: trained {result.step} steps in {result.elapsed_s / 60:.1f} min "
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


def _given(p: argparse.ArgumentParser, argv: list[str], family: str) -> set[str]:
    """The options the user typed (abbreviated, ``--flag=value`` and ``--no-flag`` forms included).

    ``argv`` is the whole command line; the family's part is parsed again into a namespace whose every
    attribute starts as a marker, so argparse leaves the marker exactly where nothing was given.
    """
    marker = object()
    rest = argv[argv.index("train") + 1:] if "train" in argv else argv
    rest = rest[rest.index(family) + 1:] if family in rest else rest
    namespace = argparse.Namespace(**{a.dest: marker for a in p._actions if a.dest != argparse.SUPPRESS})
    parsed, _ = p.parse_known_args(rest, namespace)
    return {dest for dest, value in vars(parsed).items() if value is not marker}


def _run(args) -> int:
    from pathlib import Path

    from trilemma.registry import train_spec
    from trilemma.train.family import train
    from trilemma.train.rundir import check_run_dir
    from trilemma.utils.outputs import output_dir

    spec = train_spec(args.family)
    if getattr(args, "image_size", None) is not None:   # checked by the data layer too, but naming its flag here
        from trilemma.data.config import MAX_IMAGE_SIZE

        int_in(1, MAX_IMAGE_SIZE).check(args.image_size, "--image-size")
    output_dir(args.out, "--out")                      # before any work: a writable folder, not a file
    given = _given(args.parser, args.argv, args.family)
    target = (Path(args.out), args.family)
    if args.resume and spec.resume_folder is not None:  # e.g. a recipe interrupted in its first phase
        target = spec.resume_folder(Path(args.out))
    if target is not None:
        check_run_dir(target[0], resume=args.resume, steps=args.steps if "steps" in given else None,
                      minutes=args.minutes if "minutes" in given else None, kind=target[1])
    if args.resume and target is not None:  # every section of config.json and the weights read back, before
        from trilemma.registry import load_run            # config.json is rewritten

        load_run(target[0], device="cpu")
    # Only the options typed are passed on (the family fills in its defaults), so that a recipe's defaults
    # can tell a typed value from an unset one.
    values = {k: v for k, v in vars(args).items() if k in given
              and k not in ("func", "family", "command", "command_prog", "out", "resume", "quiet", "parser", "argv")}
    if not args.resume and values.get("steps") is None and values.get("minutes") is None:
        from trilemma.errors import TrilemmaError

        raise TrilemmaError("give a training budget: --steps N or --minutes M")
    run = spec.runner or (lambda out, **kw: train(spec, out, **kw))
    return report(run(args.out, resume=args.resume, progress=not args.quiet, **values))


def register(sub) -> None:
    p = subparser(sub, "train", "train a model into a run folder")
    fam = p.add_subparsers(dest="family", required=True, metavar="KIND", parser_class=Parser)
    for kind, help_text in TRAINERS.items():
        q = subparser(fam, kind, help_text)
        add_family_options(q, kind)
        q.set_defaults(func=_run, parser=q)
