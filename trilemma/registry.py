"""The registry of model families: each kind's run class (sampling) and trainer spec (training).

This is the one module that imports every family; the families import only the layers below
them (see docs/ARCHITECTURE.md), so there is no import cycle. A new family adds one line to
:data:`FAMILIES`; ``trilemma train <kind>``, ``trilemma sample``, ``eval`` and ``compare`` then
work with it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from trilemma.autoencoder.run import AutoencoderRun
from trilemma.autoencoder.train import SPEC as AUTOENCODER_SPEC
from trilemma.ddgan.run import DDGANRun
from trilemma.ddgan.train import SPEC as DDGAN_SPEC
from trilemma.ddpm.run import DiffusionRun
from trilemma.ddpm.train import SPEC as DDPM_SPEC
from trilemma.errors import RunError
from trilemma.gan.run import GANRun
from trilemma.gan.train import SPEC as GAN_SPEC
from trilemma.ldm.run import LatentDiffusionRun
from trilemma.ldm.train import SPEC as LDM_SPEC
from trilemma.run import GeneratorRun, read_run_config
from trilemma.t2i.run import TextDiffusionRun
from trilemma.t2i.train import SPEC as T2I_SPEC
from trilemma.train.family import TrainSpec
from trilemma.utils.device import pick_device
from trilemma.vae.run import VAERun
from trilemma.vae.train import SPEC as VAE_SPEC

__all__ = ["FAMILIES", "Family", "RUN_KINDS", "load_run", "train_spec"]


@dataclass(frozen=True)
class Family:
    """A run kind: the class that loads its run folders, and how to train one."""

    kind: str
    run: type[GeneratorRun]
    train: TrainSpec | None


# In the order of `trilemma train --help`.
FAMILIES: dict[str, Family] = {f.kind: f for f in [
    Family("ddpm", DiffusionRun, DDPM_SPEC),
    Family("vae", VAERun, VAE_SPEC),
    Family("gan", GANRun, GAN_SPEC),
    Family("autoencoder", AutoencoderRun, AUTOENCODER_SPEC),
    Family("ldm", LatentDiffusionRun, LDM_SPEC),
    Family("t2i", TextDiffusionRun, T2I_SPEC),
    Family("ddgan", DDGANRun, DDGAN_SPEC),
]}
RUN_KINDS: dict[str, type[GeneratorRun]] = {kind: f.run for kind, f in FAMILIES.items()}


def train_spec(kind: str) -> TrainSpec:
    family = FAMILIES.get(kind)
    if family is None or family.train is None:
        raise RunError(f"unknown trainer {kind!r} (known: {', '.join(k for k, f in FAMILIES.items() if f.train)})")
    return family.train


def load_run(path: str | Path, device: str | torch.device | None = None) -> GeneratorRun:
    """Load any run folder for sampling (EMA weights when the run has them)."""
    config = read_run_config(path)
    kind = config["kind"]
    if kind not in RUN_KINDS:
        raise RunError(f"{path}/config.json: unknown run kind {kind!r} (known: {', '.join(sorted(RUN_KINDS))})")
    device = device if isinstance(device, torch.device) else pick_device(device)
    return RUN_KINDS[kind](Path(path), config, device)
