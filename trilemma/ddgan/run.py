"""A trained denoising diffusion GAN loaded from its run folder: T generator calls per image (docs/methods.md §11).

``config.json`` has ``"kind": "ddgan"``, ``"model"`` (:class:`DDGANNetConfig`) and ``"ddgan"``
(:class:`DDGANConfig`). Weights: ``model.safetensors`` = G, ``disc.safetensors`` = D,
``ema.safetensors`` = the EMA of G (used when present). Sampling is
:func:`~trilemma.ddgan.diffusion.ddgan_sample` from x_T ~ N(0, I); the diffusion samplers'
options (``--sampler``, ``--steps`` …) do not apply and are ignored, as for GAN runs.

A latent run (``config.json["autoencoder"]``, trained with ``--autoencoder``) diffuses the scaled
latents of its copy of the autoencoder (``RUN/autoencoder``, checked by SHA-256) and decodes the
final x₀; trajectories stay in latent space and are decoded by :meth:`DDGANRun.decode`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trilemma.autoencoder.run import run_autoencoder
from trilemma.config import from_dict
from trilemma.ddgan.config import DDGANConfig, DDGANNetConfig
from trilemma.ddgan.diffusion import ddgan_sample, ddgan_schedule
from trilemma.ddgan.networks import make_discriminator, make_generator
from trilemma.errors import RunError
from trilemma.run import GeneratorRun, SampleOptions, load_weights


class DDGANRun(GeneratorRun):
    """A DDGAN run folder (kind "ddgan"): x_T ~ N(0, I), then T steps x_{t−1} ~ q(x_{t−1} | x_t, G(x_t, z, t))."""

    kind = "ddgan"
    reports_steps = True

    def __init__(self, path: Path, config: dict[str, Any], device: torch.device, weights: str = "auto"):
        super().__init__(path, config, device)
        where = f"{path}/config.json"
        self.net_config = from_dict(DDGANNetConfig, config["model"], where)
        self.ddgan = from_dict(DDGANConfig, config["ddgan"], where)
        self.schedule = ddgan_schedule(self.ddgan)
        self.G = make_generator(self.net_config, self.ddgan.z_dim, self.ddgan).to(device).eval().requires_grad_(False)
        if weights == "auto":
            weights = "ema" if (self.path / "ema.safetensors").is_file() else "model"
        if not (self.path / f"{weights}.safetensors").is_file():
            raise RunError(f"{path}: no {weights}.safetensors (has the run saved a checkpoint yet?)")
        self.step = load_weights(self.path / f"{weights}.safetensors", self.G, device)
        self.autoencoder = run_autoencoder(self.path, config, device) if config.get("autoencoder") else None
        if self.autoencoder is not None and self.autoencoder.latent_shape != self.x_shape:
            raise RunError(f"{where}: the generator's input {self.x_shape} does not match the autoencoder's "
                           f"latents {self.autoencoder.latent_shape}")

    @property
    def x_shape(self) -> tuple[int, int, int]:
        """The diffused variable: the image (C, H, W), or in a latent run the scaled latent (c, h, w)."""
        c = self.net_config
        return (c.channels, c.image_size, c.image_size)

    @property
    def model(self) -> torch.nn.Module:
        """The sampling network (G), under the name the other runs use."""
        return self.G

    def discriminator(self) -> torch.nn.Module:
        """The trained D (from ``disc.safetensors``), in eval mode."""
        D = make_discriminator(self.net_config).to(self.device).eval().requires_grad_(False)
        load_weights(self.path / "disc.safetensors", D, self.device)
        return D

    def nfe(self, options: SampleOptions) -> int:
        return self.ddgan.T

    def steps_per_batch(self, options: SampleOptions) -> int:
        return self.ddgan.T

    def describe(self, options: SampleOptions) -> str:
        if self.autoencoder is None:
            return f"DDGAN {self.ddgan.T} steps"
        c, h, w = self.x_shape
        return f"DDGAN {self.ddgan.T} steps on {c}×{h}×{w} latents (f = {self.autoencoder.model_config.factor})"

    def decode(self, x_0: torch.Tensor) -> torch.Tensor:
        """The diffused variable as images in [−1, 1]: pixels as they are, scaled latents through D(z / s)."""
        return x_0 if self.autoencoder is None else self.autoencoder.decode(x_0)

    @torch.no_grad()
    def sample_batch(self, n: int, generator: torch.Generator, options: SampleOptions,
                     return_trajectory: bool = False, callback=None, x_T: torch.Tensor | None = None):
        """n images in [-1, 1] from T calls of G (the EMA weights when present); ``callback(t, x_t, x̂₀)`` per step.

        ``return_trajectory``: also {"t": [T..1], "x_t": [x_T, x_{T−1}, …, x_0], "x0_hat": [per step]} on the CPU.
        """
        if x_T is None:
            x_T = torch.randn((n, *self.x_shape), generator=generator, device=self.device)
        traj: dict[str, list] = {"t": [], "x_t": [x_T.cpu()], "x0_hat": []}

        def step(t: int, x_t: torch.Tensor, x0_hat: torch.Tensor) -> None:
            if return_trajectory:
                if traj["t"]:
                    traj["x_t"].append(x_t.cpu())                     # x_t of this step = x_{t} after the last one
                traj["t"].append(t)
                traj["x0_hat"].append(x0_hat.cpu())
            if callback is not None:
                callback(t, x_t, x0_hat)

        x_0 = ddgan_sample(self.G, x_T, self.schedule, self.G.z_numel, generator=generator, callback=step)
        if return_trajectory:
            traj["x_t"].append(x_0.cpu())
            return self.decode(x_0), traj
        return self.decode(x_0)
