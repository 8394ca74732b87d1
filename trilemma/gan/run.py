"""A trained GAN loaded from its run folder: x = G(z), z ~ N(0, I), one network evaluation per image.

``config.json`` has ``"kind": "gan"``, ``"model"`` (:class:`DCGANConfig`) and
``"gan"`` (:class:`GANConfig`). Weights: ``model.safetensors`` = G,
``disc.safetensors`` = D, ``ema.safetensors`` = the EMA of G (used when present).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trilemma.config import from_dict
from trilemma.errors import RunError, TrilemmaError
from trilemma.gan.config import DCGANConfig, GANConfig
from trilemma.gan.networks import Discriminator, Generator
from trilemma.run import GeneratorRun, SampleOptions, load_weights


def slerp(z_a: torch.Tensor, z_b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (White 2016): stays at the typical norm of N(0, I), unlike a straight line.

    z_a, z_b: (d,); t: (n, 1) in [0, 1] → (n, d).
    """
    omega = torch.arccos(torch.clamp(torch.dot(z_a / z_a.norm(), z_b / z_b.norm()), -1, 1))
    if omega.abs() < 1e-6:
        return (1 - t) * z_a + t * z_b
    return (torch.sin((1 - t) * omega) * z_a + torch.sin(t * omega) * z_b) / torch.sin(omega)


class GANRun(GeneratorRun):
    """A GAN run folder (kind "gan"); G runs in eval mode (BatchNorm running statistics)."""

    kind = "gan"

    def __init__(self, path: Path, config: dict[str, Any], device: torch.device, weights: str = "auto"):
        super().__init__(path, config, device)
        where = f"{path}/config.json"
        self.model_config = from_dict(DCGANConfig, config["model"], where)
        self.gan_config = from_dict(GANConfig, config["gan"], where)
        self.G = Generator(self.model_config).to(device).eval().requires_grad_(False)
        if weights == "auto":
            weights = "ema" if (self.path / "ema.safetensors").is_file() else "model"
        if not (self.path / f"{weights}.safetensors").is_file():
            raise RunError(f"{path}: no {weights}.safetensors (has the run saved a checkpoint yet?)")
        self.step = load_weights(self.path / f"{weights}.safetensors", self.G, device)

    def discriminator(self) -> Discriminator:
        """The trained D (from ``disc.safetensors``), in eval mode."""
        D = Discriminator(self.model_config).to(self.device).eval().requires_grad_(False)
        load_weights(self.path / "disc.safetensors", D, self.device)
        return D

    def nfe(self, options: SampleOptions) -> int:
        return 1

    def describe(self, options: SampleOptions) -> str:
        return f"GAN: G(z), z ~ N(0, I) ({self.gan_config.g_loss} cost)"

    @torch.no_grad()
    def sample_batch(self, n: int, generator: torch.Generator, options: SampleOptions) -> torch.Tensor:
        z = torch.randn((n, self.model_config.z_dim), generator=generator, device=self.device)   # z ~ p(z)
        return self.G(z)                                                                          # (n, C, H, W)

    @torch.no_grad()
    def interpolate(self, z_a: torch.Tensor, z_b: torch.Tensor, steps: int) -> torch.Tensor:
        """G along the great circle from z_a to z_b: (steps, C, H, W), ends included."""
        if steps < 2:
            raise TrilemmaError(f"--steps: an interpolation needs at least 2 images, got {steps}")
        t = torch.linspace(0, 1, steps, device=self.device)[:, None]                            # (steps, 1)
        return self.G(slerp(z_a.to(self.device), z_b.to(self.device), t))
