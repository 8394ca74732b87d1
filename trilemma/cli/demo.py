"""``trilemma demo``: the quick-start job — train a diffusion model on Fashion-MNIST on the CPU, sample it.

It trains for a wall-clock budget (default 6 minutes; bf16 autocast when the CPU or GPU has
native bf16) with the recipe of :mod:`trilemma.experiments.demo` — by default a small autoencoder
(a third of the budget) and then a DDPM on its 4×7×7 latents — then draws one grid with DDPM
ancestral sampling over all T = 1000 steps and two with 50-step DDIM (η = 0, the deterministic
sampler, and η = 1), and leaves everything in one run folder:

    RUN/config.json, model.safetensors, ema.safetensors          the model (+ RUN/autoencoder/)
    RUN/loss.png, metrics.jsonl                                  the loss curve
    RUN/samples/ddpm_1000.png, ddim_50.png, ddim_50_eta1.png     the grids
    RUN/ae/                                                      phase 1's run (reconstructions)
"""

from __future__ import annotations

import time

from trilemma.cli.common import (
    MAX_MINUTES,
    batch_size_int,
    float_in,
    int_in,
    minutes_float,
    positive_int,
    say,
    seed_int,
    subparser,
)
from trilemma.errors import RunError, TrilemmaError
from trilemma.utils.io import write_json


def register(sub) -> None:
    p = subparser(sub, "demo", "train a latent DDPM on Fashion-MNIST (~7 min on 2 CPU cores), sample it with "
                  "DDPM and 50-step DDIM, and write grids, a loss curve and the model into a run folder")
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--data", default="fashion-mnist", help="dataset name or image folder")
    p.add_argument("--space", choices=("latent", "pixel"), default="latent",
                   help="latent (default): a small autoencoder for a third of the budget, then a DDPM on its "
                        "latents; pixel: a DDPM on the pixels")
    p.add_argument("--preset", choices=("tiny", "small", "base"), default="small")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=minutes_float, default=None,
                        help=f"training minutes (default 6; at most {MAX_MINUTES})")
    budget.add_argument("--steps", type=positive_int, default=None, help="or: training steps")
    p.add_argument("--batch-size", type=batch_size_int, default=128)
    p.add_argument("--lr", type=float_in(1e-12, 10.0), default=None,
                   help="peak learning rate (default: 2e-3 for the latent recipe, 1e-3 for pixel)")
    p.add_argument("--prediction", choices=("eps", "v", "edm"), default="v",
                   help="what the U-Net predicts: v (default here: keeps x̂₀ sane at high noise, which "
                        "deterministic DDIM needs after a few minutes of training), ε (Algorithm 1 as written) or "
                        "edm (the preconditioning of Karras et al. 2022)")
    p.add_argument("--loss-weight", choices=("uniform", "min-snr"), default=None,
                   help="weight of each t in the diffusion loss: min-snr (default: min-SNR-γ, γ = 5, Hang et al. "
                        "2023) or uniform (Algorithm 1 as written; the default with --prediction edm, whose "
                        "weight is EDM's own)")
    p.add_argument("--noise-levels", choices=("uniform", "lognormal"), default="lognormal",
                   help="noise levels drawn in training: log-normal σ (default: ln σ ~ N(−1.2, 1.2²), Karras et al. "
                        "2022) or uniform t (Algorithm 1 as written)")
    p.add_argument("--ddpm-n", type=int_in(1, 4096), default=16, help="images in the DDPM (T-step) grid")
    p.add_argument("--ddim-n", type=int_in(1, 4096), default=64, help="images in each 50-step DDIM grid")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="bf16 autocast while training (auto: when the hardware has native bf16)")
    p.add_argument("--device", default="auto")
    p.add_argument("--lr-decay", choices=("constant", "cosine"), default="constant",
                   help="learning rate after warm-up: constant, or cosine to 0 at the end of the budget")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    p.set_defaults(func=run)


DEMO_FILE = "demo.json"        # a demo folder's recipe: what --resume continues, and the mark of a demo folder
# The recipe's options that a resume keeps, and their flags (device and bf16 may change).
FIXED = {"space": "--space", "data": "--data", "preset": "--preset", "batch_size": "--batch-size", "lr": "--lr",
         "prediction": "--prediction", "loss_weight": "--loss-weight", "noise_levels": "--noise-levels",
         "lr_decay": "--lr-decay", "seed": "--seed"}


def resumed_recipe(out, recipe, argv: list[str]):
    """The recipe of the demo in ``out``, with this session's device and bf16; refused, before anything is
    written, when ``out`` is not a demo folder or a typed option differs from the demo's own."""
    import dataclasses

    from trilemma.data.config import data_key
    from trilemma.experiments.demo import AE_DIR
    from trilemma.utils.io import read_json

    file = out / DEMO_FILE
    if not file.is_file():
        ae = out / AE_DIR / "config.json"
        ae_config = read_json(ae) if ae.is_file() else None
        if isinstance(ae_config, dict) and ae_config.get("kind") == "autoencoder" and recipe.space == "latent":
            return recipe                        # a latent demo from before demo.json: the run keeps its options
        raise RunError(f"--resume: {out} is not a demo folder (no {DEMO_FILE}); continue a `trilemma train` run "
                       f"with `trilemma train KIND --resume --out {out}`")
    stored = read_json(file)
    if not isinstance(stored, dict) or set(stored) != set(FIXED):
        raise RunError(f"{file}: expected the demo's options {', '.join(FIXED)}; restore the file")

    def typed(flag: str) -> bool:
        return any(a == flag or a.startswith(flag + "=") for a in argv)

    def same(key: str, value) -> bool:
        return data_key(value) == data_key(stored[key]) if key == "data" else value == stored[key]

    changed = [flag for key, flag in FIXED.items() if typed(flag) and not same(key, getattr(recipe, key))]
    if changed:
        raise TrilemmaError(f"--resume: {', '.join(changed)} cannot change when resuming (the demo keeps its "
                            f"options in {file})")
    return dataclasses.replace(recipe, **stored)


def run(args) -> int:
    from trilemma.experiments.demo import (
        AE_DIR,
        DEFAULT_MINUTES,
        DemoRecipe,
        describe_budget,
        train_demo,
    )
    from trilemma.registry import load_run
    from trilemma.run import SampleOptions
    from trilemma.train.rundir import check_run_dir
    from trilemma.utils.device import native_bf16, pick_device
    from trilemma.utils.outputs import output_dir
    from trilemma.viz import save_grid

    out = output_dir(args.out, "--out")
    if not args.resume:
        check_run_dir(out, resume=False)
        check_run_dir(out / AE_DIR, resume=False)
    t0 = time.perf_counter()
    minutes = None if args.steps else (args.minutes or DEFAULT_MINUTES)
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bf16(pick_device(args.device)))
    recipe = DemoRecipe(space=args.space, data=args.data, preset=args.preset, batch_size=args.batch_size, lr=args.lr,
                        prediction=args.prediction, noise_levels=args.noise_levels, lr_decay=args.lr_decay,
                        loss_weight=args.loss_weight or ("uniform" if args.prediction == "edm" else "min-snr"),
                        seed=args.seed, bf16=bf16, device=args.device)
    if args.resume:
        recipe = resumed_recipe(out, recipe, getattr(args, "argv", []))
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / DEMO_FILE, {k: getattr(recipe, k) for k in FIXED})
    result = train_demo(out, recipe, minutes=minutes, steps=args.steps, resume=args.resume)
    if result.interrupted:
        say(f"trilemma: interrupted; continue with: trilemma demo --out {out} --resume")
        return 130
    train_s = time.perf_counter() - t0
    run_ = load_run(out, device=args.device)
    written = []
    for options, n, name in ((SampleOptions(sampler="ddpm"), args.ddpm_n, "ddpm_1000"),
                             (SampleOptions(sampler="ddim", steps=50), args.ddim_n, "ddim_50"),
                             (SampleOptions(sampler="ddim", steps=50, eta=1.0), args.ddim_n, "ddim_50_eta1")):
        s0 = time.perf_counter()
        images = run_.generate(n, seed=args.seed, options=options)
        path = out / "samples" / f"{name}.png"
        save_grid(images, path)
        written.append(path)
        eta = f", η={options.eta:g}" if options.sampler == "ddim" else ""
        say(f"trilemma: {run_.describe(options)}{eta}: {n} images in "
            f"{time.perf_counter() - s0:.0f} s -> {path}")
    total = time.perf_counter() - t0
    phases = ", ".join(f"{name} {p['steps']} steps in {p['minutes']:.1f} min"
                       for name, p in describe_budget(out).items())
    say(f"trilemma: demo done in {total / 60:.1f} min (training {train_s / 60:.1f} min: {phases}; "
        f"{'bf16' if bf16 else 'fp32'}, final loss {result.last_loss:.4f})")
    say(f"trilemma: run folder {out}: model.safetensors, ema.safetensors, config.json, loss.png, "
        + ", ".join(str(p.relative_to(out)) for p in written))
    print(out)
    return 0
