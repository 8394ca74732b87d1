"""``trilemma show WHAT``: pictures that explain the methods (schedules, forward process, trajectories)."""

from __future__ import annotations

from pathlib import Path

from trilemma.cli.common import Parser, int_in, say, seed_int, subparser

# Upper bounds of the pictures' sizes (a figure is drawn in memory; beyond these it is unreadable anyway).
MAX_T = 100_000            # as `trilemma train --T`
MAX_ROWS = 64              # images / pairs: rows of a figure
MAX_COLUMNS = 100          # steps shown along a row
T_type = int_in(2, MAX_T)
rows_int = int_in(1, MAX_ROWS)
columns_int = int_in(1, MAX_COLUMNS)


def _check_out(args) -> None:
    """``--out`` must be a writable .png: checked before any work."""
    from trilemma.utils.outputs import output_file

    args.out = str(output_file(args.out, "--out"))


# ------------------------------------------------------------------------------------ schedules
def _register_schedules(sub) -> None:
    p = subparser(sub, "schedules", "plot ᾱ_t, β_t and log-SNR of the four noise schedules")
    p.add_argument("--out", default="schedules.png", help="PNG to write")
    p.add_argument("--T", type=T_type, default=1000, help=f"diffusion steps (2 … {MAX_T})")
    p.set_defaults(func=_schedules)


def _schedules(args) -> int:
    import numpy as np

    from trilemma.diffusion.schedule import SCHEDULES, make_schedule
    from trilemma.viz import _pyplot, save_figure

    _check_out(args)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name in SCHEDULES:
        s = make_schedule(name, T=args.T)
        t = np.arange(1, s.T + 1)
        axes[0].plot(t, s.alpha_bar[1:], label=name)
        axes[1].plot(t, s.betas[1:], label=name)
        axes[2].plot(t, s.log_snr[1:], label=name)
    for ax, title in zip(axes, ["ᾱ_t (signal kept)", "β_t (noise added per step)", "log SNR = log ᾱ/(1−ᾱ)"]):
        ax.set_title(title)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[1].set_yscale("log")
    out = save_figure(fig, args.out)
    say(f"trilemma: wrote {out}")
    return 0


# ------------------------------------------------------------------------------------ forward
def _register_forward(sub) -> None:
    p = subparser(sub, "forward", "x_0 … x_T of the forward process q(x_t|x_0), one row per schedule")
    p.add_argument("--data", default=None, help="dataset name or image folder (default fashion-mnist; with "
                   "--autoencoder, the autoencoder's)")
    p.add_argument("--out", default="forward.png", help="PNG to write")
    p.add_argument("--n", type=rows_int, default=3, help=f"number of images (at most {MAX_ROWS})")
    p.add_argument("--columns", type=columns_int, default=11, help=f"steps shown from t=0 to t=T (at most {MAX_COLUMNS})")
    p.add_argument("--T", type=T_type, default=1000, help=f"diffusion steps (2 … {MAX_T})")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--autoencoder", metavar="RUN_AE", help="noise the scaled latents z = s·μ(x) of this "
                   "autoencoder run (or an ldm run's) and decode each z_t; the data is the autoencoder's")
    p.set_defaults(func=_forward)


def _forward(args) -> int:
    import numpy as np
    import torch

    from trilemma.data import load_dataset
    from trilemma.diffusion.schedule import SCHEDULES, make_schedule
    from trilemma.errors import TrilemmaError
    from trilemma.data.config import data_key
    from trilemma.viz import _pyplot, as_uint8_nhwc, grid_array, save_figure

    _check_out(args)
    encode, decode, space = (lambda x: x), (lambda x: x), ""
    data = args.data
    if args.autoencoder:                           # latent space: q(z_t | z_0) on z_0 = s·μ(x), shown as D(z_t / s)
        from trilemma.autoencoder import load_autoencoder

        ae = load_autoencoder(args.autoencoder, device="cpu")
        if data is not None and data_key(data) != ae.data_config.name:
            raise TrilemmaError(f"--data {data}: the autoencoder {args.autoencoder} was trained on "
                                f"{ae.data_config.name}; leave out --data to use its dataset")
        encode, decode, data = ae.encode, (lambda z: ae.decode(z).cpu()), ae.data_config
        space = f" in the latent space of {Path(args.autoencoder).name} (decoded)"
    dataset = load_dataset(data or "fashion-mnist", "test")
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(dataset), generator=g)[:args.n]
    x_0, _ = dataset.batch(idx)                                                   # (n, C, H, W)
    x_0 = encode(x_0)                                                             # latents: (n, c, h, w)
    eps = torch.randn(x_0.shape, generator=g)                                     # one ε per image
    ts = np.unique(np.round(np.linspace(0, args.T, args.columns)).astype(int))
    plt = _pyplot()
    fig, axes = plt.subplots(len(SCHEDULES), 1, figsize=(1.1 * len(ts), 1.2 * args.n * len(SCHEDULES) + 0.6))
    for ax, name in zip(axes, SCHEDULES):
        s = make_schedule(name, T=args.T)
        frames = [decode(s.q_sample(x_0, torch.full((args.n,), int(t)), eps)) for t in ts]   # each (n, C, H, W)
        grid = torch.stack(frames, 1).flatten(0, 1)                               # row per image
        arr = grid_array(as_uint8_nhwc(grid.clamp(-1, 1)), nrow=len(ts))
        ax.imshow(arr.squeeze(-1) if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=11)
        h = arr.shape[1] / len(ts)
        ax.set_xticks([(i + 0.5) * h for i in range(len(ts))], [f"t={t}" for t in ts], fontsize=8)
        ax.set_yticks([])
    fig.suptitle(f"forward process q(x_t | x_0) on {dataset.name}{space}, same ε for every schedule")
    out = save_figure(fig, args.out)
    say(f"trilemma: wrote {out}")
    return 0


# ------------------------------------------------------------------------------------ trajectory
def _register_trajectory(sub) -> None:
    from trilemma.cli.sample import add_sampler_args

    p = subparser(sub, "trajectory", "x_t and the prediction x̂₀ along the reverse process of a run")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", default="trajectory.png", help="PNG to write")
    p.add_argument("--n", type=rows_int, default=4, help=f"number of images (at most {MAX_ROWS})")
    p.add_argument("--columns", type=columns_int, default=10, help=f"steps shown (at most {MAX_COLUMNS})")
    p.add_argument("--seed", type=seed_int, default=0)
    add_sampler_args(p)
    p.set_defaults(func=_trajectory)


def _trajectory(args) -> int:
    from trilemma.cli.sample import sample_options
    from trilemma.errors import TrilemmaError
    from trilemma.registry import load_run
    from trilemma.run import read_run_config
    from trilemma.viz import save_trajectory

    read_run_config(args.run)
    _check_out(args)
    run = load_run(args.run, device=args.device)
    if not hasattr(run, "schedule"):
        raise TrilemmaError(f"{args.run}: a {run.kind} run has no reverse process to show")
    options = sample_options(args)
    _, traj = run.sample_batch(args.n, run.generator(args.seed), options, return_trajectory=True)
    if len(traj["x_t"]) < args.columns:
        say(f"note: --columns {args.columns}: these sampling options pass through only {len(traj['x_t'])} states "
            f"x_t (noise to image); all are shown")
    out = save_trajectory(traj, lambda x: run.decode(x.to(run.device)),
                          f"reverse process of {Path(args.run).name}: {run.describe(options)}", args.out, args.columns)
    say(f"trilemma: wrote {out}")
    return 0


# ------------------------------------------------------------------------------------ interpolation
def _register_interpolation(sub) -> None:
    p = subparser(sub, "interpolation", "decode straight lines between the codes of test images (VAE) "
                  "or great circles between noises (GAN), one row per pair")
    p.add_argument("run", help="run folder (vae or gan)")
    p.add_argument("--out", default="interpolation.png", help="PNG to write")
    p.add_argument("--pairs", type=rows_int, default=6, help=f"rows: pairs of end points (at most {MAX_ROWS})")
    p.add_argument("--steps", type=columns_int, default=10,
                   help=f"images per row, ends included (at most {MAX_COLUMNS})")
    p.add_argument("--seed", type=seed_int, default=0, help="which test images (VAE) or noises (GAN)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_interpolation)


def _interpolation(args) -> int:
    import torch

    from trilemma.data import load_dataset
    from trilemma.errors import TrilemmaError
    from trilemma.registry import load_run
    from trilemma.run import read_run_config
    from trilemma.viz import save_grid

    read_run_config(args.run)
    _check_out(args)
    run = load_run(args.run, device=args.device)
    g = torch.Generator().manual_seed(args.seed)
    if run.kind == "vae":                    # rows: x_a | decoded path between μ(x_a) and μ(x_b) | x_b
        test = load_dataset(run.data_config, "test")
        x, _ = test.batch(torch.randperm(len(test), generator=g)[:2 * args.pairs])
        if len(x) < 2 * args.pairs:
            raise TrilemmaError(f"--pairs {args.pairs}: the test split has only {len(x)} images")
        rows = [torch.cat([x[2 * i:2 * i + 1].to(run.device), run.interpolate(x[2 * i], x[2 * i + 1], args.steps),
                           x[2 * i + 1:2 * i + 2].to(run.device)]) for i in range(args.pairs)]
        ncol, what = args.steps + 2, "test image | decoded straight line between their codes μ | test image"
    elif run.kind == "gan":                  # rows: G along the great circle between two noises
        z = torch.randn((2 * args.pairs, run.model_config.z_dim), generator=g)
        rows = [run.interpolate(z[2 * i], z[2 * i + 1], args.steps) for i in range(args.pairs)]
        ncol, what = args.steps, "G(z) along great circles between two noises"
    else:
        raise TrilemmaError(f"{args.run}: a {run.kind} run has no latent code to interpolate in (vae or gan runs)")
    out = save_grid(torch.cat(rows), args.out, nrow=ncol)
    say(f"trilemma: wrote {out} ({args.pairs} rows: {what})")
    return 0


# ------------------------------------------------------------------------------------ attention
def _register_attention(sub) -> None:
    from trilemma.cli.sample import add_sampler_args

    p = subparser(sub, "attention", "cross-attention maps of a text-to-image run: where each prompt token "
                  "is looked at, along the reverse process")
    p.add_argument("run", help="t2i run folder")
    p.add_argument("prompt", help='the prompt, e.g. "a red circle to the left of a blue square"')
    p.add_argument("--out", default="attention.png", help="PNG to write")
    p.add_argument("--rows", type=int_in(1, 20), default=5, help="network calls shown, from noise to image (1 … 20)")
    p.add_argument("--layer", default="all", metavar="all|RES",
                   help="average all cross-attention layers, or only those at this U-Net level size (e.g. 8)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--negative", default=None, help="negative prompt: replaces the empty prompt ∅ in guidance")
    add_sampler_args(p)
    p.set_defaults(guidance=4.0, func=_attention)


def _attention(args) -> int:
    from trilemma.cli.generate import load_t2i_run, sampling
    from trilemma.errors import TrilemmaError
    from trilemma.t2i.attention import prompt_attention, save_attention_figure

    if not args.prompt.strip():
        raise TrilemmaError("PROMPT: empty; give a prompt whose tokens to show")
    layer = None
    if args.layer != "all":
        if not args.layer.isdigit() or int(args.layer) < 1:
            raise TrilemmaError(f"--layer: expected all or a level size like 8, got {args.layer!r}")
        layer = int(args.layer)
    options = sampling(args, args.prompt)
    load_t2i_run(args.run, None, check_only=True)
    _check_out(args)
    run = load_t2i_run(args.run, args.device)
    att = prompt_attention(run, args.prompt, options, seed=args.seed, rows=args.rows, resolution=layer)
    title = (f"cross-attention of {Path(args.run).name}: {run.describe(options)}, "     # describe names the prompt
             f"mean over heads and {'all layers' if layer is None else f'the {layer}×{layer} layers'}")
    out = save_attention_figure(att, args.out, title)
    if len(att.t) < args.rows:
        say(f"note: --rows {args.rows}: these sampling options make only {len(att.t)} network calls; all are shown")
    say(f"trilemma: wrote {out} ({len(att.t)} steps × {len(att.labels)} tokens: {' '.join(att.labels)})")
    return 0


# Each `trilemma show <what>` registers here.
SHOW_COMMANDS = [_register_schedules, _register_forward, _register_trajectory, _register_interpolation,
                 _register_attention]


def register(sub) -> None:
    p = subparser(sub, "show", "pictures of the methods: schedules, forward process, trajectories")
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=Parser)
    for add in SHOW_COMMANDS:
        add(what)
