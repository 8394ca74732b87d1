"""The lecture's claims, each reproduced by one command (``trilemma experiment NAME``).

- ``gan_gradients.py`` Arjovsky & Bottou (2017): the original generator cost's gradient vanishes.
- ``vae_vs_gan.py``    VAE, GAN and DDPM side by side: sharpness and the trilemma metrics.
- ``sharpness.py``     the variance of the Laplacian, a per-image sharpness measure.
- ``latent_vs_pixel.py`` latent vs pixel diffusion under one training budget; the autoencoder factor sweep.
- ``demo.py``          the recipe of ``trilemma demo``: an autoencoder, then a latent DDPM, in one budget.
- ``trilemma.py``      VAE, GAN, DDPM, latent DDPM and the DDGANs under one budget: the trilemma table and plot.
- ``steps.py``         FID against NFE for every sampler.

Their command-line options are declared in :mod:`trilemma.cli.experiment`; each experiment module's
``main(args)`` does the work.
Options left unset fall back to the defaults of the experiment's config dataclass. A folder's
runs are reused by a re-run only with the same training settings (:func:`check_settings`).
Ctrl-C (or SIGTERM) during a training stops the whole experiment once that run's checkpoint is saved
(:func:`stop_if_interrupted`; exit code 130, 143 for SIGTERM); running the same command again continues it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trilemma.data.config import data_key  # noqa: F401 - the experiments record datasets with it
from trilemma.errors import Interrupted, TrilemmaError
from trilemma.utils.io import read_json, write_json

SETTINGS_FILE = "settings.json"   # the settings an experiment folder's runs were trained with


def check_settings(out: Path, experiment: str, settings: dict[str, Any]) -> None:
    """Refuse to reuse the runs in ``out`` when they were trained with other ``settings``; else record them.

    An experiment re-run into the same folder reuses its finished runs; that is only honest when
    the runs were trained with the same data, budget, sizes and seed. ``settings`` are those
    training settings (sampling and evaluation settings may change: their results are cached by
    value). The first run into a folder writes ``out/settings.json``.
    """
    file = Path(out) / SETTINGS_FILE
    settings = {"experiment": experiment, **settings}
    if file.is_file():
        stored = read_json(file)
        if not isinstance(stored, dict):
            raise TrilemmaError(f"{file}: expected a JSON object of settings; remove the file or choose another --out")
        differ = [k for k in settings if stored.get(k) != settings[k]]
        if differ:
            shown = ", ".join(f"{k} {stored.get(k)!r} (now {settings[k]!r})" for k in differ)
            raise TrilemmaError(f"--out {out}: its runs were trained with other settings: {shown}; rerun with "
                                f"those settings or choose another --out")
        return
    write_json(file, settings)


def run_state(path: Path) -> str:
    """Where an experiment's run folder stands: ``"none"``, ``"started"`` (config, no checkpoint yet),
    ``"interrupted"`` (a checkpoint short of the budget in its config.json) or ``"finished"``.

    A checkpoint alone does not mean the run is done: the loop writes one every few minutes, so a run
    stopped by Ctrl-C (or a killed process) has one too; reusing it as finished would compare a
    partly trained model with fully trained ones. The budget is the config's ``steps`` (the step
    reached) or ``minutes`` (the training time the checkpoint recorded).
    """
    from trilemma.train.rundir import checkpoint_info, has_checkpoint

    path = Path(path)
    if not (path / "config.json").is_file():
        return "none"
    if not has_checkpoint(path):
        return "started"
    train = read_json(path / "config.json").get("train", {})
    state = checkpoint_info(path)
    if train.get("steps") is not None:
        done = state.get("step", 0) >= train["steps"]
    else:
        done = train.get("minutes") is None or state.get("elapsed_s", 0.0) >= 60.0 * train["minutes"]
    return "finished" if done else "interrupted"


def stop_if_interrupted(result: Any) -> None:
    """Raise :class:`~trilemma.errors.Interrupted` when a training call returned stopped by Ctrl-C or SIGTERM.

    On the first Ctrl-C (or SIGTERM) a trainer saves a checkpoint and *returns* its ``FitResult`` with
    ``interrupted`` set, which is right for ``trilemma train``; an experiment that went on would train
    its next model although the user asked it to stop, or record the partly trained run as finished.
    Call this after every training call of an experiment, before anything is built on its run: a re-run
    of the same command then continues the run (:func:`run_state` reads it as ``"interrupted"``).
    """
    if result is None or not getattr(result, "interrupted", False):
        return
    how = "SIGTERM" if result.signal == "SIGTERM" else "interrupted"
    raise Interrupted(f"{how} at step {result.step}; checkpoint saved in {result.run_dir}; run the same command "
                      f"again to continue", signal=result.signal)
