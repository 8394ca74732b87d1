"""The quick-start demo's recipe: the most sample quality a 2-core CPU buys in about six minutes.

Two recipes, both trained for one wall-clock budget (``minutes``, default 6) or a step count:

* ``latent`` (the default; docs/methods.md §7): phase 1 trains a small KL autoencoder (f = 4,
  4×7×7 latents for 28×28 images) into ``RUN/ae`` for ``AE_SHARE`` of the budget and encodes the
  training set once; phase 2 trains a DDPM on the scaled latents into ``RUN`` for the rest of the
  budget (the encoding time is counted in it). Diffusion on 49-position latents makes a step ~10×
  cheaper than on 784 pixels, so the same minutes buy many more steps; docs/demo.md has the
  measured ablations that chose this recipe and its settings.
* ``pixel``: a DDPM on the pixels (the recipe of earlier releases), kept for comparison.

Either way ``RUN`` is an ordinary run folder (``trilemma sample/eval/ui`` take it); a latent run
carries its own copy of the autoencoder in ``RUN/autoencoder/``, and ``RUN/ae`` keeps phase 1's own
run folder (its reconstructions, loss curve and metrics).

With ``steps`` instead of minutes, both phases train that many steps. ``resume=True`` continues
whichever phase was interrupted, with the same split of the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trilemma.errors import RunError
from trilemma.train.loop import FitResult
from trilemma.utils.io import read_json

AE_SHARE = 1 / 3           # of the latent recipe's minutes, for the autoencoder (docs/demo.md: the ablation)
AE_DIR = "ae"              # phase 1's run folder inside the demo's
DEFAULT_MINUTES = 6.0


@dataclass(frozen=True)
class DemoRecipe:
    """The demo's training options (the CLI's ``trilemma demo`` flags)."""

    space: Literal["latent", "pixel"] = "latent"
    data: str = "fashion-mnist"
    preset: str = "small"
    batch_size: int = 128
    lr: float | None = None                 # None: 2e-3 for latent, 1e-3 for pixel (docs/demo.md: the ablations)
    prediction: Literal["eps", "v"] = "v"
    loss_weight: Literal["uniform", "min-snr"] = "min-snr"
    lr_decay: str = "constant"
    seed: int = 0
    bf16: bool = False
    device: str = "auto"


def phase1_finished(ae: Path) -> bool:
    """The autoencoder phase ran to its end (weights, checkpoint and the latent statistics of ``finish``)."""
    if not (ae / "config.json").is_file() or not (ae / "state" / "trainer.json").is_file():
        return False
    try:
        return "latent" in read_json(ae / "config.json") and (ae / "recon.json").is_file()
    except RunError:
        return False


def phase1_minutes(ae: Path) -> float:
    """Wall-clock minutes phase 1 cost: its training plus encoding the training set (from its records)."""
    elapsed = float(read_json(ae / "state" / "trainer.json").get("elapsed_s", 0.0))
    encode = float(read_json(ae / "recon.json").get("encode_train_s") or 0.0)
    return (elapsed + encode) / 60


def autoencoder_factor(data: str) -> int:
    """f = 4 (28×28 → 7×7 latents), or 2 for images under 16 px (the latent U-Net needs at least 4×4)."""
    from trilemma.data import load_dataset

    return 4 if load_dataset(data, "train").image_shape[-1] >= 16 else 2


def train_demo(out: Path, recipe: DemoRecipe, *, minutes: float | None, steps: int | None, resume: bool = False,
               progress: bool = True) -> FitResult:
    """Train the demo's model into ``out`` (a new run, or ``resume``); returns the final phase's result."""
    if recipe.space == "pixel":
        return _train_pixel(out, recipe, minutes, steps, resume, progress)
    from trilemma.autoencoder.train import train_autoencoder
    from trilemma.ldm.train import train_ldm

    ae = out / AE_DIR
    budget = {"steps": steps} if steps else {"minutes": minutes * AE_SHARE}
    if not phase1_finished(ae):
        if resume and (ae / "state" / "trainer.json").is_file():
            first = train_autoencoder(ae, resume=True, progress=progress, **budget)
        else:
            first = train_autoencoder(ae, data=recipe.data, factor=autoencoder_factor(recipe.data), preset=recipe.preset, seed=recipe.seed,
                                      bf16=recipe.bf16, device=recipe.device, recon_fid=False, eval_n=1000,
                                      progress=progress, **budget)
        if first.interrupted:
            return first
    budget = {"steps": steps} if steps else {"minutes": max(minutes - phase1_minutes(ae), 0.05)}
    if resume and (out / "state" / "trainer.json").is_file():
        return train_ldm(out, resume=True, progress=progress, **budget)
    return train_ldm(out, autoencoder=ae, preset=recipe.preset, batch_size=recipe.batch_size, lr=recipe.lr or 2e-3,
                     prediction=recipe.prediction, loss_weight=recipe.loss_weight, seed=recipe.seed, bf16=recipe.bf16,
                     device=recipe.device, warmup_steps=100, lr_decay=recipe.lr_decay, progress=progress, **budget)


def _train_pixel(out: Path, recipe: DemoRecipe, minutes: float | None, steps: int | None, resume: bool,
                 progress: bool) -> FitResult:
    from trilemma.ddpm.train import train_ddpm

    if resume:                                   # the run keeps its options; only the budget may grow
        return train_ddpm(out, resume=True, steps=steps, minutes=minutes, progress=progress)
    return train_ddpm(out, data=recipe.data, preset=recipe.preset, steps=steps, minutes=minutes,
                      batch_size=recipe.batch_size, lr=recipe.lr or 1e-3, prediction=recipe.prediction,
                      loss_weight=recipe.loss_weight, seed=recipe.seed, bf16=recipe.bf16, device=recipe.device,
                      sample_every=500, warmup_steps=100, lr_decay=recipe.lr_decay, progress=progress)


def describe_budget(out: Path) -> dict[str, Any]:
    """Steps and minutes of each phase of a finished demo run (for the closing message)."""
    phases = {}
    for name, path in (("autoencoder", out / AE_DIR), ("diffusion", out)):
        if (path / "state" / "trainer.json").is_file():
            info = read_json(path / "state" / "trainer.json")
            phases[name] = {"steps": info.get("step"), "minutes": float(info.get("elapsed_s", 0.0)) / 60}
    return phases
