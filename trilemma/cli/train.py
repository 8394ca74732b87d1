"""``trilemma train FAMILY``: one subcommand per model family, sharing the budget/run options."""

from __future__ import annotations

import argparse

from trilemma.cli.common import Parser, positive_float, positive_int, say, subparser
from trilemma.errors import TrilemmaError


def add_common_train_args(p: argparse.ArgumentParser, *, default_preset: str = "small",
                          default_lr: float = 2e-4, default_batch: int = 128, data: bool = True) -> None:
    """The options every trainer takes (issue: "like every trainer in trilemma")."""
    if data:
        p.add_argument("--data", default="fashion-mnist",
                       help="fashion-mnist, mnist-5k, digits, or a folder of images")
        p.add_argument("--image-size", type=positive_int, default=None, help="resize/crop images to this size")
        p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 (grey) or 3 (RGB)")
        p.add_argument("--hflip", action="store_true", help="random horizontal flips")
    p.add_argument("--out", required=True, help="run folder to create (or to continue with --resume)")
    p.add_argument("--preset", choices=("tiny", "small", "base"), default=default_preset,
                   help="model size: tiny (tests), small (CPU), base (GPU)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, default=None, help="total optimiser steps")
    budget.add_argument("--minutes", type=positive_float, default=None, help="total training minutes")
    p.add_argument("--batch-size", type=positive_int, default=default_batch)
    p.add_argument("--lr", type=positive_float, default=default_lr, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=positive_int, default=10)
    p.add_argument("--sample-every", type=int, default=0, help="steps between sample grids (0 = at the end)")
    p.add_argument("--checkpoint-every", type=positive_int, default=500)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on recent CPUs and GPUs)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 …")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def train_overrides(args) -> dict:
    return dict(warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
                seed=args.seed, log_every=args.log_every, sample_every=args.sample_every,
                checkpoint_every=args.checkpoint_every, bf16=args.bf16, device=args.device)


def data_overrides(args) -> dict:
    return dict(image_size=args.image_size, channels=args.channels, hflip=args.hflip)


def check_budget(args) -> None:
    if not args.resume and args.steps is None and args.minutes is None:
        raise TrilemmaError("give a training budget: --steps N or --minutes M")


def report(result) -> int:
    if result.interrupted:
        say(f"trilemma: interrupted at step {result.step}; checkpoint saved in {result.run_dir} "
            f"(continue with --resume)")
        return 130
    say(f"trilemma: trained {result.step} steps in {result.elapsed_s / 60:.1f} min "
        f"(last loss {result.last_loss:.4f}); run folder: {result.run_dir}")
    return 0


# ------------------------------------------------------------------------------------------ ddpm
def _register_ddpm(sub) -> None:
    p = subparser(sub, "ddpm", "train a pixel-space diffusion model (DDPM, Algorithm 1)")
    add_common_train_args(p, default_lr=1e-3)
    p.add_argument("--schedule", choices=("linear", "quadratic", "sigmoid", "cosine"), default="linear")
    p.add_argument("--T", type=positive_int, default=1000, help="diffusion steps")
    p.add_argument("--beta-1", type=positive_float, default=1e-4)
    p.add_argument("--beta-T", type=positive_float, default=0.02)
    p.add_argument("--r", type=positive_float, default=6.0, help="sigmoid schedule steepness")
    p.add_argument("--s", type=float, default=0.008, help="cosine schedule offset")
    p.add_argument("--prediction", choices=("eps", "v"), default="eps", help="network target")
    p.add_argument("--class-cond", action="store_true", help="condition on class labels (for --label)")
    p.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    p.add_argument("--base-channels", type=positive_int, default=None, help="override the preset's width")
    p.set_defaults(func=_run_ddpm)


def _run_ddpm(args) -> int:
    from trilemma.diffusion.schedule import ScheduleConfig
    from trilemma.train.diffusion import train_ddpm

    check_budget(args)
    model = {k: v for k, v in (("dropout", args.dropout), ("base_channels", args.base_channels)) if v is not None}
    schedule = ScheduleConfig(name=args.schedule, T=args.T, beta_1=args.beta_1, beta_T=args.beta_T,
                              r=args.r, s=args.s)
    result = train_ddpm(args.out, data=args.data, preset=args.preset, steps=args.steps, minutes=args.minutes,
                        batch_size=args.batch_size, lr=args.lr, schedule=schedule, prediction=args.prediction,
                        class_cond=args.class_cond, resume=args.resume, progress=not args.quiet,
                        model_overrides=model, train_overrides=train_overrides(args),
                        data_overrides=data_overrides(args))
    return report(result)


# Each model family registers its `trilemma train <family>` subcommand here.
FAMILIES = [_register_ddpm]


def register(sub) -> None:
    p = subparser(sub, "train", "train a model into a run folder")
    fam = p.add_subparsers(dest="family", required=True, metavar="FAMILY", parser_class=Parser)
    for add in FAMILIES:
        add(fam)
