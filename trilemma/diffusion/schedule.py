"""Noise schedules and the closed-form forward process (docs/methods.md §4; Ho et al. 2020).

Notation (arrays are indexed by the step t itself, so ``alpha_bar[t]`` is ᾱ_t):

=====================  ========================================================
``betas[t]``           β_t, the variance of the noise added at step t (β_0 = 0)
``alphas[t]``          α_t = 1 − β_t
``alpha_bar[t]``       ᾱ_t = ∏_{s≤t} α_s, with ᾱ_0 = 1
``posterior_var[t]``   β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), variance of q(x_{t−1} | x_t, x_0)
``log_snr[t]``         log(ᾱ_t / (1 − ᾱ_t))
``model_t[t]``         the step the network is told (differs from t only after :meth:`respace`)
=====================  ========================================================

Every coefficient is computed once, in float64, when the schedule is made; the
object is immutable. :meth:`NoiseSchedule.respace` returns a new, shorter
schedule on a subset of steps (Nichol & Dhariwal 2021, §4) rather than
mutating this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from trilemma.errors import TrilemmaError
from trilemma.options import check_fields, int_in, nonneg, opt, positive

ScheduleName = Literal["linear", "quadratic", "sigmoid", "cosine"]
SCHEDULES: tuple[str, ...] = ("linear", "quadratic", "sigmoid", "cosine")


@dataclass(frozen=True)
class ScheduleConfig:
    """Which β schedule, and its parameters (defaults of Ho et al. 2020)."""

    name: ScheduleName = opt("linear", "the β schedule (docs/methods.md §4)", flag="schedule", choices=SCHEDULES)
    T: int = opt(1000, "number of diffusion steps", check=int_in(2, 100_000))
    beta_1: float = opt(1e-4, "β_1 (linear, quadratic, sigmoid)", flag="beta-1", check=positive)
    beta_T: float = opt(0.02, "β_T (linear, quadratic, sigmoid)", flag="beta-T", check=positive)
    r: float = opt(6.0, "steepness of the sigmoid schedule", check=positive)
    s: float = opt(0.008, "offset of the cosine schedule (Nichol & Dhariwal 2021)", check=nonneg)

    def __post_init__(self):
        check_fields(self)
        if not 0 < self.beta_1 < self.beta_T < 1:
            raise TrilemmaError(f"need 0 < beta_1 < beta_T < 1, got beta_1={self.beta_1}, beta_T={self.beta_T}")
        if self.r <= 0:
            raise TrilemmaError(f"--r: the sigmoid steepness must be > 0, got {self.r}")
        if self.s < 0:
            raise TrilemmaError(f"--s: the cosine offset must be >= 0, got {self.s}")


def linear_betas(T: int, beta_1: float, beta_T: float) -> np.ndarray:
    """β_t = β_1 + (t−1)/(T−1) · (β_T − β_1), t = 1..T."""
    u = np.arange(T, dtype=np.float64) / (T - 1)            # (t−1)/(T−1)
    return beta_1 + u * (beta_T - beta_1)


def quadratic_betas(T: int, beta_1: float, beta_T: float) -> np.ndarray:
    """β_t = [√β_1 + (t−1)/(T−1) · (√β_T − √β_1)]², t = 1..T."""
    u = np.arange(T, dtype=np.float64) / (T - 1)
    return (math.sqrt(beta_1) + u * (math.sqrt(beta_T) - math.sqrt(beta_1))) ** 2


def sigmoid_betas(T: int, beta_1: float, beta_T: float, r: float) -> np.ndarray:
    """β_t = β_1 + (β_T − β_1) / (1 + exp(r · (1 − 2(t−1)/(T−1)))), t = 1..T."""
    u = np.arange(T, dtype=np.float64) / (T - 1)
    return beta_1 + (beta_T - beta_1) / (1.0 + np.exp(r * (1.0 - 2.0 * u)))


def cosine_betas(T: int, s: float, max_beta: float = 0.999) -> np.ndarray:
    """β_t = 1 − ᾱ_t/ᾱ_{t−1} with ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), β_t ≤ 0.999."""
    t = np.arange(T + 1, dtype=np.float64)
    f = np.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def betas_for(config: ScheduleConfig) -> np.ndarray:
    """β_1..β_T (length T, float64) of the configured schedule."""
    if config.name == "linear":
        return linear_betas(config.T, config.beta_1, config.beta_T)
    if config.name == "quadratic":
        return quadratic_betas(config.T, config.beta_1, config.beta_T)
    if config.name == "sigmoid":
        return sigmoid_betas(config.T, config.beta_1, config.beta_T, config.r)
    return cosine_betas(config.T, config.s)


def extract(values: torch.Tensor, t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``values[t]`` reshaped to broadcast against a batch of shape ``shape``: (B,) -> (B, 1, 1, 1)."""
    out = values.to(t.device)[t]
    return out.reshape(t.shape[0], *([1] * (len(shape) - 1)))


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """All coefficients of a diffusion process, indexed by step t = 0..T (float64 numpy arrays)."""

    betas: np.ndarray                     # (T+1,) β_t, β_0 = 0
    model_t: np.ndarray                   # (T+1,) the step fed to the network for each t
    config: ScheduleConfig | None = None  # None for a respaced schedule's origin-free arrays
    alphas: np.ndarray = field(init=False)
    alpha_bar: np.ndarray = field(init=False)
    sqrt_alpha_bar: np.ndarray = field(init=False)
    sqrt_one_minus_alpha_bar: np.ndarray = field(init=False)
    posterior_var: np.ndarray = field(init=False)
    log_snr: np.ndarray = field(init=False)

    def __post_init__(self):
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas[0] != 0.0 or np.any(betas[1:] <= 0) or np.any(betas >= 1):
            raise ValueError("betas must be a 1-D array with betas[0] = 0 and 0 < β_t < 1")
        alphas = 1.0 - betas
        alpha_bar = np.cumprod(alphas)
        alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
        posterior_var = np.zeros_like(betas)
        posterior_var[1:] = betas[1:] * (1.0 - alpha_bar_prev[1:]) / (1.0 - alpha_bar[1:])
        log_snr = np.full_like(betas, np.inf)
        log_snr[1:] = np.log(alpha_bar[1:]) - np.log1p(-alpha_bar[1:])
        for name, value in [("betas", betas), ("alphas", alphas), ("alpha_bar", alpha_bar),
                            ("sqrt_alpha_bar", np.sqrt(alpha_bar)),
                            ("sqrt_one_minus_alpha_bar", np.sqrt(1.0 - alpha_bar)),
                            ("posterior_var", posterior_var), ("log_snr", log_snr),
                            ("model_t", np.asarray(self.model_t, dtype=np.int64))]:
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_tensors", {})

    # ------------------------------------------------------------------ basics
    @property
    def T(self) -> int:
        """Number of steps of this schedule (after respacing: the number kept)."""
        return len(self.betas) - 1

    def tensor(self, name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               values: Callable[[], np.ndarray] | None = None) -> torch.Tensor:
        """A coefficient array as a tensor on ``device`` (float32 unless ``dtype``; cached).

        ``name`` is an attribute of the schedule, or with ``values`` any name for an array derived
        from them (``values()`` is called once, on the first use of that name, device and dtype).
        """
        key = (name, str(device), dtype)
        if key not in self._tensors:
            array = values() if values is not None else getattr(self, name)
            self._tensors[key] = torch.tensor(np.array(array), dtype=dtype, device=device)
        return self._tensors[key]

    # ------------------------------------------------------- forward process
    def q_sample(self, x_0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) in closed form: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (docs/methods.md §4)."""
        return (extract(self.tensor("sqrt_alpha_bar", x_0.device), t, x_0.shape) * x_0
                + extract(self.tensor("sqrt_one_minus_alpha_bar", x_0.device), t, x_0.shape) * eps)

    def q_step(self, x_prev: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
        """One forward step q(x_t | x_{t−1}): x_t = √α_t x_{t−1} + √β_t ε."""
        return math.sqrt(self.alphas[t]) * x_prev + math.sqrt(self.betas[t]) * eps

    def q_posterior(self, x_0: torch.Tensor, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, float]:
        """Mean and variance of q(x_{t−1} | x_t, x_0) (Ho et al. 2020, eq. 7)."""
        ab, ab_prev = self.alpha_bar[t], (self.alpha_bar[t - 1] if t > 0 else 1.0)
        coef_x0 = math.sqrt(ab_prev) * self.betas[t] / (1.0 - ab)
        coef_xt = math.sqrt(self.alphas[t]) * (1.0 - ab_prev) / (1.0 - ab)
        return coef_x0 * x_0 + coef_xt * x_t, float(self.posterior_var[t])

    # ------------------------------------------------------------ respacing
    def respace(self, timesteps: Sequence[int]) -> "NoiseSchedule":
        """A schedule on the increasing subset ``timesteps`` ⊂ {1..T} of this one.

        It keeps ᾱ at the chosen steps (β'_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}}), and its
        ``model_t`` maps each new step back to the step the network was trained on.
        """
        taus = np.asarray(timesteps, dtype=np.int64)
        if taus.ndim != 1 or len(taus) == 0 or np.any(np.diff(taus) <= 0) or taus[0] < 1 or taus[-1] > self.T:
            raise TrilemmaError(f"respace: timesteps must be increasing values in 1..{self.T}")
        ab = self.alpha_bar[taus]
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        betas = np.concatenate([[0.0], 1.0 - ab / ab_prev])
        return NoiseSchedule(betas=betas, model_t=np.concatenate([[0], self.model_t[taus]]), config=self.config)


def make_schedule(config: ScheduleConfig | str = "linear", **overrides) -> NoiseSchedule:
    """The schedule of docs/methods.md §4 named by ``config`` (a :class:`ScheduleConfig` or a name)."""
    if isinstance(config, str):
        config = ScheduleConfig(name=config, **overrides)
    elif overrides:
        raise TypeError("pass overrides only with a schedule name")
    betas = np.concatenate([[0.0], betas_for(config)])
    return NoiseSchedule(betas=betas, model_t=np.arange(config.T + 1), config=config)
