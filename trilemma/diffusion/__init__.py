"""Denoising diffusion: noise schedules, the forward process, losses and samplers.

- :mod:`.schedule` — β_t, ᾱ_t and every derived coefficient, precomputed in float64 (docs/methods.md §4).
- :mod:`.denoiser` — turns any network (ε-, v- or x₀-prediction) into (ε̂, x̂₀) for the samplers.
- :mod:`.losses` — the training objective of Algorithm 1 (Ho et al. 2020), per sample.
- :mod:`.samplers` — DDPM ancestral sampling (Algorithm 2) and DDIM, as pure functions.
"""

from trilemma.diffusion.denoiser import Denoiser
from trilemma.diffusion.losses import diffusion_loss
from trilemma.diffusion.samplers import ddim_sample, ddim_timesteps, ddpm_sample
from trilemma.diffusion.schedule import NoiseSchedule, ScheduleConfig, make_schedule

__all__ = ["NoiseSchedule", "ScheduleConfig", "make_schedule", "Denoiser", "diffusion_loss",
           "ddpm_sample", "ddim_sample", "ddim_timesteps"]
