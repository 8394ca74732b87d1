"""``trilemma eval``: score a run, or images from anywhere, on quality, coverage and speed.

    trilemma eval RUN [--n 10000] [--sampler ddim --steps 50] [--repeats K] [--json out.json]
    trilemma eval --samples FILE.npz|FOLDER --data fashion-mnist [--json out.json]

A run is sampled (with a progress bar), timed, and scored against its dataset's
test split; its result is also saved as ``RUN/eval.json`` for ``trilemma
compare``. ``--samples`` scores images made by anything (another library's
samples included) the same way. ``--repeats K`` scores K sample sets of a run
(sampling seeds ``--seed`` … ``--seed + K − 1``) and reports each metric's mean
± sd. The summary goes to stdout; the full result (docs/metrics.md lists every
key) to ``--json``.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np

from trilemma.cli.common import (
    batch_size_int,
    format_value,
    positive_int,
    say,
    seed_int,
    subparser,
)
from trilemma.cli.sample import add_sampler_args, sample_options, sampling_given
from trilemma.errors import TrilemmaError
from trilemma.metrics.evaluate import EVAL_FILE, MIN_IMAGES


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(sub, "eval", "score a run or a set of images: quality, coverage, memorisation, speed")
    p.add_argument("run", nargs="?", metavar="RUN", help="run folder to sample and score")
    p.add_argument("--samples", metavar="FILE_OR_FOLDER",
                   help="score these images instead of a run: an .npz (key 'images' or its first "
                        "array; uint8 N,H,W,C or N,C,H,W) or a folder of images")
    p.add_argument("--data", metavar="DATASET",
                   help="dataset to score --samples against: fashion-mnist, mnist-5k, digits or a folder")
    p.add_argument("--n", type=positive_int, default=None,
                   help="number of images to score (runs: default 10000; --samples: default all)")
    p.add_argument("--prompts", metavar="BENCHMARK", default=None,
                   help="text-to-image runs: prompt accuracy instead, at w = 0, 1, 3, 5, 7 (and --guidance): "
                        "shapes (per category; --n prompts, default 200), fashion-mnist-captions or "
                        "mnist-5k-captions (class agreement, seen vs held-out templates)")
    add_sampler_args(p)
    p.add_argument("--seed", type=seed_int, default=0, help="sampling seed")
    p.add_argument("--repeats", type=positive_int, default=1, metavar="K",
                   help="score K independent sets of --n samples (sampling seeds --seed, --seed + 1, …) and "
                        "report each metric's mean ± sd over them: one FID at a few thousand samples carries a "
                        "sampling noise as large as many differences between models (docs/metrics.md)")
    p.add_argument("--batch-size", type=batch_size_int, default=256,
                   help="sampling batch size (images/s is measured on these batches)")
    p.add_argument("--json", metavar="FILE", help="write the full result here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from trilemma.metrics import (
        DEFAULT_N,
        as_image_batch,
        evaluate_images,
        evaluate_run,
    )
    from trilemma.utils.io import write_json
    from trilemma.utils.outputs import output_file
    from trilemma.data import load_dataset
    from trilemma.utils.paths import cache_dir

    if args.prompts is not None:
        if args.repeats != 1:
            raise TrilemmaError("--repeats applies to a run's image metrics, not to --prompts")
        return run_prompt_eval(args)
    if args.run is None and args.samples is None:
        raise TrilemmaError("give either a RUN folder or --samples FILE_OR_FOLDER --data DATASET (a run is "
                            "sampled and scored; --samples scores images you have)")
    if args.run is not None and args.samples is not None:
        raise TrilemmaError("give either a RUN folder or --samples FILE_OR_FOLDER, not both")
    if args.json is not None:
        output_file(args.json, "--json", suffixes=(".json",))
    if args.n is not None and args.n < MIN_IMAGES:
        raise TrilemmaError(f"--n: the metrics need at least {MIN_IMAGES} images, got {args.n}")
    cache_dir("stats")                                # the statistics cache must be usable: checked before sampling
    if args.samples is not None:
        if args.data is None:
            raise TrilemmaError("--samples needs --data DATASET (e.g. --data fashion-mnist)")
        given = sampling_given(args)
        if args.repeats != 1:
            given.append("--repeats")
        if given:
            raise TrilemmaError(f"sampling options ({', '.join(given)}) apply to a RUN, not to --samples")
        check_samples_path(args.samples)
        data_config = data_config_for(args.data)
        shape = (data_config.channels, data_config.image_size, data_config.image_size)
        images = as_image_batch(load_samples(args.samples, data_config), shape,
                                what=f"--samples {args.samples}")
        if args.n is not None:
            if args.n > len(images):
                raise TrilemmaError(f"--n {args.n}: {args.samples} holds only {len(images)} images")
            images = images[:args.n]
        if len(images) != DEFAULT_N:
            say(f"note: scoring {len(images)} images; FID and KID are compared fairly only at equal n "
                f"(the default is {DEFAULT_N})")
        result = evaluate_images(images, data_config, progress=not args.quiet, log=say,
                                 source={"kind": "samples", "path": str(Path(args.samples).resolve())})
    else:
        if args.data is not None:
            raise TrilemmaError("--data applies to --samples; a run is scored against its own dataset")
        from trilemma.run import read_run_config

        read_run_config(args.run)
        output_file(Path(args.run) / EVAL_FILE, "RUN", suffixes=None, run_file=True)   # written after sampling: check now
        run = load_run_for_eval(args.run, args.device)
        options = sample_options(args)
        run.check_options(options)
        load_dataset(run.data_config, "test")         # the reference split exists and is not empty: before sampling
        n = args.n or DEFAULT_N
        check_sampling_memory(run, n, args.batch_size)
        sets = f"{args.repeats} sets of " if args.repeats > 1 else ""
        say(f"sampling {sets}{n} images from {args.run} ({run.kind}, {run.nfe(options)} network "
            f"evaluations per image)")
        result = evaluate_run(run, n, options, seed=args.seed, repeats=args.repeats, batch_size=args.batch_size,
                              progress=not args.quiet, log=say)
        write_json(Path(run.path) / EVAL_FILE, result)
    print(format_summary(result))
    if args.json:
        write_json(args.json, result)
        say(f"wrote {args.json}")
    return 0


def run_prompt_eval(args: argparse.Namespace) -> int:
    """``--prompts BENCHMARK``: how well a text-to-image run obeys prompts (:func:`trilemma.t2i.evaluate_prompts`)."""
    from trilemma.cli.generate import load_t2i_run
    from trilemma.t2i import evaluate_prompts, format_prompt_table
    from trilemma.t2i.evaluate import DEFAULT_GUIDANCES
    from trilemma.utils.io import write_json
    from trilemma.utils.outputs import output_file

    if args.run is None or args.samples is not None or args.data is not None:
        raise TrilemmaError("--prompts scores a text-to-image RUN folder (not --samples or --data)")
    if args.json is not None:
        output_file(args.json, "--json", suffixes=(".json",))
    load_t2i_run(args.run, None, check_only=True)
    run = load_t2i_run(args.run, args.device)
    guidances = tuple(sorted({*DEFAULT_GUIDANCES, args.guidance}))
    result = evaluate_prompts(run, args.prompts, n=args.n, guidances=guidances, options=sample_options(args),
                              seed=args.seed, batch_size=args.batch_size, progress=not args.quiet, log=say)
    print(format_prompt_table(result))
    if args.json:
        write_json(args.json, result)
        say(f"wrote {args.json}")
    return 0


def check_sampling_memory(run, n: int, batch_size: int) -> None:
    """Refuse ``--n`` images that would not fit in memory, before sampling (images and features)."""
    from trilemma.run import sampling_bytes
    from trilemma.utils.validate import check_memory

    c, h, w = run.image_shape
    check_memory(2 * sampling_bytes(n, min(batch_size, n), run.image_shape) + n * c * h * w * 4,
                 f"sampling and scoring {n} images of {c}x{h}x{w}", "--n")


def data_config_for(name: str):
    from trilemma.data import DataConfig

    return DataConfig(name).resolved()


def load_run_for_eval(path: str, device: str | None):
    from trilemma.registry import load_run

    return load_run(path, device=device)


def check_samples_path(path: str) -> None:
    """``--samples`` is a folder or an .npz file (checked before the dataset and feature network load)."""
    p = Path(path)
    if p.is_dir():
        return
    if not p.exists():
        raise TrilemmaError(f"--samples {path}: no such file or folder")
    if not p.is_file():
        raise TrilemmaError(f"--samples {path}: not a regular file or a folder (expected an .npz file or a "
                            f"folder of images)")
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise TrilemmaError(f"--samples {path}: cannot read ({e.strerror or e})") from None
    if magic.startswith(b"\x93NUMPY"):
        raise TrilemmaError(f"--samples {path}: a single .npy array; save the images as an .npz file "
                            f"(np.savez(FILE, images=ARRAY))")
    if not magic.startswith(b"PK"):
        raise TrilemmaError(f"--samples {path}: not a readable .npz file (expected an .npz file or a folder of "
                            f"images)")


def load_samples(path: str, data_config) -> np.ndarray:
    """uint8 images from an ``.npz`` file or a folder of images (see ``--samples``)."""
    p = Path(path)
    if p.is_dir():
        return load_sample_folder(p, data_config)
    check_samples_path(path)
    try:
        with np.load(p, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise TrilemmaError(f"--samples {path}: expected an .npz file, got a single .npy array")
            if not npz.files:
                raise TrilemmaError(f"--samples {path}: the .npz file holds no arrays")
            key = "images" if "images" in npz.files else npz.files[0]
            images = npz[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise TrilemmaError(f"--samples {path}: not a readable .npz file ({e})") from None
    if images.dtype != np.uint8:
        raise TrilemmaError(f"--samples {path}: array '{key}' has dtype {images.dtype}; expected uint8 "
                            f"pixels 0..255")
    return images


def load_sample_folder(folder: Path, data_config) -> np.ndarray:
    """Every image in ``folder`` (recursively), converted and sized like the dataset's images."""
    import dataclasses

    from trilemma.data import load_dataset
    from trilemma.errors import DataError

    config = dataclasses.replace(data_config, name=str(folder.resolve()), test_fraction=0.0, hflip=False)
    try:
        images = load_dataset(config, split="train").images.numpy()
    except DataError as e:
        raise TrilemmaError(f"--samples {folder}: {e}") from None
    note_converted(folder, data_config)
    return images


def note_converted(folder: Path, data_config) -> None:
    """Say when a samples folder's images were not at the dataset's size and channels (so were converted)."""
    from PIL import Image

    from trilemma.data.folder import list_images

    size, grey = data_config.image_size, data_config.channels == 1
    files = list_images(folder)
    other_size, other_mode, example = 0, 0, None
    for name in files:
        try:
            with Image.open(folder / name) as im:                      # the header only
                wrong_size, wrong_mode = im.size != (size, size), (im.mode in ("L", "I;16", "1")) != grey
        except (OSError, ValueError, Image.DecompressionBombError):
            continue                                                   # skipped by the loader, which warned
        other_size += wrong_size
        other_mode += wrong_mode
        if (wrong_size or wrong_mode) and example is None:
            example = f"{name}: {im.size[0]}×{im.size[1]} {im.mode}"
    if other_size or other_mode:
        say(f"note: --samples {folder}: {other_size} of {len(files)} images are not {size}×{size} and "
            f"{other_mode} not {'grey' if grey else 'colour'} (e.g. {example}); they were converted like a "
            f"dataset folder. FID is only fair for samples made at the dataset's size and channels")


# --- the summary ---------------------------------------------------------------------------------

fmt = format_value


def source_line(result: dict) -> str:
    src = result["source"]
    if src.get("kind") == "run":
        sampling = src.get("sampling") or {}
        how = ", ".join(f"{k}={v}" for k, v in sampling.items() if v is not None)
        seeds = (result.get("repeats") or {}).get("seeds")
        sets = f"{len(seeds)} sets of " if seeds else ""
        return (f"{sets}{result['n']} samples from run {src['path']} ({src['run_kind']}{'; ' + how if how else ''})"
                + (f"; sampling seeds {seeds[0]}–{seeds[-1]}, mean ± sd over the sets" if seeds else ""))
    return f"{result['n']} images from {src.get('path', src.get('kind'))}"


def format_summary(result: dict) -> str:
    """A readable table of one result (what ``trilemma eval`` prints)."""
    ref, fn = result["reference"], result["feature_net"]
    q, c, m, s = result["quality"], result["coverage"], result["memorisation"], result["speed"]
    acc = fn.get("test_accuracy")
    acc_text = "n/a" if acc is None else f"{100 * acc:.2f}%"
    acc_kind = "rotation accuracy" if fn["objective"] == "rotation" else "test accuracy"
    lines = [
        f"scored: {source_line(result)}",
        f"against: {ref['dataset']} {ref['split']} split ({ref['n']} images)",
        f"feature network: {fn['name']} ({fn['objective']}, {acc_kind} {acc_text})",
        "",
    ]
    from trilemma.metrics.evaluate import repeat_sd

    def value(section: str, key: str, digits: int = 3) -> str:
        """The metric, with ± its sd over the sampling seeds when several were scored."""
        text = fmt(result[section][key], digits)
        spread = repeat_sd(result, f"{section}.{key}")
        return text if spread is None else f"{text} ± {spread:.{digits}f}"

    kid = f"{q['kid_mean']:.3f} ± {q['kid_std']:.3f}" if q["kid_mean"] is not None else "n/a"
    if repeat_sd(result, "quality.kid_mean") is not None:   # then the spread over the sampling seeds is shown
        kid = value("quality", "kid_mean")
    score = (f"{q['classifier_score_mean']:.3f} ± {q['classifier_score_std']:.3f}"
             if q["classifier_score_mean"] is not None else "n/a")
    modes = (f"{c['modes_hit']} / {c['num_classes']} (share >= {c['modes_threshold']:.3f})"
             if c["modes_hit"] is not None else "n/a")
    rows = [
        ("quality", "FID (lower is better)", value("quality", "fid", 2)),
        ("", "KID (lower is better)", kid),
        ("", "precision (k=3)", value("quality", "precision")),
        ("", "density (k=5)", value("quality", "density")),
        ("", "classifier score", score),
        ("coverage", "recall (k=3)", value("coverage", "recall")),
        ("", "coverage (k=5)", value("coverage", "coverage")),
        ("", "modes hit", modes),
        ("", "class KL / JS / TV", f"{fmt(c['class_kl'], 4)} / {fmt(c['class_js'], 4)} / "
                                   f"{fmt(c['class_tv'], 4)}"),
        ("memorisation", "NN-to-train ratio", fmt(m["nn_ratio"])),
        ("", "copy fraction", fmt(m["copy_fraction"], 4)),
        ("", "exact copies", fmt(m["exact_copy_fraction"], 4)),
        ("speed", "NFE per image", fmt(s["nfe"])),
        ("", "images / s", fmt(s["images_per_s"], 1)),
        ("", "peak memory (MB)", f"{fmt(s['peak_memory_mb'], 1)}"
                                 + (f"  [{s['memory_measure']}]" if s["memory_measure"] else "")),
    ]
    width = max(len(r[1]) for r in rows)
    for section, name, text in rows:
        lines.append(f"{section:<13} {name:<{width}}  {text}")
    per_seed = ((result.get("repeats") or {}).get("values") or {}).get("quality.fid")
    if per_seed:
        lines.append("")
        lines.append(f"FID per sampling seed ({', '.join(str(k) for k in result['repeats']['seeds'])}): "
                     f"{', '.join(f'{v:.2f}' for v in per_seed)}")
    t = result["timing"]
    lines.append("")
    lines.append(f"time: {fmt(t['total_s'], 1)} s total (sampling {fmt(t['sample_s'], 1)} s, "
                 f"featurising {fmt(t['featurise_s'], 1)} s, metrics {fmt(t['metrics_s'], 1)} s)")
    return "\n".join(lines)
