"""``trilemma edit RUN IMAGE "PROMPT"``: alter an image with a prompt (SDEdit, docs/methods.md §8).

    trilemma edit runs/t2i input.png "a blue square" --strength 0.6 --out y.png

The image is converted and centre-cropped to the run's size, noised to t₀ = strength · T with
the forward process, and denoised with the prompt. strength 0 returns the input; 1 ignores it.
"""

from __future__ import annotations

from pathlib import Path

from trilemma.cli.common import positive_int, say, seed_int, subparser, unit_float


def register(sub) -> None:
    from trilemma.cli.sample import add_sampler_args

    p = subparser(sub, "edit", "alter an image with a text prompt (SDEdit) using a text-to-image run")
    p.add_argument("run", help="run folder of `trilemma train t2i`")
    p.add_argument("image", help="input image (PNG, JPEG, WebP); resized and centre-cropped to the run's size")
    p.add_argument("prompt", help="what the image should become")
    p.add_argument("--strength", type=unit_float, default=0.6,
                   help="noise level t₀ = strength·T: 0 keeps the input, 1 ignores it")
    p.add_argument("--negative", default=None, help="negative prompt: replaces ∅ in guidance")
    p.add_argument("--n", type=positive_int, default=1, help="number of variations (one noise draw each)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", default=None, help="PNG to write (default RUN/samples/edit.png)")
    p.add_argument("--npz", default=None, help="also write the images as uint8 N×H×W×C under key 'images'")
    p.add_argument("--quiet", action="store_true")
    add_sampler_args(p)
    p.set_defaults(guidance=4.0, func=run)


def run(args) -> int:
    import time

    from tqdm.auto import tqdm

    from trilemma.cli.generate import check_outputs, load_t2i_run, sampling, write_outputs
    from trilemma.data import to_uint8
    from trilemma.errors import TrilemmaError
    from trilemma.t2i.edit import edit_images, edit_plan, load_image

    if not args.prompt.strip():
        raise TrilemmaError("PROMPT: empty; give a prompt describing the edited image")
    options = sampling(args, args.prompt)
    out, _ = check_outputs(args, Path(args.run) / "samples" / "edit.png")
    load_t2i_run(args.run, None, check_only=True)
    r = load_t2i_run(args.run, args.device)
    c, size, _ = r.image_shape
    from trilemma.run import sampling_bytes
    from trilemma.utils.validate import check_memory

    check_memory(sampling_bytes(args.n, args.n, r.image_shape), f"editing {args.n} copies of one image", "--n")
    image = load_image(args.image, size, c)                                      # (1, C, H, W) in [-1, 1]
    plan = edit_plan(r.schedule, args.strength, options.sampler, options.steps, options.spacing)
    steps = plan.points
    t0 = time.perf_counter()
    with tqdm(total=steps, desc=f"editing ({steps} {options.sampler} steps from t0={plan.t0})",
              unit="step", disable=args.quiet or steps == 0, leave=False) as bar:
        edited = edit_images(r, image.repeat(args.n, 1, 1, 1), args.prompt, args.strength, options,
                             r.generator(args.seed), callback=lambda *_: bar.update(1))
    seconds = time.perf_counter() - t0
    images = to_uint8(edited.float().cpu())
    write_outputs(images, out, args.npz, nrow=None)
    say(f"trilemma: edited {args.image} towards {args.prompt!r} (strength {args.strength:g}, {options.sampler} "
        f"{steps} steps, {plan.nfe * (1 if options.guidance == 1.0 else 2)} network evaluations each, guidance "
        f"w={options.guidance:g}) in {seconds:.1f} s -> {out}")               # ×2 with guidance, as generate counts
    return 0
