"""Phase 2 of latent diffusion: a diffusion model on the scaled latents of an autoencoder (METHODS.md §7).

    z_0 = s · μ_φ(x)                      (encode once; s = 1/std of the training latents)
    L_LDM = E ‖ε − ε_θ(z_t, t)‖²,  z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε      (the pixel loss, on z)
    sample z_0 with DDPM or DDIM, then x = D(z_0 / s)

A latent run *is* a diffusion run whose diffused variable is z: :class:`LatentDiffusionRun`
subclasses :class:`~trilemma.diffusion.pipeline.DiffusionRun` and overrides only
:attr:`x_shape` (the latent shape) and :meth:`decode` (the autoencoder's decoder) — the
samplers, schedules, denoiser and U-Net are the pixel model's. x̂₀ is not clipped (latents have
no [−1, 1] range; the run's ``diffusion.clip`` is false).

The run folder is self-contained: ``RUN/autoencoder/`` holds a copy of the autoencoder's
config.json and weights, and ``config.json["autoencoder"]`` the SHA-256 of those weights.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from trilemma.diffusion.pipeline import DiffusionRun
from trilemma.errors import RunError, TrilemmaError
from trilemma.latent.run import AUTOENCODER_DIR, AutoencoderRun, file_digest
from trilemma.nets.unet import UNetConfig, preset as unet_preset
from trilemma.runs import read_run_config

MIN_LEVEL_SIZE = 4      # the U-Net's levels stop once they would be smaller than this


def latent_unet_preset(name: str, latent_size: int, latent_channels: int, **overrides) -> UNetConfig:
    """The U-Net preset ``name`` fitted to small latents: levels below 4×4 are dropped.

    The pixel presets halve the image 1–3 times (28 → 14 → 7); a 7×7 latent would go down to
    2×2, where a 3×3 convolution sees mostly padding. So levels are kept while their size is at
    least 4 (7 → 4; 14 → 7 → 4; 8 → 4; 16 → 8 → 4) and attention moves to the lowest kept level
    when its level was dropped. Widths, blocks and heads are the preset's.
    """
    if latent_size < MIN_LEVEL_SIZE:
        raise TrilemmaError(f"latents of {latent_size}×{latent_size} are too small for the U-Net (it needs at least "
                            f"{MIN_LEVEL_SIZE}×{MIN_LEVEL_SIZE}): use a smaller --factor or a larger --image-size")
    config = unet_preset(name, latent_size, latent_channels)
    keep = sum(1 for size in config.resolutions if size >= MIN_LEVEL_SIZE)
    mults = config.channel_mults[:keep]
    kept = replace(config, channel_mults=mults).resolutions
    attn = tuple(sorted({r if r in kept else kept[-1] for r in config.attn_resolutions}))
    config = replace(config, channel_mults=mults, attn_resolutions=attn)
    return replace(config, **overrides) if overrides else config


class LatentDiffusionRun(DiffusionRun):
    """A latent-diffusion run folder (kind "ldm"): a :class:`DiffusionRun` on z, plus the autoencoder."""

    kind = "ldm"

    def __init__(self, path: Path, config: dict[str, Any], device: torch.device, weights: str = "auto"):
        super().__init__(path, config, device, weights)
        ae_dir = self.path / AUTOENCODER_DIR
        if not (ae_dir / "config.json").is_file():
            raise RunError(f"{path}: its copy of the autoencoder ({ae_dir}) is missing; the run cannot decode")
        self.autoencoder = AutoencoderRun(ae_dir, read_run_config(ae_dir), device)
        expected = config["autoencoder"]["digest"]
        if file_digest(self.autoencoder.weights_path) != expected:
            raise RunError(f"{self.autoencoder.weights_path}: not the autoencoder this run was trained with "
                           f"(SHA-256 differs from config.json); restore the original file")
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
