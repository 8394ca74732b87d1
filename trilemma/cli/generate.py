"""``trilemma generate RUN "PROMPT"``: text-to-image from a t2i run, with classifier-free guidance.

    trilemma generate runs/t2i "a red circle left of a blue square" --n 8 --guidance 4 --steps 50 --seed 0 \\
        [--negative "a green triangle"] --out x.png
"""

from __future__ import annotations

from pathlib import Path

from trilemma.cli.common import batch_size_int, positive_int, say, seed_int, subparser


def register(sub) -> None:
    from trilemma.cli.sample import add_sampler_args

    p = subparser(sub, "generate", "draw images for a text prompt from a text-to-image (t2i) run")
    p.add_argument("run", help="run folder of `trilemma train t2i`")
    p.add_argument("prompt", help='the prompt, e.g. "a red circle to the left of a blue square"')
    p.add_argument("--negative", default=None, help="negative prompt: replaces the empty prompt ∅ in guidance")
    p.add_argument("--n", type=positive_int, default=8, help="number of images")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--batch-size", type=batch_size_int, default=64)
    p.add_argument("--out", default=None, help="PNG grid to write (default RUN/samples/generate.png)")
    p.add_argument("--npz", default=None, help="also write the images as uint8 N×H×W×C under key 'images'")
    p.add_argument("--quiet", action="store_true")
    add_sampler_args(p)
    p.set_defaults(guidance=4.0, func=run)


def load_t2i_run(path: str, device: str | None, check_only: bool = False):
    """A t2i run, or a one-line error naming the run's actual kind (``check_only``: check, load nothing)."""
    from trilemma.errors import RunError
    from trilemma.registry import load_run
    from trilemma.run import read_run_config

    kind = read_run_config(path)["kind"]
    if kind != "t2i":
        raise RunError(f"{path} is a {kind!r} run; this command needs a text-to-image run "
                       f"(train one with `trilemma train t2i`)")
    return None if check_only else load_run(path, device=device)


def sampling(args, prompt: str | None):
    import dataclasses

    from trilemma.cli.sample import sample_options
    from trilemma.errors import TrilemmaError

    if args.label is not None:
        raise TrilemmaError("--label: a text-to-image run takes a prompt, not a class label")
    from trilemma.cli.common import guidance_float

    from trilemma.diffusion.samplers import check_sampling

    guidance_float.check(args.guidance, "--guidance")                  # the parser's rule (finite, >= 0)
    options = dataclasses.replace(sample_options(args), prompt=prompt, negative=args.negative)
    check_sampling(options.sampler, options.steps, options.eta, options.variance, options.spacing)
    return options


def check_outputs(args, default: Path) -> tuple[Path, Path | None]:
    """``--out`` (or ``default``) and ``--npz``, checked before any work: (PNG path, .npz path or None)."""
    from trilemma.utils.outputs import output_file

    out = output_file(args.out if args.out is not None else default, "--out")
    npz = output_file(args.npz, "--npz", suffixes=(".npz",)) if args.npz is not None else None
    return out, npz


def write_outputs(images, out: Path, npz: str | None, nrow: int | None = None) -> None:
    import numpy as np

    from trilemma.utils.io import atomic_path
    from trilemma.viz import save_grid

    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, out, nrow=nrow)
    if npz:
        npz = Path(npz)
        npz.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(npz) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, images=images.permute(0, 2, 3, 1).numpy())
        say(f"trilemma: images saved as uint8 N×H×W×C in {npz}")


def run(args) -> int:
    import time

    from trilemma.errors import TrilemmaError

    if not args.prompt.strip():
        raise TrilemmaError("PROMPT: empty; give a prompt (an empty prompt is the unconditional model: use "
                            "`trilemma sample`)")
    options = sampling(args, args.prompt)
    out, _ = check_outputs(args, Path(args.run) / "samples" / "generate.png")
    load_t2i_run(args.run, None, check_only=True)
    r = load_t2i_run(args.run, args.device)
    t0 = time.perf_counter()
    images = r.generate(args.n, seed=args.seed, batch_size=args.batch_size, options=options, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    write_outputs(images, out, args.npz)
    say(f"trilemma: {args.n} images for {args.prompt!r} ({r.describe(options)}, {r.nfe(options)} network "
        f"evaluations each) in {seconds:.1f} s -> {out}")
    return 0
