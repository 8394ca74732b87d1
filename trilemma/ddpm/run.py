"""A trained diffusion model: U-Net + schedule + parameterisation, and how to sample it.

:class:`DiffusionConfig` is the ``"diffusion"`` section of a run's
``config.json``; :class:`DiffusionRun` loads a run folder and draws images with
DDPM or DDIM through the shared samplers. Latent and text-conditioned runs
subclass it and override :meth:`DiffusionRun.decode` / :meth:`DiffusionRun.conditioning`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trilemma.config import from_dict
from trilemma.ddpm.config import DiffusionConfig
from trilemma.diffusion.denoiser import Denoiser
from trilemma.diffusion.samplers import (
    DEFAULT_STEPS,
    SAMPLERS,
    check_sampling,
    ddim_timesteps,
    sample_with,
    solver_nfe,
    solver_points,
    solver_timesteps,
)
from trilemma.diffusion.schedule import NoiseSchedule, make_schedule
from trilemma.errors import RunError, TrilemmaError
from trilemma.nets.unet import UNet, UNetConfig
from trilemma.run import GeneratorRun, SampleOptions, load_weights


class DiffusionRun(GeneratorRun):
    """A pixel-space diffusion run folder (kind "ddpm") loaded for sampling."""

    kind = "ddpm"
    reports_steps = True
    uses_sampler = True
    takes_label = True                  # conditioning() refuses it on runs without classes

    def __init__(self, path: Path, config: dict[str, Any], device: torch.device, weights: str = "auto"):
        super().__init__(path, config, device)
        self.diffusion = from_dict(DiffusionConfig, config["diffusion"], where=f"{path}/config.json")
        self.unet_config = from_dict(UNetConfig, config["model"], where=f"{path}/config.json")
        self.schedule: NoiseSchedule = make_schedule(self.diffusion.schedule)
        self.model = self.build_model().to(device).eval().requires_grad_(False)
        if weights == "auto":
            weights = "ema" if (self.path / "ema.safetensors").is_file() else "model"
        if not (self.path / f"{weights}.safetensors").is_file():
            raise RunError(f"{path}: no {weights}.safetensors (has the run saved a checkpoint yet?)")
        self.step = load_weights(self.path / f"{weights}.safetensors", self.model, device)

    # ------------------------------------------------------------------ hooks for subclasses
    def build_model(self) -> torch.nn.Module:
        """The network the weights load into (the U-Net of ``self.unet_config``)."""
        return UNet(self.unet_config)

    @property
    def x_shape(self) -> tuple[int, int, int]:
        """Shape of the diffused variable x_t (pixels here; latents in a latent run)."""
        c = self.unet_config
        return (c.in_channels, c.image_size, c.image_size)

    def decode(self, x_0: torch.Tensor) -> torch.Tensor:
        """Diffused variable -> image in [-1, 1] (identity in pixel space)."""
        return x_0

    def check_options(self, options: SampleOptions) -> None:
        """The sampler options (:func:`~trilemma.diffusion.samplers.check_sampling`); ``--label`` only on
        class-conditional runs, and within their classes."""
        check_sampling(options.sampler, options.steps, options.eta, options.variance, options.spacing)
        if options.label is None:
            return
        if not self.diffusion.class_cond:
            raise TrilemmaError(f"--label: {self.path} is not class-conditional")
        if not -1 <= options.label < self.unet_config.num_classes:
            raise TrilemmaError(f"--label: must be in 0..{self.unet_config.num_classes - 1}, got {options.label}")

    def conditioning(self, n: int, options: SampleOptions) -> tuple[dict | None, dict | None]:
        """(cond, uncond) inputs of the network for a batch of n."""
        self.check_options(options)
        if not self.diffusion.class_cond:
            return None, None
        label = -1 if options.label is None else options.label
        y = torch.full((n,), label, device=self.device, dtype=torch.long)
        return {"y": y}, {"y": torch.full_like(y, -1)}

    # ------------------------------------------------------------------ sampling
    def denoiser(self, options: SampleOptions, uncond: dict | None = None) -> Denoiser:
        clip = self.diffusion.clip if options.clip is None else options.clip
        guidance = options.guidance if uncond is not None else 1.0
        return Denoiser(self.model, self.diffusion.prediction, clip=(-1.0, 1.0) if clip else None,
                        guidance=guidance, uncond=uncond, sigma_data=self.diffusion.data_std)

    def timesteps(self, options: SampleOptions):
        T = self.schedule.T
        if options.sampler == "ddim":
            return ddim_timesteps(T, options.steps or 50, options.spacing)
        if options.sampler == "ddpm":
            S = options.steps or T
            return None if S == T else ddim_timesteps(T, S, options.spacing)
        if options.sampler in SAMPLERS:                   # the fast solvers (docs/methods.md §10)
            return solver_timesteps(self.schedule, solver_points(options.sampler, options.steps or DEFAULT_STEPS),
                                    options.spacing)
        raise TrilemmaError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {options.sampler!r}")

    def nfe(self, options: SampleOptions) -> int:
        steps = self.timesteps(options)
        n = self.schedule.T if steps is None else len(steps)
        if options.sampler not in ("ddpm", "ddim"):       # network evaluations, counted honestly (Heun: 2 a step)
            n = solver_nfe(options.sampler, options.steps or DEFAULT_STEPS)
        cond, uncond = self.conditioning(1, options)
        return n * (2 if uncond is not None and options.guidance != 1.0 else 1)

    def steps_per_batch(self, options: SampleOptions) -> int:
        steps = self.timesteps(options)
        return self.schedule.T if steps is None else len(steps)

    def describe(self, options: SampleOptions) -> str:
        steps = self.timesteps(options)
        n = self.schedule.T if steps is None else len(steps)
        return f"{options.sampler.upper()} {n} steps"

    def sample_batch(self, n: int, generator: torch.Generator, options: SampleOptions,
                     return_trajectory: bool = False, callback=None, x_T: torch.Tensor | None = None):
        if x_T is None:
            x_T = torch.randn((n, *self.x_shape), generator=generator, device=self.device)
        cond, uncond = self.conditioning(n, options)
        denoiser = self.denoiser(options, uncond)
        steps = self.timesteps(options)
        del steps
        out = sample_with(options.sampler, denoiser, x_T, self.schedule, steps=options.steps, spacing=options.spacing,
                          eta=options.eta, variance=options.variance, cond=cond, generator=generator,
                          callback=callback, return_trajectory=return_trajectory)
        if return_trajectory:
            x_0, traj = out
            return self.decode(x_0), traj
        return self.decode(out)
