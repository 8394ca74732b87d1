"""DDPM and DDIM sampling as pure functions (METHODS.md §5–6).

Each sampler takes the denoiser, the starting noise x_T, the schedule (and, for
DDIM, the steps it walks), the conditioning and a ``torch.Generator``; it keeps
no state between calls and needs no set-up call first. Every random draw goes
through ``generator``, so the same seed gives the same images. Progress is
reported through ``callback(i, t, x_t, x0_hat)``.

Steps are 1-based as in the papers: t ∈ {1..T}, with ᾱ_0 = 1 meaning "clean".
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from trilemma.diffusion.denoiser import Denoiser
from trilemma.diffusion.schedule import NoiseSchedule
from trilemma.errors import TrilemmaError

Variance = Literal["beta", "beta_tilde"]
Spacing = Literal["leading", "trailing", "linspace"]
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _trajectory(x_T: torch.Tensor) -> dict[str, list]:
    return {"t": [], "x_t": [x_T.cpu()], "x0_hat": []}


@torch.no_grad()
def ddpm_step(denoiser: Denoiser, x_t: torch.Tensor, t: int, schedule: NoiseSchedule, *,
              variance: Variance = "beta_tilde", cond: dict[str, Any] | None = None,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Algorithm 2: x_t -> (x_{t−1}, x̂₀).

    x_{t−1} = 1/√α_t · (x_t − β_t/√(1 − ᾱ_t) · ε̂) + σ_t z,  z ~ N(0, I) if t > 1 else 0.
    """
    eps_hat, x0_hat = denoiser(x_t, int(schedule.model_t[t]), float(schedule.alpha_bar[t]), cond)
    coef = schedule.betas[t] / schedule.sqrt_one_minus_alpha_bar[t]             # β_t / √(1 − ᾱ_t)
    mean = (x_t - coef * eps_hat) / math.sqrt(schedule.alphas[t])                # μ_θ(x_t, t)
    if t == 1:
        return mean, x0_hat
    sigma2 = schedule.betas[t] if variance == "beta" else schedule.posterior_var[t]
    return mean + math.sqrt(sigma2) * _noise_like(x_t, generator), x0_hat


@torch.no_grad()
def ddpm_sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule, *,
                variance: Variance = "beta_tilde", cond: dict[str, Any] | None = None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                return_trajectory: bool = False):
    """Ancestral sampling, Algorithm 2 of Ho et al. (2020).

    for t = T..1:  z ~ N(0, I) if t > 1 else 0
                   x_{t−1} = 1/√α_t · (x_t − β_t/√(1 − ᾱ_t) · ε̂) + σ_t z
    with σ_t² = β_t ("beta", fixed large) or β̃_t ("beta_tilde", fixed small).
    ``schedule`` may be respaced (:meth:`NoiseSchedule.respace`) to walk fewer steps.

    Returns x_0, or (x_0, trajectory) with CPU copies of x_t and x̂₀ per step.
    """
    if variance not in ("beta", "beta_tilde"):
        raise TrilemmaError(f"--variance: expected 'beta' or 'beta_tilde', got {variance!r}")
    traj = _trajectory(x_T) if return_trajectory else None
    x_t = x_T
    for i, t in enumerate(range(schedule.T, 0, -1)):
        x_t, x0_hat = ddpm_step(denoiser, x_t, t, schedule, variance=variance, cond=cond, generator=generator)
        if traj is not None:
            traj["t"].append(t)
            traj["x_t"].append(x_t.cpu())
            traj["x0_hat"].append(x0_hat.cpu())
        if callback is not None:
            callback(i, t, x_t, x0_hat)
    return (x_t, traj) if return_trajectory else x_t


def ddim_timesteps(T: int, S: int, spacing: Spacing = "leading") -> np.ndarray:
    """S increasing steps τ_1 < … < τ_S from {1..T}.

    The three spacings of Lin et al. (2024, Table 2), written in 1-based steps:
    ``leading``  τ_i = (i−1)·⌊T/S⌋ + 1 (DDIM's original choice; never reaches T),
    ``trailing`` τ_i = round(T − (S−i)·T/S) (ends exactly at T),
    ``linspace`` τ_i = round((i−1)(T−1)/(S−1)) + 1 (both ends).
    """
    if spacing not in SPACINGS:
        raise TrilemmaError(f"--spacing: expected one of {', '.join(SPACINGS)}, got {spacing!r}")
    if not 1 <= S <= T:
        raise TrilemmaError(f"--steps: must be between 1 and T={T}, got {S}")
    if spacing == "leading":
        taus = np.arange(S, dtype=np.int64) * (T // S) + 1
    elif spacing == "trailing":
        taus = np.round(np.arange(T, 0, -T / S))[::-1].astype(np.int64)
    else:
        taus = np.round(np.linspace(0, T - 1, S)).astype(np.int64) + 1 if S > 1 else np.array([T])
    if len(np.unique(taus)) != len(taus):
        raise TrilemmaError(f"--steps {S} with {spacing} spacing repeats a step; use fewer steps")
    return taus


@torch.no_grad()
def ddim_step(denoiser: Denoiser, x_t: torch.Tensor, t: int, t_prev: int, schedule: NoiseSchedule, *,
              eta: float = 0.0, cond: dict[str, Any] | None = None,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> (x_{t_prev}, x̂₀) (Song et al. 2021, eq. 12); t_prev = 0 means ᾱ = 1."""
    ab_t, ab_prev = float(schedule.alpha_bar[t]), float(schedule.alpha_bar[t_prev])
    eps_hat, x0_hat = denoiser(x_t, int(schedule.model_t[t]), ab_t, cond)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)
    x_prev = math.sqrt(ab_prev) * x0_hat + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps_hat
    if sigma > 0:
        x_prev = x_prev + sigma * _noise_like(x_t, generator)
    return x_prev, x0_hat


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[int], *,
                eta: float = 0.0, cond: dict[str, Any] | None = None, generator: torch.Generator | None = None,
                callback: Callback | None = None, return_trajectory: bool = False):
    """DDIM sampling on the steps ``timesteps`` (Song et al. 2021, eq. 12 and 16).

    At each τ_i, with τ_0 = 0 (ᾱ = 1, so the last step returns x̂₀):
        x̂₀ = (x_τi − √(1 − ᾱ_τi) ε̂) / √ᾱ_τi
        σ  = η · √((1 − ᾱ_τi−1)/(1 − ᾱ_τi)) · √(1 − ᾱ_τi/ᾱ_τi−1)
        x_τi−1 = √ᾱ_τi−1 x̂₀ + √(1 − ᾱ_τi−1 − σ²) ε̂ + σ z
    η = 0 is deterministic; η = 1 on all T steps is DDPM with σ² = β̃.
    The previous step always comes from ``timesteps`` itself, never from t − stride.
    """
    if not 0.0 <= eta <= 1.0:
        raise TrilemmaError(f"--eta: must be in [0, 1], got {eta}")
    taus = [0] + [int(t) for t in timesteps]
    if any(b <= a for a, b in zip(taus, taus[1:])) or taus[-1] > schedule.T:
        raise TrilemmaError(f"DDIM timesteps must be increasing values in 1..{schedule.T}")
    traj = _trajectory(x_T) if return_trajectory else None
    x_t = x_T
    for i in range(len(taus) - 1, 0, -1):
        t, t_prev = taus[i], taus[i - 1]
        x_t, x0_hat = ddim_step(denoiser, x_t, t, t_prev, schedule, eta=eta, cond=cond, generator=generator)
        if traj is not None:
            traj["t"].append(t)
            traj["x_t"].append(x_t.cpu())
            traj["x0_hat"].append(x0_hat.cpu())
        if callback is not None:
            callback(len(taus) - 1 - i, t, x_t, x0_hat)
    return (x_t, traj) if return_trajectory else x_t
