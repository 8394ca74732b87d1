"""Phase 1 of a two-phase latent recipe: the autoencoder, trained inside the recipe's run folder.

A latent recipe (the demo's, and ``trilemma train t2i --recipe latent``) trains a small
autoencoder into ``RUN/ae`` for a share of one wall-clock budget (or the same step count), encodes
the training set once, and gives the rest of the budget to the diffusion model in ``RUN``:

    minutes(phase 2) = minutes − (training minutes of phase 1 + its encoding minutes)

so the whole recipe costs what the user asked for. Either phase can be interrupted and resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trilemma.errors import RunError
from trilemma.train.loop import FitResult
from trilemma.train.rundir import checkpoint_info, has_checkpoint
from trilemma.utils.io import read_json

AE_DIR = "ae"                 # phase 1's run folder inside the recipe's
MIN_PHASE2_MINUTES = 0.05     # phase 2 always gets a few seconds, even when phase 1 overran its share


def autoencoder_factor(data: str) -> int:
    """f = 4 (28×28 → 7×7 latents), or 2 for images under 16 px (the latent U-Net needs at least 4×4)."""
    from trilemma.data import load_dataset

    return 4 if load_dataset(data, "train").image_shape[-1] >= 16 else 2


def phase1_started(ae: Path) -> bool:
    """Phase 1 has a checkpoint to continue from."""
    return (ae / "config.json").is_file() and has_checkpoint(ae)


def phase1_finished(ae: Path) -> bool:
    """The autoencoder phase ran to its end (weights, checkpoint and the latent statistics of ``finish``)."""
    if not phase1_started(ae):
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


def phase2_budget(ae: Path, minutes: float | None, steps: int | None) -> dict[str, Any]:
    """The diffusion phase's budget: the same steps, or the minutes phase 1 left of the whole."""
    if steps:
        return {"steps": steps}
    return {"minutes": max(minutes - phase1_minutes(ae), MIN_PHASE2_MINUTES)}


def run_phase1(ae: Path, *, budget: dict[str, Any], resume: bool, progress: bool,
               **options: Any) -> FitResult | None:
    """Train (a new one, or continue with ``resume``) the autoencoder in ``ae``; ``None`` when it had finished.

    ``budget`` is ``{"minutes": …}`` or ``{"steps": …}``; ``options`` are ``train autoencoder``'s: a
    resumed run keeps its own stored ones and is given only the evaluation's (``AutoencoderEval``)
    again, so that a phase 1 made before those were stored is measured as a new one would be.
    """
    from trilemma.autoencoder.train import AutoencoderEval, train_autoencoder
    from trilemma.options import option_names

    if phase1_finished(ae):
        return None
    if resume and phase1_started(ae):
        # Training may have reached its budget and been cut short in ``finish`` (encoding the training
        # set): then continue with the stored budget, which trains nothing more and runs ``finish``.
        evaluation = {k: v for k, v in options.items() if k in option_names((AutoencoderEval,))}
        return train_autoencoder(ae, resume=True, progress=progress, **evaluation,
                                 **(budget if _beyond(ae, budget) else {}))
    return train_autoencoder(ae, progress=progress, **options, **budget)


def _beyond(ae: Path, budget: dict[str, Any]) -> bool:
    """``budget`` lies beyond where phase 1's checkpoint is."""
    info = checkpoint_info(ae)
    if budget.get("steps") is not None:
        return budget["steps"] > int(info.get("step", 0))
    return budget["minutes"] * 60 > float(info.get("elapsed_s", 0.0))
