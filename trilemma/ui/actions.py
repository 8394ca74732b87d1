"""What the page's buttons do, without Gradio: the CLI's code paths with the page's values.

Each function takes a loaded run (from :class:`~trilemma.ui.cache.RunCache`) and plain values, and
returns images or text; bad values raise :class:`~trilemma.errors.TrilemmaError` with the CLI's
message. The sampling options are built by the CLI's own functions (``trilemma.cli.sample.sample_options``,
``trilemma.cli.generate.sampling``) and images come from ``GeneratorRun.generate`` with the CLI's
default batch sizes, so the same seed gives the same images as ``trilemma sample`` / ``generate``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from trilemma.errors import TrilemmaError
from trilemma.run import GeneratorRun, SampleOptions

MAX_N = 256                       # images per request from the page
MAX_UPLOAD_BYTES = 10_000_000     # Edit: the largest upload read (the server also refuses bigger bodies)
SAMPLE_BATCH = 256                # = `trilemma sample --batch-size` default: same seed, same images
GENERATE_BATCH = 64               # = `trilemma generate --batch-size` default


@dataclass(frozen=True)
class Generated:
    images: torch.Tensor          # uint8 (n, C, H, W)
    seconds: float                # sampling time, excluding the model load
    nfe: int                      # network evaluations per image
    describe: str

    def summary(self, cached: bool) -> str:
        n = len(self.images)
        return (f"{n} image{'s' * (n != 1)} ({self.describe}, NFE {self.nfe} per image) in {self.seconds:.2f} s"
                f"{' — model from the cache' if cached else ' — model loaded for this request'}")


# ------------------------------------------------------------------------------------ checks
def count(n: Any, what: str = "n", top: int = MAX_N) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, (int, str)):
        raise TrilemmaError(f"{what}: expected a whole number, got {n!r}")
    try:
        value = int(n)
    except ValueError:
        raise TrilemmaError(f"{what}: expected a whole number, got {n!r}") from None
    if not 1 <= value <= top:
        raise TrilemmaError(f"{what}: must be in 1..{top}, got {value}")
    return value


def seed_of(seed: Any) -> int:
    try:
        value = int(seed)
    except (TypeError, ValueError):
        raise TrilemmaError(f"seed: expected a whole number, got {seed!r}") from None
    if not 0 <= value < 2 ** 63:
        raise TrilemmaError(f"seed: must be in 0..2^63-1, got {value}")
    return value


def unit(value: Any, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TrilemmaError(f"{what}: expected a number, got {value!r}") from None
    if not 0.0 <= x <= 1.0:
        raise TrilemmaError(f"{what}: must be in [0, 1], got {x}")
    return x


def cli_args(*, sampler: str = "auto", steps: Any = None, eta: Any = None, guidance: Any = 1.0,
             label: Any = None, negative: str | None = None) -> SimpleNamespace:
    """The argparse namespace `trilemma sample/generate` would build from these flags (checked the same way)."""
    from trilemma.diffusion.samplers import AUTO, SAMPLERS

    if sampler not in (AUTO, *SAMPLERS):
        raise TrilemmaError(f"--sampler: expected one of {', '.join((AUTO, *SAMPLERS))}, got {sampler!r}")
    steps = None if steps in (None, "", 0) else count(steps, "--steps", 10_000)
    eta = None if eta in (None, "") else unit(eta, "--eta")
    try:
        guidance = float(guidance)
    except (TypeError, ValueError):
        raise TrilemmaError(f"--guidance: expected a number, got {guidance!r}") from None
    if label not in (None, ""):
        try:
            label = int(label)
        except (TypeError, ValueError):
            raise TrilemmaError(f"--label: expected a class number, got {label!r}") from None
        if label < 0:
            raise TrilemmaError(f"--label: must be >= 0, got {label}")
    else:
        label = None
    return SimpleNamespace(sampler=sampler, steps=steps, eta=eta, spacing=None, variance="beta_tilde",
                           clip=None, label=label, guidance=guidance, negative=negative or None)


def sample_options(args: SimpleNamespace) -> SampleOptions:
    from trilemma.cli.sample import sample_options as from_cli

    return from_cli(args)


# ------------------------------------------------------------------------------------ Sample
def sample(run: GeneratorRun, options: SampleOptions, *, seed: Any, n: Any, progress: bool = True) -> Generated:
    """``trilemma sample RUN --seed S --n N`` with these options: uint8 images and the time taken."""
    n, seed = count(n), seed_of(seed)
    nfe = run.nfe(options)                       # checks the label/steps before any work
    t0 = time.perf_counter()
    images = run.generate(n, seed=seed, batch_size=SAMPLE_BATCH, options=options, progress=progress)
    return Generated(images, time.perf_counter() - t0, nfe, run.describe(options))


def trajectory_figure(run: GeneratorRun, options: SampleOptions, *, seed: Any, n: Any, out: Path,
                      columns: int = 10) -> Path:
    """x_t and x̂₀ along the reverse process, as `trilemma show trajectory` draws them (docs/methods.md §4–6)."""
    from trilemma.viz import save_trajectory

    n, seed = count(n, "n", 16), seed_of(seed)
    if not hasattr(run, "schedule"):
        raise TrilemmaError(f"{run.path.name}: a {run.kind} run has no reverse process to show")
    _, traj = run.sample_batch(n, run.generator(seed), options, return_trajectory=True)
    return save_trajectory(traj, lambda x: run.decode(x.to(run.device)),
                           f"reverse process of {run.path.name}: {run.describe(options)}", out, columns)


# ------------------------------------------------------------------------------------ text
def require_t2i(run: GeneratorRun) -> None:
    if run.kind != "t2i":
        raise TrilemmaError(f"{run.path.name} is a {run.kind!r} run; text prompts need a text-to-image run "
                            f"(train one with `trilemma train t2i`)")


def text_options(args: SimpleNamespace, prompt: str) -> SampleOptions:
    from trilemma.cli.generate import sampling

    return sampling(args, prompt)


def text_to_image(run: GeneratorRun, args: SimpleNamespace, prompt: Any, *, seed: Any, n: Any,
                  progress: bool = True) -> Generated:
    """``trilemma generate RUN PROMPT --seed S --n N`` with these options."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise TrilemmaError("prompt: empty; type what the images should show")
    require_t2i(run)
    n, seed = count(n), seed_of(seed)
    options = text_options(args, prompt)
    t0 = time.perf_counter()
    images = run.generate(n, seed=seed, batch_size=GENERATE_BATCH, options=options, progress=progress)
    return Generated(images, time.perf_counter() - t0, run.nfe(options), run.describe(options))


def read_upload(path: Any, channels: int, size: int) -> torch.Tensor:
    """An uploaded image as (1, C, H, W) in [-1, 1]: size-limited, decoded by the safe reader."""
    import os

    from trilemma.data import read_image, to_float

    if not path:
        raise TrilemmaError("image: upload an image to edit")
    p = Path(str(path))
    try:
        size_bytes = os.stat(p).st_size
    except OSError:
        raise TrilemmaError("image: the upload could not be read; upload it again") from None
    if size_bytes > MAX_UPLOAD_BYTES:
        raise TrilemmaError(f"image: {size_bytes / 1e6:.1f} MB is more than the limit of "
                            f"{MAX_UPLOAD_BYTES / 1e6:g} MB")
    try:
        array = read_image(p, channels, size)                         # uint8 (C, size, size)
    except TrilemmaError as e:
        reason = str(e).split(": ", 1)[-1]                             # without the server's temp path
        raise TrilemmaError(f"image: {reason}") from None
    return to_float(torch.from_numpy(np.ascontiguousarray(array)))[None]


def edit(run: GeneratorRun, args: SimpleNamespace, upload: Any, prompt: Any, strength: Any, *, seed: Any,
         n: Any, progress: bool = True) -> tuple[Generated, torch.Tensor]:
    """``trilemma edit RUN IMAGE PROMPT --strength s`` (SDEdit, docs/methods.md §8): (edited, input as uint8)."""
    from tqdm.auto import tqdm

    from trilemma.data import to_uint8
    from trilemma.t2i.edit import edit_images, edit_plan

    if not isinstance(prompt, str) or not prompt.strip():
        raise TrilemmaError("prompt: empty; give a prompt describing the edited image")
    require_t2i(run)
    strength = unit(strength, "strength")
    n, seed = count(n, "n", 64), seed_of(seed)
    c, size, _ = run.image_shape
    image = read_upload(upload, c, size)
    options = text_options(args, prompt)
    plan = edit_plan(run.schedule, strength, options.sampler, options.steps, options.spacing)
    steps = plan.points
    t0 = time.perf_counter()
    with tqdm(total=steps, desc=f"editing ({steps} {options.sampler} steps from t0={plan.t0})",
              unit="step", disable=not progress or steps == 0, leave=False) as bar:
        edited = edit_images(run, image.repeat(n, 1, 1, 1), prompt, strength, options, run.generator(seed),
                             callback=lambda *_: bar.update(1))
    seconds = time.perf_counter() - t0
    out = Generated(to_uint8(edited.float().cpu()), seconds, plan.nfe * (1 if options.guidance == 1.0 else 2),
                    f"SDEdit strength {strength:g}, {options.sampler} {steps} steps from t₀={plan.t0}, "
                    f"guidance w={options.guidance:g}")
    return out, to_uint8(image)


# ------------------------------------------------------------------------------------ Compare
def read_eval(path: Path) -> dict:
    from trilemma.metrics import SCHEMA_VERSION
    from trilemma.utils.io import read_json

    try:
        result = read_json(path)
    except (OSError, ValueError) as e:
        raise TrilemmaError(f"{path.name}: not readable JSON ({e})") from None
    if not isinstance(result, dict) or result.get("schema") != SCHEMA_VERSION:
        raise TrilemmaError(f"{path.name}: not a trilemma eval result (expected \"schema\": \"{SCHEMA_VERSION}\"; "
                            f"write one with trilemma eval --json)")
    return result


def eval_json(run_dir: Path) -> Path:
    from trilemma.cli.eval import EVAL_FILE

    return run_dir / EVAL_FILE


def compare_rows(items: list[Path]) -> tuple[list[tuple[str, dict]], list[Path]]:
    """(label, result) rows for the chosen run folders (their eval.json) and JSON files; runs not evaluated yet."""
    from trilemma.cli.compare import label_for, unique_labels

    rows, missing = [], []
    for p in items:
        if p.is_dir():
            if not eval_json(p).is_file():
                missing.append(p)
                continue
            result = read_eval(eval_json(p))
        else:
            result = read_eval(p)
        rows.append((label_for(str(p), result), result))
    return unique_labels(rows), missing


def comparison(rows: list[tuple[str, dict]], plot: Path, x_axis: str = "images-per-s") -> tuple[str, Path]:
    """`trilemma compare`'s markdown table and trilemma plot for these rows."""
    from trilemma.metrics.report import markdown_table, plot_trilemma

    return markdown_table(rows), plot_trilemma(rows, plot, x_axis)


def evaluate(run: GeneratorRun, options: SampleOptions, *, n: Any, seed: Any, progress: bool = True) -> dict:
    """`trilemma eval RUN --n N` (writes RUN/eval.json, as `trilemma compare` does for a run it evaluates)."""
    from trilemma.metrics import evaluate_run
    from trilemma.utils.io import write_json

    n, seed = count(n, "n", 50_000), seed_of(seed)
    run.nfe(options)
    result = evaluate_run(run, n, options, seed=seed, batch_size=SAMPLE_BATCH, progress=progress)
    write_json(eval_json(run.path), result)
    return result
