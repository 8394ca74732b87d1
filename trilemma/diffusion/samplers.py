"""Diffusion samplers as pure functions: DDPM, DDIM and fast ODE/SDE solvers (docs/methods.md §5, §6, §10).

Each sampler takes the denoiser, the starting noise x_T, the schedule (and the
steps it walks), the conditioning and a ``torch.Generator``; it keeps no state
between calls and needs no set-up call first. Every random draw goes through
``generator``, so the same seed gives the same images. Progress is reported
through ``callback(i, t, x_t, x0_hat)``. The samplers only call the
:class:`~trilemma.diffusion.denoiser.Denoiser`, which hides ε-, v- or
x₀-prediction, clipping and classifier-free guidance.

Steps are 1-based as in the papers: t ∈ {1..T}, with ᾱ_0 = 1 meaning "clean".

The solvers of docs/methods.md §10
----------------------------------
Write α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), the log-SNR λ_t = log(α_t/σ_t), and D_i for
the denoiser's x̂₀ at the i-th time t_i walked (t_0 > t_1 > … > t_N = 0, h_i =
λ_{t_{i+1}} − λ_{t_i}). Every solver ends at t_N = 0 where σ = 0 and λ = +∞, so
its last step returns x̂₀ itself: no noise is left in the output.

``ddim``          (Song et al. 2021) the first-order exponential integrator
                  x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1} (1 − e^{−h_i}) D_i  (η = 0).
``dpmpp-2m``      DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), multistep, data prediction:
                  r = h_{i−1}/h_i,  D' = (1 + 1/(2r)) D_i − 1/(2r) D_{i−1},
                  x_{i+1} = (σ_{i+1}/σ_i) x_i − α_{i+1} (e^{−h_i} − 1) D'.
                  The first step has no D_{i−1} and the last one lands on σ = 0 (h = ∞),
                  so both are first order (D' = D_i): diffusers' ``final_sigmas_type="zero"``
                  (whatever the number of steps; its ``lower_order_final`` < 15 rule is subsumed).
``dpmpp-2m-sde``  the SDE form of DPM-Solver++(2M) (Lu et al. 2022; η scales the injected noise):
                  x_{i+1} = (σ_{i+1}/σ_i) e^{−ηh} x_i + α_{i+1} (1 − e^{−(1+η)h}) D'
                            + σ_{i+1} √(1 − e^{−2ηh}) z,
                  η = 1 is diffusers' ``sde-dpmsolver++``, η = 0 is exactly ``dpmpp-2m``.
``unipc``         UniPC (Zhao et al. 2023) with B(h) = e^{h} − 1 ("bh2"),
                  data prediction. Predictor UniP-p from the last p values of D, then, once
                  the network has been evaluated at the new point, corrector UniC-p re-does
                  the step using that evaluation too (no extra evaluation). Order 2 by
                  default (3 allowed); the first steps warm up and the last steps drop in
                  order as in diffusers (``lower_order_final``); after the final step there
                  is no evaluation, so no correction.
``euler``/``heun`` Karras et al. (2022), σ-parameterisation: x̃ = x/α = x₀ + σ̃ n with
                  σ̃ = σ/α = √((1 − ᾱ)/ᾱ); the network sees x̃·α at ᾱ = 1/(1 + σ̃²).
                  ODE dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃ =: d.  Euler: x̃_{i+1} = x̃_i + (σ̃_{i+1} − σ̃_i) d_i.
                  Heun (Algorithm 1): an Euler step, a second evaluation there, then the
                  average slope; the last step to σ̃ = 0 stays Euler (2N − 1 evaluations).
                  Euler with η > 0 is the ancestral sampler (step to σ_down, add σ_up z);
                  it is DDIM with the same η, written in x̃ (an identity the tests check).

Time grids (:func:`solver_timesteps`): the DDIM spacings leading / trailing /
linspace on integer steps, ``karras`` (σ̃_i = (σ̃_max^{1/ρ} + i/(N−1)(σ̃_min^{1/ρ} −
σ̃_max^{1/ρ}))^ρ, ρ = 7) and ``logsnr`` (uniform in λ). Those two fall between
integer steps; a σ̃ maps to a fractional step by linear interpolation of log σ̃
between neighbouring steps (:func:`time_at_sigma`), and back (:func:`alpha_bar_at`).

Defaults, the best measured (docs/sampling.md): the sampler ``auto`` is UniPC below 20 evaluations
and DPM-Solver++(2M) SDE from 20 (:func:`auto_sampler`); without ``--spacing``, ddpm and ddim walk
``trailing`` whole steps and the solvers the ``karras`` grid from 8 evaluations, ``trailing``
below (:func:`default_spacing`).

``--steps`` counts network evaluations (NFE) for every sampler: see
:func:`solver_nfe`. Heun walks ⌊(steps + 1)/2⌋ times, so 2N − 1 ≤ steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from trilemma.diffusion.denoiser import Denoiser
from trilemma.diffusion.schedule import NoiseSchedule
from trilemma.errors import TrilemmaError

Variance = Literal["beta", "beta_tilde"]
Spacing = Literal["leading", "trailing", "linspace"]
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
Callback = Callable[[int, int | float, torch.Tensor, torch.Tensor], None]


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


# ===================================================================== fast solvers (docs/methods.md §10)

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmpp-2m", "dpmpp-2m-sde", "unipc", "heun", "euler")
SolverSpacing = Literal["leading", "trailing", "linspace", "karras", "logsnr"]
SOLVER_SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace", "karras", "logsnr")
DEFAULT_STEPS = 50            # --steps when not given (ddpm: all T steps)
AUTO = "auto"                 # the default sampler: the best measured for the budget (auto_sampler)
SDE_FROM_NFE = 20             # auto: dpmpp-2m-sde from this many network evaluations, unipc below
KARRAS_FROM_NFE = 8           # the solvers' default spacing: karras from this many evaluations, trailing below
KARRAS_RHO = 7.0              # ρ of Karras et al. (2022), eq. 5
_ETA_SAMPLERS = {"ddim": 0.0, "dpmpp-2m-sde": 1.0, "euler": 0.0}   # samplers that take η, and its default


def _log_sigma(schedule: NoiseSchedule) -> np.ndarray:
    """(T+1,) log σ̃_t = ½ log((1 − ᾱ_t)/ᾱ_t) = −λ_t; entry 0 (clean) is −∞."""
    return -0.5 * schedule.log_snr


def alpha_bar_at(schedule: NoiseSchedule, t: float) -> float:
    """ᾱ at a possibly fractional step t ∈ {0} ∪ [1, T].

    Whole steps read ``schedule.alpha_bar``; between steps log σ̃ is interpolated
    linearly (the inverse of :func:`time_at_sigma`), and ᾱ = 1/(1 + σ̃²).
    """
    t = float(t)
    if t == 0.0:
        return 1.0
    if not 1.0 <= t <= schedule.T:
        raise TrilemmaError(f"solver time {t:g} is outside 1..{schedule.T}")
    lo = math.floor(t)
    w = t - lo
    if w == 0.0:
        return float(schedule.alpha_bar[lo])
    log_sigma = _log_sigma(schedule)
    ls = (1.0 - w) * log_sigma[lo] + w * log_sigma[lo + 1]
    return 1.0 / (1.0 + math.exp(2.0 * ls))


def time_at_sigma(schedule: NoiseSchedule, sigma: np.ndarray | float) -> np.ndarray:
    """The fractional step t ∈ [1, T] where σ̃_t = ``sigma``: linear in log σ̃ between neighbouring steps.

    This is diffusers' ``_sigma_to_t`` written 1-based (their 0-based k is our t − 1);
    values within 1e-9 of a whole step are snapped to it.
    """
    log_sigma = _log_sigma(schedule)[1:]                                        # (T,) increasing in t
    steps = np.arange(1, schedule.T + 1, dtype=np.float64)
    t = np.interp(np.log(np.asarray(sigma, dtype=np.float64)), log_sigma, steps)
    near = np.round(t)
    return np.where(np.abs(t - near) < 1e-9, near, t)


def solver_timesteps(schedule: NoiseSchedule, n: int, spacing: SolverSpacing = "trailing") -> np.ndarray:
    """``n`` increasing (possibly fractional) steps in [1, T] for the solvers; σ = 0 is appended by them.

    ``leading`` / ``trailing`` / ``linspace``: :func:`ddim_timesteps` (whole steps).
    ``karras``: σ̃_i = (σ̃_max^{1/ρ} + i/(n−1) (σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ, ρ = 7, i = 0..n−1,
    between the schedule's σ̃_max = σ̃_T and σ̃_min = σ̃_1 (Karras et al. 2022, eq. 5).
    ``logsnr``: λ uniform between λ_T and λ_1 (Lu et al. 2022, "uniform logSNR").
    """
    if spacing not in SOLVER_SPACINGS:
        raise TrilemmaError(f"--spacing: expected one of {', '.join(SOLVER_SPACINGS)}, got {spacing!r}")
    if spacing in SPACINGS:
        return ddim_timesteps(schedule.T, n, spacing).astype(np.float64)
    if n < 1:
        raise TrilemmaError(f"--steps: must be at least 1, got {n}")
    log_sigma = _log_sigma(schedule)
    ramp = np.linspace(0.0, 1.0, n)                                              # i/(n−1)
    if spacing == "karras":
        s_max, s_min = math.exp(log_sigma[schedule.T]), math.exp(log_sigma[1])
        inv_max, inv_min = s_max ** (1 / KARRAS_RHO), s_min ** (1 / KARRAS_RHO)
        sigmas = (inv_max + ramp * (inv_min - inv_max)) ** KARRAS_RHO
    else:
        sigmas = np.exp(log_sigma[schedule.T] + ramp * (log_sigma[1] - log_sigma[schedule.T]))
    taus = time_at_sigma(schedule, sigmas)[::-1].copy()
    if np.any(np.diff(taus) <= 0):
        raise TrilemmaError(f"--steps {n} with {spacing} spacing repeats a step; use fewer steps")
    return taus


@dataclass(frozen=True, eq=False)
class SolverGrid:
    """The times a solver walks, t_0 > … > t_{N−1} > t_N = 0, and their coefficients (float64).

    ``alpha`` = √ᾱ, ``sigma`` = √(1 − ᾱ), ``sigma_ve`` = σ̃ = σ/α, ``lam`` = λ = log(α/σ)
    (λ_N = +∞, σ_N = 0); ``model_t`` is what the network is told at t_0..t_{N−1}.
    """

    t: np.ndarray              # (N+1,)
    model_t: tuple             # (N,) int for whole steps, float in between
    alpha_bar: np.ndarray      # (N+1,)
    alpha: np.ndarray          # (N+1,)
    sigma: np.ndarray          # (N+1,)
    sigma_ve: np.ndarray       # (N+1,)
    lam: np.ndarray            # (N+1,)

    @property
    def N(self) -> int:
        return len(self.model_t)


def _model_time(schedule: NoiseSchedule, t: float) -> int | float:
    """The network's step for a (fractional) step t of ``schedule``: ``model_t``, interpolated between steps."""
    if float(t).is_integer():
        return int(schedule.model_t[int(t)])
    m = float(np.interp(t, np.arange(schedule.T + 1), schedule.model_t.astype(np.float64)))
    return int(m) if m.is_integer() else m


def solver_grid(schedule: NoiseSchedule, timesteps: Sequence[float]) -> SolverGrid:
    """The :class:`SolverGrid` of increasing ``timesteps`` ⊂ [1, T] followed by the clean end t = 0."""
    taus = np.asarray(timesteps, dtype=np.float64)
    if taus.ndim != 1 or len(taus) == 0 or np.any(np.diff(taus) <= 0) or taus[0] < 1 or taus[-1] > schedule.T:
        raise TrilemmaError(f"solver timesteps must be increasing values in 1..{schedule.T}")
    t = np.concatenate([taus[::-1], [0.0]])
    log_sigma = _log_sigma(schedule)
    alpha_bar = np.array([alpha_bar_at(schedule, s) for s in t])
    ls = np.array([log_sigma[int(s)] if s.is_integer() else 0.5 * (math.log1p(-a) - math.log(a))
                   for s, a in zip(t[:-1], alpha_bar[:-1])] + [-np.inf])           # log σ̃
    sigma_ve = np.exp(ls)
    alpha = 1.0 / np.sqrt(1.0 + sigma_ve**2)
    return SolverGrid(t=t, model_t=tuple(_model_time(schedule, s) for s in t[:-1]), alpha_bar=alpha_bar,
                      alpha=alpha, sigma=sigma_ve * alpha, sigma_ve=sigma_ve, lam=-ls)


def _step_label(t: float) -> int | float:
    return int(t) if float(t).is_integer() else float(t)


class _Recorder:
    """Trajectory and callback bookkeeping shared by the solvers."""

    def __init__(self, x_T: torch.Tensor, callback: Callback | None, return_trajectory: bool):
        self.traj = _trajectory(x_T) if return_trajectory else None
        self.callback = callback

    def __call__(self, i: int, t: float, x_t: torch.Tensor, x0_hat: torch.Tensor) -> None:
        t = _step_label(t)
        if self.traj is not None:
            self.traj["t"].append(t)
            self.traj["x_t"].append(x_t.cpu())
            self.traj["x0_hat"].append(x0_hat.cpu())
        if self.callback is not None:
            self.callback(i, t, x_t, x0_hat)

    def result(self, x: torch.Tensor):
        return (x, self.traj) if self.traj is not None else x


def _check_eta(eta: float) -> None:
    if not 0.0 <= eta <= 1.0:
        raise TrilemmaError(f"--eta: must be in [0, 1], got {eta}")


# ------------------------------------------------------------------------------- DPM-Solver++(2M)
def _dpmpp_2m(denoiser, x_T, schedule, timesteps, eta, cond, generator, callback, return_trajectory):
    g = solver_grid(schedule, timesteps)
    rec = _Recorder(x_T, callback, return_trajectory)
    x, D_prev = x_T, None
    for i in range(g.N):
        _, D = denoiser(x, g.model_t[i], float(g.alpha_bar[i]), cond)        # D_i = x̂₀(x_{t_i}, t_i)
        if i == g.N - 1:
            x = D                                       # σ_N = 0, λ_N = ∞: e^{−h} = 0 and x = α_N D = D
        else:
            h = g.lam[i + 1] - g.lam[i]
            if D_prev is None:
                D_mix = D                               # first step: first order (DDIM)
            else:
                r = (g.lam[i] - g.lam[i - 1]) / h       # r = h_{i−1}/h_i
                D_mix = (1.0 + 0.5 / r) * D - (0.5 / r) * D_prev
            # x_{i+1} = (σ_{i+1}/σ_i) e^{−ηh} x_i − α_{i+1} (e^{−(1+η)h} − 1) D'  [+ σ_{i+1} √(1 − e^{−2ηh}) z]
            x = (g.sigma[i + 1] / g.sigma[i] * math.exp(-eta * h)) * x \
                - (g.alpha[i + 1] * math.expm1(-(1.0 + eta) * h)) * D_mix
            if eta > 0:
                x = x + g.sigma[i + 1] * math.sqrt(-math.expm1(-2.0 * eta * h)) * _noise_like(x, generator)
        D_prev = D
        rec(i, g.t[i], x, D)
    return rec.result(x)


@torch.no_grad()
def dpmpp_2m_sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[float], *,
                    cond: dict[str, Any] | None = None, generator: torch.Generator | None = None,
                    callback: Callback | None = None, return_trajectory: bool = False):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep ODE solver in x̂₀.

    With h = λ_{i+1} − λ_i, r = h_{i−1}/h and D' = (1 + 1/(2r)) D_i − 1/(2r) D_{i−1}:
        x_{i+1} = (σ_{i+1}/σ_i) x_i − α_{i+1} (e^{−h} − 1) D'.
    The first step (no D_{i−1}) is first order; the last one lands on σ = 0 and returns
    D_{N−1} (as diffusers' ``DPMSolverMultistepScheduler`` with ``final_sigmas_type="zero"``,
    whose last step is then always first order). One network evaluation per step.
    ``timesteps``: increasing steps in [1, T] (:func:`solver_timesteps`), fractional allowed.
    ``generator`` is unused (deterministic); it is accepted for a uniform signature.
    """
    return _dpmpp_2m(denoiser, x_T, schedule, timesteps, 0.0, cond, generator, callback, return_trajectory)


@torch.no_grad()
def dpmpp_2m_sde_sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[float], *,
                        eta: float = 1.0, cond: dict[str, Any] | None = None,
                        generator: torch.Generator | None = None, callback: Callback | None = None,
                        return_trajectory: bool = False):
    """Stochastic DPM-Solver++(2M) (the SDE form of Lu et al. 2022, "SDE-DPM-Solver++(2M)"), noise amount η.

        x_{i+1} = (σ_{i+1}/σ_i) e^{−ηh} x_i + α_{i+1} (1 − e^{−(1+η)h}) D' + σ_{i+1} √(1 − e^{−2ηh}) z,
    D' as in :func:`dpmpp_2m_sample`, z ~ N(0, I) drawn from ``generator`` on every step but the
    last (σ = 0, which returns x̂₀). η = 1 is diffusers' ``algorithm_type="sde-dpmsolver++"``;
    η = 0 draws nothing and is exactly :func:`dpmpp_2m_sample`.
    """
    _check_eta(eta)
    return _dpmpp_2m(denoiser, x_T, schedule, timesteps, float(eta), cond, generator, callback, return_trajectory)


# ------------------------------------------------------------------------------------------ UniPC
def _unipc_rhos(h: float, rks: list[float], corrector: bool) -> np.ndarray:
    """The UniPC weights ρ for B(h) = e^{h} − 1 ("bh2") in data prediction (Zhao et al. 2023).

    With hh = −h, b_k = hh·φ_{k+1}(hh)·k!/B(h) for k = 1..p (φ_1(z) = (e^z − 1)/z,
    φ_{k+1}(z) = (φ_k(z) − 1/k!)/z) and R_{kj} = r_j^{k−1}, r = (r_1, …, r_{p−1}, 1):
    the corrector solves R ρ = b (ρ = ½ for p = 1); the predictor uses the first p − 1
    equations without the last r (ρ = ½ for p = 2, as in the paper's UniP-2).
    """
    p = len(rks)
    hh = -h
    h_phi_1 = math.expm1(hh)                            # hh·φ_1(hh) = e^{hh} − 1
    B_h = math.expm1(hh)                                # bh2
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1.0, 1   # h_phi_k = hh·φ_{k+1}(hh)
    for k in range(1, p + 1):
        b.append(h_phi_k * factorial / B_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    R = np.vander(np.asarray(rks, dtype=np.float64), p, increasing=True).T       # R[k, j] = r_j^k
    b = np.asarray(b)
    if corrector:
        return np.array([0.5]) if p == 1 else np.linalg.solve(R, b)
    if p == 1:
        return np.zeros(0)
    return np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])


def _unipc_update(g: SolverGrid, s: int, x_s: torch.Tensor, Ds: list[torch.Tensor], order: int,
                  D_new: torch.Tensor | None) -> torch.Tensor:
    """From x at t_s to t_{s+1} with the x̂₀ history ``Ds`` (Ds[j] at t_j, j ≤ s).

    Predictor (``D_new`` None):  x̃ = (σ_{s+1}/σ_s) x_s − α_{s+1} (e^{−h} − 1) D_s − α_{s+1} B(h) Σ_k ρ_k D1_k
    Corrector (``D_new`` = D_{s+1}): the same, with the extra term ρ_p (D_{s+1} − D_s),
    where D1_k = (D_{s−k} − D_s)/r_k and r_k = (λ_{s−k} − λ_s)/h.
    """
    h = g.lam[s + 1] - g.lam[s]
    rks = [(g.lam[s - k] - g.lam[s]) / h for k in range(1, order)]
    D1s = [(Ds[s - k] - Ds[s]) / r for k, r in zip(range(1, order), rks)]
    rhos = _unipc_rhos(h, rks + [1.0], corrector=D_new is not None)
    B_h = math.expm1(-h)
    x = (g.sigma[s + 1] / g.sigma[s]) * x_s - (g.alpha[s + 1] * math.expm1(-h)) * Ds[s]
    res = sum((float(rho) * D1 for rho, D1 in zip(rhos, D1s)), torch.zeros_like(x_s))
    if D_new is not None:
        res = res + float(rhos[-1]) * (D_new - Ds[s])
    return x - (g.alpha[s + 1] * B_h) * res


@torch.no_grad()
def unipc_sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[float], *,
                 order: int = 2, cond: dict[str, Any] | None = None, generator: torch.Generator | None = None,
                 callback: Callback | None = None, return_trajectory: bool = False):
    """UniPC (Zhao et al. 2023), B(h) = e^{h} − 1 ("bh2"), data prediction, one evaluation per step.

    At each t_i: evaluate D_i = x̂₀(x_i); if i > 0, correct x_i with UniC-p (the step from
    t_{i−1} redone with D_i too); then predict x_{i+1} with UniP-p' where
    p' = min(order, i + 1, N − i) (warm-up, and diffusers' ``lower_order_final``). The
    network input is the uncorrected x_i, as in the paper. The last step lands on σ = 0
    and returns D_{N−1}; it is never corrected. Matches diffusers' ``UniPCMultistepScheduler``
    (``solver_type="bh2"``, ``predict_x0=True``, ``final_sigmas_type="zero"``).
    """
    if order not in (1, 2, 3):
        raise TrilemmaError(f"--order: UniPC order must be 1, 2 or 3, got {order}")
    g = solver_grid(schedule, timesteps)
    rec = _Recorder(x_T, callback, return_trajectory)
    Ds: list[torch.Tensor] = []
    x, x_prev, prev_order = x_T, None, 0
    for i in range(g.N):
        _, D = denoiser(x, g.model_t[i], float(g.alpha_bar[i]), cond)
        if i > 0:
            x = _unipc_update(g, i - 1, x_prev, Ds, prev_order, D_new=D)            # UniC
        Ds.append(D)
        p = min(order, i + 1, g.N - i)
        x_prev, prev_order = x, p
        x = D if i == g.N - 1 else _unipc_update(g, i, x, Ds, p, D_new=None)        # UniP
        rec(i, g.t[i], x, D)
    return rec.result(x)


# ----------------------------------------------------------------- Karras et al. (2022): Euler, Heun
def _ancestral(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """σ_down, σ_up for a step σ̃ → σ̃_next with noise amount η (σ_down² + σ_up² = σ̃_next²)."""
    if eta == 0.0 or sigma_next == 0.0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


@torch.no_grad()
def euler_sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[float], *,
                 eta: float = 0.0, cond: dict[str, Any] | None = None, generator: torch.Generator | None = None,
                 callback: Callback | None = None, return_trajectory: bool = False):
    """Euler's method on the probability-flow ODE in σ̃ (Karras et al. 2022, eq. 4 and Algorithm 1 without Heun).

    x̃ = x/√ᾱ, σ̃ = √((1 − ᾱ)/ᾱ), d = (x̃ − D)/σ̃ with D = x̂₀(x̃·√ᾱ; ᾱ = 1/(1 + σ̃²)):
        x̃_{i+1} = x̃_i + (σ_down − σ̃_i) d_i + σ_up z,
    σ_up = min(σ̃_{i+1}, η σ̃_{i+1} √(1 − σ̃_{i+1}²/σ̃_i²)), σ_down = √(σ̃_{i+1}² − σ_up²).
    η = 0 is the plain ODE step (σ_down = σ̃_{i+1}), and equals DDIM (η = 0) on the same steps;
    η > 0 is the ancestral sampler and equals DDIM with that η. One evaluation per step;
    x_t is reported in the usual (variance-preserving) scale, x = x̃·√ᾱ.
    """
    _check_eta(eta)
    g = solver_grid(schedule, timesteps)
    rec = _Recorder(x_T, callback, return_trajectory)
    x = x_T / g.alpha[0]                                                           # x̃ = x/α
    for i in range(g.N):
        _, D = denoiser(x * g.alpha[i], g.model_t[i], float(g.alpha_bar[i]), cond)
        sigma_down, sigma_up = _ancestral(g.sigma_ve[i], g.sigma_ve[i + 1], eta)
        if sigma_down == 0.0:
            x = D                                                                   # x̃ + (0 − σ̃) d = D
        else:
            x = x + (sigma_down - g.sigma_ve[i]) * ((x - D) / g.sigma_ve[i])
        if sigma_up > 0:
            x = x + sigma_up * _noise_like(x, generator)
        rec(i, g.t[i], x * g.alpha[i + 1], D)
    return rec.result(x)


@torch.no_grad()
def heun_sample(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[float], *,
                cond: dict[str, Any] | None = None, generator: torch.Generator | None = None,
                callback: Callback | None = None, return_trajectory: bool = False):
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1, S_churn = 0).

        x̃' = x̃_i + (σ̃_{i+1} − σ̃_i) d_i,   d_i = (x̃_i − D(x̃_i; σ̃_i))/σ̃_i
        x̃_{i+1} = x̃_i + (σ̃_{i+1} − σ̃_i) (d_i + d')/2,   d' = (x̃' − D(x̃'; σ̃_{i+1}))/σ̃_{i+1}
    except the last step to σ̃ = 0, which is Euler (d' is undefined there): N steps cost
    2N − 1 evaluations. Matches diffusers' ``HeunDiscreteScheduler``. The trajectory's x̂₀ is
    the one at t_i (the first evaluation of the step).
    """
    g = solver_grid(schedule, timesteps)
    rec = _Recorder(x_T, callback, return_trajectory)
    x = x_T / g.alpha[0]
    for i in range(g.N):
        _, D = denoiser(x * g.alpha[i], g.model_t[i], float(g.alpha_bar[i]), cond)
        d = (x - D) / g.sigma_ve[i]
        dt = g.sigma_ve[i + 1] - g.sigma_ve[i]
        if i == g.N - 1:
            x = D                                                                   # Euler to σ̃ = 0
        else:
            x_euler = x + dt * d
            _, D2 = denoiser(x_euler * g.alpha[i + 1], g.model_t[i + 1], float(g.alpha_bar[i + 1]), cond)
            d2 = (x_euler - D2) / g.sigma_ve[i + 1]
            x = x + dt * ((d + d2) / 2)
        rec(i, g.t[i], x * g.alpha[i + 1], D)
    return rec.result(x)


# ---------------------------------------------------------------------------- one entry for the CLI
def _check_name(name: str) -> None:
    if name not in SAMPLERS:
        raise TrilemmaError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {name!r}")


def solver_points(name: str, steps: int) -> int:
    """How many times t_i the sampler ``name`` walks for a budget of ``steps`` evaluations.

    Heun spends 2 evaluations per step but 1 on the last, so it walks N = ⌊(steps + 1)/2⌋
    times (2N − 1 ≤ steps); every other sampler walks ``steps`` times.
    """
    _check_name(name)
    if steps < 1:
        raise TrilemmaError(f"--steps: must be at least 1, got {steps}")
    return (steps + 1) // 2 if name == "heun" else steps


def solver_nfe(name: str, steps: int) -> int:
    """Network evaluations (denoiser calls) of ``name`` with ``--steps steps``: ``steps``, or 2N − 1 for Heun.

    A classifier-free-guided evaluation runs the network on a doubled batch but counts once.
    """
    n = solver_points(name, steps)
    return 2 * n - 1 if name == "heun" else n


def auto_sampler(steps: int | None) -> str:
    """The sampler ``auto`` (the default) stands for at ``steps`` network evaluations (None: 50).

    ``unipc`` below :data:`SDE_FROM_NFE` (20) evaluations, ``dpmpp-2m-sde`` (η = 1) from there: the best
    measured at each budget on the two models measured with every cell (n = 2,000, docs/sampling.md
    "Which sampler at which budget"). With the solvers' default spacing, on the ε-prediction pixel
    model: UniPC 37.6 / 16.4 / 8.9 / 6.7 at 4 / 6 / 8 / 10 NFE, the SDE solver 5.1 at 20 and 3.9 at 50
    (DDPM-1000: 5.2), where the deterministic solvers have converged to the ODE's 7.5.
    """
    return "dpmpp-2m-sde" if (steps or DEFAULT_STEPS) >= SDE_FROM_NFE else "unipc"


def default_spacing(name: str, steps: int | None = None) -> str:
    """Time steps used when none are given, for sampler ``name`` at ``steps`` evaluations (None: 50).

    ``trailing`` whole steps for ddpm and ddim; for the solvers ``karras`` from :data:`KARRAS_FROM_NFE`
    (8) evaluations and ``trailing`` below. Measured (n = 2,000, docs/sampling.md): at 10 NFE Karras'
    grid takes UniPC from FID 10.08 to 6.73 on the ε-prediction pixel model and from 17.67 to 13.59
    on the demo's latent model, and the SDE solver at 20 from 7.28 to 5.12; at 4 NFE it is far worse
    (102.2 against 37.6, 72.0 against 45.9): one of the four evaluations is spent at σ̃_min = σ̃_1, where
    x̂₀ is x itself; at 6 the two tie.
    """
    _check_name(name)
    if name in ("ddpm", "ddim"):
        return "trailing"
    return "karras" if (steps or DEFAULT_STEPS) >= KARRAS_FROM_NFE else "trailing"


def default_eta(name: str) -> float:
    """η used when none is given: 0 for DDIM and Euler (deterministic), 1 for DPM-Solver++(2M) SDE."""
    return _ETA_SAMPLERS.get(name, 0.0)


@torch.no_grad()
def check_sampling(name: str, steps: int | None, eta: float | None, variance: str,
                   spacing: str | None) -> tuple[str, float, str]:
    """The sampler options of :func:`sample_with`, checked before any work, and resolved: (name, η, spacing).

    One-line :class:`TrilemmaError` for an unknown sampler, η on a deterministic solver, a chosen
    variance on a sampler other than ddpm, an unknown spacing or one ddpm/ddim cannot walk.
    """
    if name == AUTO:
        name = auto_sampler(steps)
    _check_name(name)
    if eta is None:
        eta = default_eta(name)
    elif eta != 0.0 and name not in _ETA_SAMPLERS and name != "ddpm":          # ddpm ignores η, as before
        raise TrilemmaError(f"--eta: only {', '.join(_ETA_SAMPLERS)} take η; {name} is deterministic")
    if variance != "beta_tilde" and name != "ddpm":
        raise TrilemmaError(f"--variance {variance}: only the ddpm sampler draws with a chosen σ² (β or β̃); "
                            f"{name} does not")
    if spacing is None:
        spacing = default_spacing(name, steps)
    if spacing not in SOLVER_SPACINGS:
        raise TrilemmaError(f"--spacing: expected one of {', '.join(SOLVER_SPACINGS)}, got {spacing!r}")
    if name in ("ddpm", "ddim") and spacing not in SPACINGS:
        raise TrilemmaError(f"--spacing {spacing}: {name} walks whole steps; use {', '.join(SPACINGS)}")
    return name, eta, spacing


def sample_with(name: str, denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule, *,
                steps: int | None = None, spacing: SolverSpacing | None = None, eta: float | None = None,
                variance: Variance = "beta_tilde", order: int = 2, cond: dict[str, Any] | None = None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                return_trajectory: bool = False):
    """Run sampler ``name`` (one of :data:`SAMPLERS`) for ``steps`` network evaluations.

    ``ddpm``: all T steps when ``steps`` is None or T, else DDPM on the respaced schedule
    ``schedule.respace(ddim_timesteps(T, steps, spacing))`` (``variance`` applies).
    ``ddim``: :func:`ddim_sample` on ``ddim_timesteps(T, steps or 50, spacing)``.
    The solvers: ``solver_timesteps(schedule, solver_points(name, steps or 50), spacing)``.
    ``name`` ``auto``: :func:`auto_sampler` for ``steps``. ``spacing`` None: :func:`default_spacing`.
    ``eta`` (None: :func:`default_eta`) is for ddim, dpmpp-2m-sde and euler; ddpm ignores it and
    the other solvers refuse a non-zero one; ``variance`` other than β̃ is refused but by ddpm.
    ``order`` is for unipc only. Returns what the sampler returns: x_0, or (x_0, trajectory) with
    ``return_trajectory``.
    """
    name, eta, spacing = check_sampling(name, steps, eta, variance, spacing)
    common = {"cond": cond, "generator": generator, "callback": callback, "return_trajectory": return_trajectory}
    T = schedule.T
    if name == "ddpm":
        S = steps or T
        walked = schedule if S == T else schedule.respace(ddim_timesteps(T, S, spacing))
        return ddpm_sample(denoiser, x_T, walked, variance=variance, **common)
    if name == "ddim":
        return ddim_sample(denoiser, x_T, schedule, ddim_timesteps(T, steps or DEFAULT_STEPS, spacing), eta=eta,
                           **common)
    taus = solver_timesteps(schedule, solver_points(name, steps or DEFAULT_STEPS), spacing)
    if name == "dpmpp-2m":
        return dpmpp_2m_sample(denoiser, x_T, schedule, taus, **common)
    if name == "dpmpp-2m-sde":
        return dpmpp_2m_sde_sample(denoiser, x_T, schedule, taus, eta=eta, **common)
    if name == "unipc":
        return unipc_sample(denoiser, x_T, schedule, taus, order=order, **common)
    if name == "heun":
        return heun_sample(denoiser, x_T, schedule, taus, **common)
    return euler_sample(denoiser, x_T, schedule, taus, eta=eta, **common)
