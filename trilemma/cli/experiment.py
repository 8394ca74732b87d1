"""``trilemma experiment NAME``: the lecture's claims, each reproduced by one command.

Each experiment registers a subcommand through a function in :data:`EXPERIMENTS`.
"""

from __future__ import annotations

import importlib

from trilemma.cli.common import Parser, positive_float, positive_int, seed_int, subparser


def _lazy(module: str):
    def run(args) -> int:
        from trilemma.utils.outputs import output_dir

        output_dir(args.out, "--out")                  # a file, "", an unwritable place: refused before any work
        return importlib.import_module(f"trilemma.experiments.{module}").main(args)
    return run


def add_gan_gradients(sub) -> None:
    p = subparser(sub, "gan-gradients", "Arjovsky & Bottou 2017: train a DCGAN, freeze G at E1 < E2 < E3 epochs, "
                  "train a fresh D and watch each generator cost's gradient norm (CSV + log-scale plots)")
    p.add_argument("--data", help="dataset name or image folder (default fashion-mnist)")
    p.add_argument("--out", required=True, help="folder for the DCGAN run, snapshots, CSV and plots")
    p.add_argument("--epochs", type=positive_float, nargs="+",
                   help="epochs at which G is frozen (default 1 3 10; the paper, on a GPU: 1 10 25)")
    p.add_argument("--d-iters", type=positive_int, help="steps of each fresh discriminator (default 4000)")
    p.add_argument("--measure-every", type=positive_int, help="D steps between measurements (default 20)")
    p.add_argument("--preset", choices=("tiny", "small", "base"), help="DCGAN size (default small)")
    p.add_argument("--batch-size", type=positive_int, help="minibatch size m (default 64)")
    p.add_argument("--fixed-n", type=positive_int, help="size of the fixed batch of noises (default 256)")
    p.add_argument("--d-lr", type=positive_float, help="Adam learning rate of the fresh discriminators "
                   "(default: the DCGAN's, 2e-4)")
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--device", help="auto (default), cpu, cuda …")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_lazy("gan_gradients"))


def add_vae_vs_gan(sub) -> None:
    p = subparser(sub, "vae-vs-gan", "train (or take) a VAE, a GAN and a DDPM; sample grids, sharpness "
                  "(variance of the Laplacian) and the trilemma metrics in one table")
    p.add_argument("--data", help="dataset name or image folder (default fashion-mnist)")
    p.add_argument("--out", required=True, help="folder for the runs, grids, report.md and results.json")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=positive_float, help="training minutes per model (default 8)")
    budget.add_argument("--steps", type=positive_int, help="or: training steps per model")
    p.add_argument("--vae", metavar="RUN", help="take this VAE run instead of training one")
    p.add_argument("--gan", metavar="RUN", help="take this GAN run instead of training one")
    p.add_argument("--ddpm", metavar="RUN", help="take this DDPM run instead of training one")
    p.add_argument("--preset", choices=("tiny", "small", "base"), help="size of the models trained here "
                   "(default small)")
    p.add_argument("--n", type=positive_int, help="samples per model for the trilemma metrics (default 1000)")
    p.add_argument("--sharpness-n", type=positive_int, help="samples per model for the sharpness (default 250)")
    p.add_argument("--ddim-steps", type=positive_int, help="DDIM steps for the DDPM (default 50)")
    p.add_argument("--batch-size", type=positive_int, help="sampling batch size (default 250)")
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--device", help="auto (default), cpu, cuda …")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_lazy("vae_vs_gan"))


def add_latent_vs_pixel(sub) -> None:
    p = subparser(sub, "latent-vs-pixel", "latent vs pixel DDPM under the same wall-clock budget (autoencoder "
                  "included): training and sampling speed, FID/KID/coverage; the autoencoder factor sweep")
    p.add_argument("--data", help="dataset name or image folder (default fashion-mnist)")
    p.add_argument("--out", required=True, help="folder for the runs, report.md, results.json and grids")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=positive_float, help="wall-clock training minutes per arm (default 15)")
    budget.add_argument("--steps", type=positive_int, help="or: diffusion steps per arm (with --ae-steps)")
    p.add_argument("--ae-minutes", type=positive_float, help="the autoencoder's share of the latent arm's minutes "
                   "(default a third)")
    p.add_argument("--ae-steps", type=positive_int, help="autoencoder steps (with --steps)")
    p.add_argument("--preset", choices=("tiny", "small", "base"), help="U-Net and autoencoder size (default small)")
    p.add_argument("--factor", type=int, choices=(2, 4, 8), help="the latent arm's downsampling factor (default 4)")
    p.add_argument("--latent-channels", type=positive_int, help="latent channels (default 4)")
    p.add_argument("--sweep-factors", type=int, nargs="+", choices=(2, 4, 8),
                   help="autoencoder factors to train and compare (default 2 4)")
    p.add_argument("--n", type=positive_int, help="samples per model for the metrics (default 2000)")
    p.add_argument("--recon-n", type=positive_int, help="test images reconstructed per autoencoder (default all)")
    p.add_argument("--ddim-steps", type=positive_int, help="DDIM steps (default 50)")
    p.add_argument("--batch-size", type=positive_int, help="sampling batch size (default 250)")
    p.add_argument("--speed-sizes", type=positive_int, nargs="*",
                   help="image sizes of the speed sweep (default 28 32 64; none to skip)")
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--device", help="auto (default), cpu, cuda …")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_lazy("latent_vs_pixel"))


def add_trilemma(sub) -> None:
    p = subparser(sub, "trilemma", "VAE, GAN, DDPM, latent DDPM, DDGAN and latent DDGAN under the same wall-clock "
                  "budget: FID, precision, recall, coverage, NFE and images/s in one table and one quality-vs-speed plot")
    p.add_argument("--data", help="dataset name or image folder (default fashion-mnist)")
    p.add_argument("--out", required=True, help="folder for the runs, trilemma.md, results.json and trilemma.png")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=positive_float, help="wall-clock training minutes per model (default 8; "
                        "the latent arm's autoencoder gets a third of them)")
    budget.add_argument("--steps", type=positive_int, help="or: training steps per network")
    p.add_argument("--preset", choices=("tiny", "small", "base"), help="size of every model (default small)")
    p.add_argument("--n", type=positive_int, help="samples per model for the metrics (default 1000)")
    p.add_argument("--repeats", type=positive_int, metavar="K",
                   help="score K sets of --n samples per model (sampling seeds --seed … --seed + K − 1) and report "
                        "mean ± sd (default 1)")
    p.add_argument("--ddim-steps", type=positive_int, help="DDIM steps for the DDPMs (default 50)")
    p.add_argument("--batch-size", type=positive_int, help="sampling batch size (default 250)")
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--device", help="auto (default), cpu, cuda …")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_lazy("trilemma"))

def add_steps(sub) -> None:
    from trilemma.diffusion.samplers import SOLVER_SPACINGS

    p = subparser(sub, "steps", "FID, KID, precision, recall, coverage and images/s of every sampler at every NFE "
                  "budget, against DDPM on all T steps (table, JSON, FID-vs-NFE plot; cells cached)")
    p.add_argument("run", metavar="RUN", help="a diffusion run folder (ddpm, ldm or t2i)")
    p.add_argument("--out", required=True, help="folder for steps.md, steps.json, steps.png and cells/")
    p.add_argument("--nfe", help="comma-separated network-evaluation budgets (default 4,6,8,10,15,20,50; "
                   "heun uses 2⌊(NFE+1)/2⌋−1 of them)")
    p.add_argument("--samplers", help="comma-separated samplers (default ddim,dpmpp-2m,dpmpp-2m-sde,unipc,heun,euler)")
    p.add_argument("--n", type=positive_int, help="samples per cell for the metrics (default 2000)")
    p.add_argument("--spacing", choices=SOLVER_SPACINGS,
                   help="time steps of every sampler (default: each sampler's own, for the solvers karras from "
                        "8 NFE and trailing below; ddim stays on whole steps)")
    p.add_argument("--no-reference", action="store_true", help="skip the DDPM reference on all T steps")
    p.add_argument("--batch-size", type=positive_int, help="sampling batch size (default 250)")
    p.add_argument("--seed", type=seed_int, help="seed of every cell (default 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda …")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(func=_lazy("steps"))


# Functions `add(subparsers)`, one per experiment (gan-gradients, vae-vs-gan, latent-vs-pixel, …).
EXPERIMENTS: list = [add_gan_gradients, add_vae_vs_gan, add_latent_vs_pixel, add_trilemma, add_steps]


def register(sub) -> None:
    p = subparser(sub, "experiment", "reproduce an experiment from the lecture, with plots and a table")
    names = p.add_subparsers(dest="experiment", required=True, metavar="NAME", parser_class=Parser)
    for add in EXPERIMENTS:
        add(names)


