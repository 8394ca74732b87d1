"""``trilemma sample RUN``: draw images from any run folder into a PNG grid (and an .npz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trilemma.cli.common import (
    batch_size_int,
    guidance_float,
    nonneg_int,
    positive_int,
    say,
    seed_int,
    subparser,
    unit_float,
)
from trilemma.diffusion.samplers import AUTO, SAMPLERS, SOLVER_SPACINGS


# The sampling options' defaults: "not given" (the sampler's or run's choice), or the one value shown.
SAMPLING_DEFAULTS = {"sampler": AUTO, "steps": None, "eta": None, "spacing": None, "variance": "beta_tilde",
                     "clip": None, "label": None, "guidance": 1.0}


def sampling_given(args) -> list[str]:
    """The sampling options given on the command line (those whose value is not their default), as flags."""
    flags = {"clip": "--no-clip"}
    return [flags.get(k, "--" + k) for k, default in SAMPLING_DEFAULTS.items() if getattr(args, k, default) != default]


def add_sampler_args(p) -> None:
    """Sampler options shared by `sample`, `eval`, `show trajectory` …"""
    p.add_argument("--sampler", choices=(AUTO, *SAMPLERS), default=SAMPLING_DEFAULTS["sampler"],
                   help="diffusion runs: ddpm (Algorithm 2), ddim, or a fast solver (docs/methods.md §10): "
                        "dpmpp-2m, dpmpp-2m-sde, unipc, heun, euler; auto: the best measured for --steps "
                        "(unipc below 20, dpmpp-2m-sde from 20; docs/sampling.md)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="network evaluations (NFE) per image (default 50; DDPM: all T, fewer = respaced); "
                        "heun costs 2 per step, so it takes (steps + 1) // 2 steps")
    p.add_argument("--eta", type=unit_float, default=None,
                   help="stochasticity: DDIM/euler η (0 deterministic, the default; 1 DDPM-like), "
                        "dpmpp-2m-sde noise (default 1)")
    p.add_argument("--spacing", choices=SOLVER_SPACINGS, default=None,
                   help="how the sampling steps are picked from 1..T (default trailing for ddpm and ddim; "
                        "for the solvers karras from 8 steps, trailing below; karras, logsnr: the solvers only)")
    p.add_argument("--variance", choices=("beta", "beta_tilde"), default=SAMPLING_DEFAULTS["variance"],
                   help="DDPM σ_t²: β_t (fixed large) or β̃_t (fixed small)")
    p.add_argument("--no-clip", dest="clip", action="store_false", default=None,
                   help="do not clamp the predicted x̂₀ to [-1, 1]")
    p.add_argument("--label", type=nonneg_int, default=None, help="class-conditional runs: the class to draw")
    p.add_argument("--guidance", type=guidance_float, default=SAMPLING_DEFAULTS["guidance"],
                   help="classifier-free guidance weight w, finite and >= 0 (0: unconditional, 1: conditional "
                        "only, > 1: guided; docs/methods.md §8)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda …")


def sample_options(args):
    from trilemma.run import SampleOptions

    return SampleOptions(sampler=args.sampler, steps=args.steps, eta=args.eta, spacing=args.spacing,
                         variance=args.variance, clip=args.clip, label=args.label, guidance=args.guidance)


def register(sub) -> None:
    p = subparser(sub, "sample", "draw images from a run into a PNG grid (and optionally an .npz)")
    p.add_argument("run", help="run folder")
    p.add_argument("--n", type=positive_int, default=64, help="number of images")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--batch-size", type=batch_size_int, default=256)
    p.add_argument("--out", default=None, help="PNG grid to write (default RUN/samples/<sampler>.png)")
    p.add_argument("--npz", default=None, help="also write the images as uint8 N×H×W×C under key 'images'")
    p.add_argument("--quiet", action="store_true")
    add_sampler_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from trilemma.registry import load_run
    from trilemma.run import read_run_config
    from trilemma.utils.io import atomic_path
    from trilemma.utils.outputs import output_file
    from trilemma.viz import save_grid

    read_run_config(args.run)                                          # a run folder, before anything else
    out = output_file(args.out if args.out is not None else Path(args.run) / "samples" / f"{args.sampler}.png", "--out")
    npz = output_file(args.npz, "--npz", suffixes=(".npz",)) if args.npz is not None else None
    r = load_run(args.run, device=args.device)
    options = sample_options(args)
    r.check_options(options)
    t0 = time.perf_counter()
    images = r.generate(args.n, seed=args.seed, batch_size=args.batch_size, options=options,
                        progress=not args.quiet)
    seconds = time.perf_counter() - t0
    if args.out is None:                                               # diffusion: named by sampler
        out = out.with_name(f"{options.sampler}.png" if r.reports_steps else f"{r.kind}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, out)
    say(f"trilemma: {args.n} images ({r.describe(options)}, {r.nfe(options)} network evaluations each) "
        f"in {seconds:.1f} s -> {out}")
    if npz is not None:
        npz.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, images=images.permute(0, 2, 3, 1).numpy())
        say(f"trilemma: images saved as uint8 N×H×W×C in {npz}")
    return 0
