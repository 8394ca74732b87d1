"""Named training recipes of ``trilemma train t2i`` (``--recipe``): option defaults chosen by measurement.

* ``pixel`` (the default): the options as declared (diffusion on p×p pixel patches).
* ``latent``: the recipe of docs/text_to_image.md "The latent recipe", which got most compositional
  shapes prompts right within 15 CPU-minutes where the pixel model got 18.5% in 60:

  - phase 1 (skipped when ``--autoencoder`` is given): a small KL autoencoder (f = 4) trained into
    ``RUN/ae`` for a sixth of the minutes, at most 3 (with ``--steps``: as many, at most 3,000), the
    training set encoded once — both counted in the budget (:mod:`trilemma.autoencoder.phase`);
  - phase 2: the text-to-image U-Net on the latents with the defaults of :data:`LATENT` — ``small``
    with one ResNet block per level, batch 128, lr 2e-3, v-prediction, min-SNR-γ loss weighting, EMA
    0.995, and bf16 autocast where the hardware has native bf16.

Options the user gives always win over a recipe's defaults. The recipe and the options of phase 2 are
kept in ``RUN/recipe.json`` (written atomically before phase 1 starts), so ``--resume`` continues
whichever phase was interrupted and ``--minutes`` stays the budget of the whole recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trilemma.autoencoder.phase import (
    AE_DIR,
    autoencoder_factor,
    phase1_finished,
    phase1_minutes,
    phase1_started,
    phase2_budget,
    run_phase1,
)
from trilemma.data import DataConfig
from trilemma.errors import RunError, TrilemmaError
from trilemma.options import flat_options, opt, option_names
from trilemma.train import distributed
from trilemma.train.loop import FitResult
from trilemma.train.rundir import check_run_dir, checkpoint_info, has_checkpoint
from trilemma.utils.device import native_bf16, pick_device
from trilemma.utils.io import read_json, write_json

RECIPES = ("pixel", "latent")
RECIPE_FILE = "recipe.json"
AE_SHARE = 1 / 6           # of the minutes for phase 1, …
AE_MAX_MINUTES = 3.0       # … at most 3 (from 18 minutes up: the measured recipe's autoencoder took 3.1)
AE_MAX_STEPS = 3000        # phase 1's steps at most, with --steps (the measured recipe's autoencoder)

# Phase 2's defaults (docs/text_to_image.md "The latent recipe"); bf16 is added where the hardware has it.
LATENT: dict[str, Any] = {
    "preset": "small", "num_res_blocks": 1, "batch_size": 128, "lr": 2e-3, "warmup_steps": 100,
    "prediction": "v", "loss_weight": "min-snr", "ema_decay": 0.995,
}
BUDGET = ("minutes", "steps")


@dataclass(frozen=True)
class T2IRecipe:
    """``--recipe``: a run-time option (the run's config.json holds the options it resolved to)."""

    recipe: str = opt("pixel", "a named recipe of measured defaults: pixel (the options as given) or latent "
                      "(an autoencoder trained first into RUN/ae for a sixth of the minutes, at most 3, then v-prediction, "
                      "min-SNR-γ, batch 128, lr 2e-3 on its latents; docs/text_to_image.md)", choices=RECIPES)


def latent_options(options: dict[str, Any]) -> dict[str, Any]:
    """The latent recipe's defaults under the given ``options`` (given ones win)."""
    values = {**LATENT, **flat_options(options)}
    if "bf16" not in options:
        values["bf16"] = native_bf16(pick_device(values.get("device") or "auto"))
    return values


def autoencoder_options(values: dict[str, Any]) -> dict[str, Any]:
    """Phase 1's ``train autoencoder`` options: the same data, preset, seed, device and precision options."""
    data_keys = option_names((DataConfig,))
    ae = {k: v for k, v in values.items() if k in data_keys and v is not None}
    ae.setdefault("data", "shapes")
    keep = {k: values[k] for k in ("preset", "seed", "device", "bf16", "tf32", "deterministic", "compile")
            if values.get(k) is not None}
    return {**ae, **keep, "factor": autoencoder_factor(ae["data"]), "recon_fid": False, "eval_n": 1000}


def is_recipe_run(out: Path) -> bool:
    return (Path(out) / RECIPE_FILE).is_file()


def resume_folder(out: Path) -> tuple[Path, str] | None:
    """The run folder (and kind) a ``--resume`` of ``out`` continues, for the CLI's checks before any work.

    ``None`` when a recipe's phase 1 has finished and phase 2 has not started (nothing to check yet).
    """
    out = Path(out)
    if not is_recipe_run(out) or has_checkpoint(out):
        return out, "t2i"
    ae = out / AE_DIR
    if phase1_started(ae) and not phase1_finished(ae):
        return ae, "autoencoder"
    if not phase1_started(ae) and not (out / "config.json").is_file() and not read_recipe(out).get("autoencoder"):
        raise RunError(f"--resume: {out} has no checkpoint yet (the recipe stopped before its first save); run the "
                       f"same command without --resume to start it again")
    return None


def read_recipe(out: Path) -> dict[str, Any]:
    record = read_json(Path(out) / RECIPE_FILE)
    if not isinstance(record, dict) or not isinstance(record.get("options"), dict):
        raise RunError(f"{Path(out) / RECIPE_FILE}: not a recipe record (no 'options' object)")
    return record["options"]


def train_latent_recipe(out: Path, options: dict[str, Any], *, resume: bool, progress: bool,
                        phase2: Callable[..., FitResult]) -> FitResult:
    """Run (or continue) the latent recipe in ``out``; ``phase2`` trains the t2i run (``train(SPEC, …)``).

    ``options`` are the user's (a new run) or the budget given with ``--resume``. Under torchrun every
    process calls this: rank 0 checks the folder and writes ``recipe.json``, all ranks train both
    phases together, and they meet after phase 1 (whose ``finish`` only rank 0 runs).
    """
    out = Path(out)
    created = distributed.init()
    try:
        w = distributed.world()
        distributed.main_first(lambda: _record(out, options, resume), w, others=False)
        values = read_recipe(out)
        minutes, steps = values.get("minutes"), values.get("steps")
        if values.get("autoencoder") is None:
            ae = out / AE_DIR
            budget1 = ({"steps": min(steps, AE_MAX_STEPS)} if steps else
                       {"minutes": min(minutes * AE_SHARE, AE_MAX_MINUTES)})
            first = run_phase1(ae, budget=budget1, resume=resume, progress=progress, **autoencoder_options(values))
            if first is not None and first.interrupted:
                return first
            distributed.barrier()                       # rank 0 has written phase 1's recon.json
            budget2 = phase2_budget(ae, minutes, steps)
            values = {**values, "autoencoder": str(ae)}
            if "minutes" in budget2 and has_checkpoint(out):
                _check_total(out, minutes, phase1_minutes(ae), budget2["minutes"])
        else:
            budget2 = {k: values[k] for k in BUDGET if values.get(k) is not None}
        if has_checkpoint(out):                        # phase 2 had started: continue it
            return phase2(out, resume=True, progress=progress, **budget2)
        phase2_options = {k: v for k, v in values.items() if k not in BUDGET}
        return phase2(out, resume=False, progress=progress, **phase2_options, **budget2)
    finally:
        if created:
            distributed.shutdown()


def _record(out: Path, options: dict[str, Any], resume: bool) -> None:
    """Check ``out`` and write ``recipe.json``: the recipe's options, with this session's budget."""
    if resume:
        budget = {k: options[k] for k in BUDGET if options.get(k) is not None}    # a new budget replaces the old
        values = {k: v for k, v in read_recipe(out).items() if not (budget and k in BUDGET)} | budget
    else:
        check_run_dir(out, resume=False)
        check_run_dir(out / AE_DIR, resume=False)
        values = latent_options(options)
        _check_phase2_options(values)
        out.mkdir(parents=True, exist_ok=True)
    write_json(out / RECIPE_FILE, {"recipe": "latent", "options": values})


def _check_phase2_options(values: dict[str, Any]) -> None:
    """What phase 2 would refuse, checked before phase 1 trains (a refusal then left a folder that no
    command could continue): a pixel-space option, a dataset without captions."""
    from trilemma.data import load_dataset
    from trilemma.data.text import require_captions

    if values.get("patch") not in (None, 1):
        raise TrilemmaError(f"--patch {values['patch']}: the latent recipe trains on autoencoder latents; patches "
                            f"are for pixel space (--recipe pixel)")
    if values.get("autoencoder") is None:
        data = {k: values[k] for k in option_names((DataConfig,)) if values.get(k) is not None}
        require_captions(load_dataset(data.pop("data", "shapes"), "train", **data))


def _check_total(out: Path, minutes: float, first: float, second: float) -> None:
    done = float(checkpoint_info(out).get("elapsed_s", 0.0)) / 60
    if second <= done:
        raise RunError(f"--minutes {minutes:g}: {out} has already trained {first + done:.2f} minutes in all "
                       f"({first:.2f} autoencoder, {done:.2f} text-to-image); give a larger --minutes to train further")
