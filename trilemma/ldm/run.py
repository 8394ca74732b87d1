"""Phase 2 of latent diffusion: a diffusion model on the scaled latents of an autoencoder (docs/methods.md §7).

    z_0 = s · μ_φ(x)                      (encode once; s = 1/std of the training latents)
    L_LDM = E ‖ε − ε_θ(z_t, t)‖²,  z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε      (the pixel loss, on z)
    sample z_0 with DDPM or DDIM, then x = D(z_0 / s)

A latent run *is* a diffusion run whose diffused variable is z: :class:`LatentDiffusionRun`
subclasses :class:`~trilemma.ddpm.run.DiffusionRun` and overrides only
:attr:`x_shape` (the latent shape) and :meth:`decode` (the autoencoder's decoder) — the
samplers, schedules, denoiser and U-Net are the pixel model's. x̂₀ is not clipped (latents have
no [−1, 1] range; the run's ``diffusion.clip`` is false).

The run folder is self-contained: ``RUN/autoencoder/`` holds a copy of the autoencoder's
config.json and weights, and ``config.json["autoencoder"]`` the SHA-256 of those weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trilemma.autoencoder.run import run_autoencoder
from trilemma.ddpm.run import DiffusionRun
from trilemma.errors import RunError


class LatentDiffusionRun(DiffusionRun):
    """A latent-diffusion run folder (kind "ldm"): a :class:`DiffusionRun` on z, plus the autoencoder."""

    kind = "ldm"

    def __init__(self, path: Path, config: dict[str, Any], device: torch.device, weights: str = "auto"):
        super().__init__(path, config, device, weights)
        self.autoencoder = run_autoencoder(self.path, config, device)
        if self.autoencoder.latent_shape != super().x_shape:
            raise RunError(f"{path}/config.json: the U-Net's input {super().x_shape} does not match the "
                           f"autoencoder's latents {self.autoencoder.latent_shape}")

    @property
    def x_shape(self) -> tuple[int, int, int]:
        """The diffused variable is the scaled latent z, (c, H/f, W/f)."""
        return self.autoencoder.latent_shape

    def decode(self, x_0: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images in [−1, 1] through the autoencoder's decoder, D(z / s)."""
        return self.autoencoder.decode(x_0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [−1, 1] → scaled latents z = s · μ_φ(x) (for image-to-image and the forward process)."""
        return self.autoencoder.encode(x)

    def describe(self, options) -> str:
        c, h, w = self.x_shape
        return f"{super().describe(options)} on {c}×{h}×{w} latents (f = {self.autoencoder.model_config.factor})"
