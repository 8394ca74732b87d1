"""``trilemma demo``: the quick-start job — train a DDPM on Fashion-MNIST on the CPU, sample it, show it.

It trains for a wall-clock budget (default 6.5 minutes of training), then draws
one grid with DDPM ancestral sampling over all T = 1000 steps and one with
50-step DDIM, and leaves everything in one run folder:

    RUN/config.json, model.safetensors, ema.safetensors   the model
    RUN/loss.png, metrics.jsonl                           the loss curve
    RUN/samples/ddpm_1000.png, ddim_50.png                the grids
"""

from __future__ import annotations

import time
from pathlib import Path

from trilemma.cli.common import positive_float, positive_int, say, subparser


def register(sub) -> None:
    p = subparser(sub, "demo", "train a DDPM on Fashion-MNIST (~9 min on 2 CPU cores), sample it with DDPM "
                  "and 50-step DDIM, and write grids, a loss curve and the model into a run folder")
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--data", default="fashion-mnist", help="dataset name or image folder")
    p.add_argument("--preset", choices=("tiny", "small", "base"), default="small")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=positive_float, default=None, help="training minutes (default 6.5)")
    budget.add_argument("--steps", type=positive_int, default=None, help="or: training steps")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--ddpm-n", type=positive_int, default=36, help="images in the DDPM (T-step) grid")
    p.add_argument("--ddim-n", type=positive_int, default=64, help="images in the 50-step DDIM grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast while training")
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    p.set_defaults(func=run)


def run(args) -> int:
    from trilemma.runs import SampleOptions, load_run
    from trilemma.train.diffusion import train_ddpm
    from trilemma.viz import save_grid

    out = Path(args.out)
    t0 = time.perf_counter()
    minutes = args.minutes if (args.minutes or args.steps) else 6.5
    if args.steps:
        minutes = None
    result = train_ddpm(out, data=args.data, preset=args.preset, steps=args.steps, minutes=minutes,
                        batch_size=args.batch_size, lr=1e-3, resume=args.resume,
                        train_overrides=dict(seed=args.seed, bf16=args.bf16, device=args.device,
                                             sample_every=500, warmup_steps=100))
    if result.interrupted:
        say(f"trilemma: interrupted; continue with: trilemma demo --out {out} --resume")
        return 130
    train_s = time.perf_counter() - t0
    run_ = load_run(out, device=args.device)
    written = []
    for options, n in ((SampleOptions(sampler="ddpm"), args.ddpm_n),
                       (SampleOptions(sampler="ddim", steps=50), args.ddim_n)):
        s0 = time.perf_counter()
        images = run_.generate(n, seed=args.seed, options=options)
        path = out / "samples" / f"{options.sampler}_{run_.nfe(options)}.png"
        save_grid(images, path)
        written.append(path)
        say(f"trilemma: {run_.describe(options)}: {n} images in {time.perf_counter() - s0:.0f} s -> {path}")
    total = time.perf_counter() - t0
    say(f"trilemma: demo done in {total / 60:.1f} min (training {train_s / 60:.1f} min, {result.step} steps, "
        f"final loss {result.last_loss:.4f})")
    say(f"trilemma: run folder {out}: model.safetensors, ema.safetensors, config.json, loss.png, "
        + ", ".join(str(p.relative_to(out)) for p in written))
    print(out)
    return 0
