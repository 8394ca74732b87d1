"""Image-to-image with a prompt: SDEdit (Meng et al. 2022; docs/methods.md §8.3), with every sampler of §5, §6, §10.

    z_0  = E(x)                                   (the run's space: patches or scaled latents)
    t₀   = round(strength · T)
    then the reverse process from t₀ down to 0 with the prompt (and guidance), and x = D(z_0)

How every sampler starts at t₀ (:func:`edit_plan`, :func:`sdedit_sample`): the reverse process is
run on the schedule **truncated** to its first t₀ steps — the same β_1..β_t₀, so the same ᾱ, σ̃ =
√((1 − ᾱ)/ᾱ), λ and network steps as the full schedule, only T' = t₀. Every sampler then picks its
steps on 1..t₀ exactly as it does on 1..T (same ``--spacing``: karras/logsnr put σ̃_max = σ̃_t₀ and
σ̃_min = σ̃_1), and starts from its first (largest) step t_s (= t₀ except for ``leading``
spacing, which never reaches the top), noised in closed form

    z_ts = √ᾱ_ts z_0 + √(1 − ᾱ_ts) ε,   ε ~ N(0, I).

This is the variance-preserving x_t each sampler expects: the σ-parameterised solvers (Euler,
Heun; §10.5) divide it by √ᾱ_ts themselves, giving x̃ = z_0 + σ̃_ts ε, the VE state at σ̃_ts — no
other rescaling is needed (and none must be added). With strength 1 the truncated schedule is
the full one and the edit is exactly plain sampling from x_T = √ᾱ_T z_0 + √(1 − ᾱ_T) ε.

The budget: ``--steps`` S network evaluations for a full generation become ⌈strength · S⌉ for the
edit (as diffusers' img2img); Heun walks ⌊(that + 1)/2⌋ steps (2N − 1 evaluations). On the whole
steps (ddpm, ddim, and the solvers with leading/trailing/linspace) at most t₀ steps are walked.
DDPM without ``--steps`` walks all t₀ steps. strength 0 (t₀ = 0) returns D(E(x)) (the input
itself in pixel space).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from trilemma.diffusion.samplers import (
    DEFAULT_STEPS,
    SAMPLERS,
    SPACINGS,
    alpha_bar_at,
    ddim_timesteps,
    default_spacing,
    sample_with,
    solver_nfe,
    solver_points,
    solver_timesteps,
)
from trilemma.diffusion.schedule import NoiseSchedule
from trilemma.errors import TrilemmaError
from trilemma.run import SampleOptions


def truncated_schedule(schedule: NoiseSchedule, t0: int) -> NoiseSchedule:
    """The first ``t0`` steps of ``schedule``: β_1..β_t₀ and their network steps, so ᾱ_t, σ̃_t, λ_t are unchanged.

    ``schedule`` itself when t₀ = T (so strength 1 is bit-for-bit plain sampling).
    """
    if not 1 <= t0 <= schedule.T:
        raise TrilemmaError(f"t₀ must be in 1..{schedule.T}, got {t0}")
    if t0 == schedule.T:
        return schedule
    return NoiseSchedule(betas=schedule.betas[:t0 + 1], model_t=schedule.model_t[:t0 + 1], config=None)


@dataclass(frozen=True)
class EditPlan:
    """What an SDEdit walks: t₀, the ``--steps`` given to the sampler on the truncated schedule, its steps, NFE.

    ``steps`` is None only for DDPM without ``--steps`` (all t₀ steps); ``timesteps`` are the
    increasing steps walked (fractional for karras/logsnr), empty when t₀ = 0; ``start`` is
    the largest of them, where the input is noised to; ``nfe`` counts network evaluations per
    image (without guidance).
    """

    sampler: str
    spacing: str
    t0: int
    steps: int | None
    timesteps: tuple
    nfe: int

    @property
    def start(self) -> float:
        return self.timesteps[-1] if self.timesteps else 0

    @property
    def points(self) -> int:
        """Sampler steps (progress-bar ticks): one per time walked."""
        return len(self.timesteps)


def _budget(steps: int | None, strength: float) -> int:
    """⌈strength · S⌉ (at least 1), rounding away float noise such as 0.6 · 50 = 30.000000000000004."""
    return max(1, math.ceil(round((steps or DEFAULT_STEPS) * strength, 9)))


def edit_plan(schedule: NoiseSchedule | int, strength: float, sampler: str = "ddim", steps: int | None = None,
              spacing: str | None = None) -> EditPlan:
    """The :class:`EditPlan` of an edit with ``strength`` (t₀ = round(strength · T)).

    ``schedule`` may be just T for the whole-step spacings (leading, trailing, linspace).
    ``spacing`` None: the sampler's default (:func:`~trilemma.diffusion.samplers.default_spacing`).
    """
    if not 0.0 <= strength <= 1.0:
        raise TrilemmaError(f"--strength: must be in [0, 1], got {strength}")
    if sampler not in SAMPLERS:
        raise TrilemmaError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if spacing is None:
        spacing = default_spacing(sampler, steps)
    T = schedule if isinstance(schedule, int) else schedule.T
    t0 = round(strength * T)
    if t0 == 0:
        return EditPlan(sampler, spacing, 0, steps, (), 0)
    if sampler == "ddpm" and steps is None:
        return EditPlan(sampler, spacing, t0, None, tuple(range(1, t0 + 1)), t0)
    budget = _budget(steps, strength)
    if sampler in ("ddpm", "ddim"):
        if spacing not in SPACINGS:
            raise TrilemmaError(f"--spacing {spacing}: {sampler} walks whole steps; use {', '.join(SPACINGS)}")
        budget = min(budget, t0)
        taus = ddim_timesteps(t0, budget, spacing)
    else:
        if spacing in SPACINGS:                          # whole steps: at most t₀ of them
            budget = min(budget, 2 * t0 - 1 if sampler == "heun" else t0)
        elif isinstance(schedule, int):
            raise TrilemmaError(f"--spacing {spacing}: edit_plan needs the schedule, not only T")
        sub = truncated_schedule(schedule, t0) if not isinstance(schedule, int) else None
        taus = (ddim_timesteps(t0, solver_points(sampler, budget), spacing) if sub is None
                else solver_timesteps(sub, solver_points(sampler, budget), spacing))
        return EditPlan(sampler, spacing, t0, budget, tuple(_number(t) for t in taus), solver_nfe(sampler, budget))
    return EditPlan(sampler, spacing, t0, budget, tuple(int(t) for t in taus), budget)


def _number(t: float) -> int | float:
    return int(t) if float(t).is_integer() else float(t)


def edit_timesteps(T: int, strength: float, sampler: str, steps: int | None, spacing: str = "trailing") -> list:
    """Increasing steps in 1..t₀ that an edit walks; for trailing/linspace they end exactly at t₀ = round(strength · T).

    Empty when t₀ = 0. See :func:`edit_plan`.
    """
    return list(edit_plan(T, strength, sampler, steps, spacing).timesteps)


@torch.no_grad()
def sdedit_sample(sampler: str, denoiser, z_0: torch.Tensor, eps: torch.Tensor, schedule: NoiseSchedule,
                  plan: EditPlan, *, eta: float | None = None, variance: str = "beta_tilde",
                  cond: dict[str, Any] | None = None, generator: torch.Generator | None = None, callback=None,
                  return_trajectory: bool = False):
    """SDEdit as a pure function: noise ``z_0`` with ``eps`` to the plan's start, then run ``sampler`` to 0.

        z_ts = √ᾱ_ts z_0 + √(1 − ᾱ_ts) ε,  then  sample_with(sampler, …, schedule truncated to t₀)

    Returns z_0 itself when t₀ = 0, else what :func:`~trilemma.diffusion.samplers.sample_with`
    returns (x_0, or (x_0, trajectory)).
    """
    if plan.t0 == 0:
        return (z_0, {"t": [], "x_t": [z_0.cpu()], "x0_hat": []}) if return_trajectory else z_0
    if plan.sampler != sampler:
        raise TrilemmaError(f"the edit plan is for {plan.sampler}, not {sampler}")
    ab = alpha_bar_at(schedule, plan.start)
    z_start = math.sqrt(ab) * z_0 + math.sqrt(1.0 - ab) * eps
    sub = truncated_schedule(schedule, plan.t0)
    return sample_with(sampler, denoiser, z_start, sub, steps=plan.steps, spacing=plan.spacing, eta=eta,
                       variance=variance, cond=cond, generator=generator, callback=callback,
                       return_trajectory=return_trajectory)


@torch.no_grad()
def edit_images(run, images: torch.Tensor, prompt: str, strength: float, options: SampleOptions | None = None,
                generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """SDEdit ``images`` (B, C, H, W) in [-1, 1] towards ``prompt``; returns images in [-1, 1] on the run's device.

    ``run`` is a :class:`~trilemma.t2i.run.TextDiffusionRun`; ``options`` sets the sampler,
    steps, spacing, η, guidance and negative prompt (its ``prompt`` is replaced by ``prompt``).
    The noise ε is the first draw from ``generator`` (default ``run.generator(0)``), the
    sampler's own noise (DDPM, η > 0, SDE) comes after it.
    """
    options = dataclasses.replace(options or SampleOptions(), prompt=prompt)
    if tuple(images.shape[1:]) != run.image_shape:
        raise TrilemmaError(f"the input image is {tuple(images.shape[1:])}, the run makes {run.image_shape}")
    plan = edit_plan(run.schedule, strength, options.sampler, options.steps, options.spacing)
    z_0 = run.encode(images)                                                   # (B, c, h, w)
    if plan.t0 == 0:
        return run.decode(z_0)                                                 # strength 0: the input, D(E(x))
    generator = generator or run.generator(0)
    eps = torch.randn(z_0.shape, generator=generator, device=z_0.device, dtype=z_0.dtype)
    cond, uncond = run.conditioning(len(z_0), options)
    denoiser = run.denoiser(options, uncond)
    z = sdedit_sample(options.sampler, denoiser, z_0, eps, run.schedule, plan, eta=options.eta,
                      variance=options.variance, cond=cond, generator=generator, callback=callback)
    return run.decode(z)


def load_image(path, image_size: int, channels: int) -> torch.Tensor:
    """An image file as (1, C, H, W) in [-1, 1], converted and centre-cropped like the dataset's images."""
    from PIL import Image, UnidentifiedImageError

    from trilemma.data import to_float
    from trilemma.data.transforms import fit_square, image_to_array, to_mode

    try:
        with Image.open(path) as image:
            array = image_to_array(fit_square(to_mode(image, channels), image_size))
    except FileNotFoundError:
        raise TrilemmaError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise TrilemmaError(f"{path}: not a readable image ({e})") from None
    return to_float(torch.from_numpy(array.copy()))[None]
