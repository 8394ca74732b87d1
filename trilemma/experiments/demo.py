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

from trilemma.autoencoder.phase import AE_DIR, autoencoder_factor, phase1_finished, phase2_budget, run_phase1
from trilemma.train.loop import FitResult
from trilemma.utils.io import read_json

__all__ = ["AE_DIR", "AE_SHARE", "DemoRecipe", "autoencoder_factor", "describe_budget", "phase1_finished",
           "train_demo"]

AE_SHARE = 1 / 3           # of the latent recipe's minutes, for the autoencoder (docs/demo.md: the ablation)
DEFAULT_MINUTES = 6.0


@dataclass(frozen=True)
class DemoRecipe:
    """The demo's training options (the CLI's ``trilemma demo`` flags)."""

    space: Literal["latent", "pixel"] = "latent"
    data: str = "fashion-mnist"
    preset: str = "small"
    batch_size: int = 128
    lr: float | None = None                 # None: 2e-3 for latent, 1e-3 for pixel (docs/demo.md: the ablations)
    prediction: Literal["eps", "v", "edm"] = "v"
    loss_weight: Literal["uniform", "min-snr"] = "min-snr"
    noise_levels: Literal["uniform", "lognormal"] = "lognormal"   # docs/demo.md: 15.3 → 11.7 FID over two seeds
    lr_decay: str = "constant"
    seed: int = 0
    bf16: bool = False
    device: str = "auto"


def train_demo(out: Path, recipe: DemoRecipe, *, minutes: float | None, steps: int | None, resume: bool = False,
               progress: bool = True) -> FitResult:
    """Train the demo's model into ``out`` (a new run, or ``resume``); returns the final phase's result."""
    if recipe.space == "pixel":
        return _train_pixel(out, recipe, minutes, steps, resume, progress)
    from trilemma.ldm.train import train_ldm

    ae = out / AE_DIR
    first = run_phase1(ae, budget={"steps": steps} if steps else {"minutes": minutes * AE_SHARE}, resume=resume,
                       progress=progress, data=recipe.data, factor=autoencoder_factor(recipe.data),
                       preset=recipe.preset, seed=recipe.seed, bf16=recipe.bf16, device=recipe.device,
                       recon_fid=False, eval_n=1000)
    if first is not None and first.interrupted:
        return first
    budget = phase2_budget(ae, minutes, steps)
    if resume and (out / "state" / "trainer.json").is_file():
        return train_ldm(out, resume=True, progress=progress, **budget)
    return train_ldm(out, autoencoder=ae, preset=recipe.preset, batch_size=recipe.batch_size, lr=recipe.lr or 2e-3,
                     prediction=recipe.prediction, loss_weight=recipe.loss_weight, noise_levels=recipe.noise_levels,
                     seed=recipe.seed, bf16=recipe.bf16,
                     device=recipe.device, warmup_steps=100, lr_decay=recipe.lr_decay, progress=progress, **budget)


def _train_pixel(out: Path, recipe: DemoRecipe, minutes: float | None, steps: int | None, resume: bool,
                 progress: bool) -> FitResult:
    from trilemma.ddpm.train import train_ddpm

    if resume:                                   # the run keeps its options; only the budget may grow
        return train_ddpm(out, resume=True, steps=steps, minutes=minutes, progress=progress)
    return train_ddpm(out, data=recipe.data, preset=recipe.preset, steps=steps, minutes=minutes,
                      batch_size=recipe.batch_size, lr=recipe.lr or 1e-3, prediction=recipe.prediction,
                      loss_weight=recipe.loss_weight, noise_levels=recipe.noise_levels, seed=recipe.seed,
                      bf16=recipe.bf16, device=recipe.device,
                      sample_every=500, warmup_steps=100, lr_decay=recipe.lr_decay, progress=progress)


def describe_budget(out: Path) -> dict[str, Any]:
    """Steps and minutes of each phase of a finished demo run (for the closing message)."""
    phases = {}
    for name, path in (("autoencoder", out / AE_DIR), ("diffusion", out)):
        if (path / "state" / "trainer.json").is_file():
            info = read_json(path / "state" / "trainer.json")
            phases[name] = {"steps": info.get("step"), "minutes": float(info.get("elapsed_s", 0.0)) / 60}
    return phases
