"""The few-step forward process of denoising diffusion GANs and its posterior step (Xiao et al., ICLR 2022, §3).

docs/methods.md §11. With T ∈ {1..8} steps of large β_t the true denoising
distribution q(x_{t−1} | x_t) is far from Gaussian, so DDGAN models it
implicitly: a generator predicts x̂₀ = G(x_t, z, t) and the step draws

    x_{t−1} ~ q(x_{t−1} | x_t, x̂₀) = N(μ̃_t(x_t, x̂₀), β̃_t I)                     (paper eq. 6–7)
    μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x̂₀ + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t
    β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)                                          (Ho et al. 2020, eq. 7)

Every function takes a per-sample step ``t``: a (B,) long tensor with values in
1..T (the paper's code numbers the same steps 0..T−1). The schedule is an
ordinary :class:`~trilemma.diffusion.schedule.NoiseSchedule` with T steps and
``model_t[t] = t``, so the networks are told t itself.

Random draws take an optional ``torch.Generator`` (named ``generator`` as in
torch; the generator *network* is ``generator_net`` / ``G``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from trilemma.ddgan.config import DDGANConfig
from trilemma.diffusion.schedule import NoiseSchedule, ScheduleConfig, make_schedule


# ------------------------------------------------------------------------------------------- the schedule
def vp_alpha_bar(t: np.ndarray | float, beta_min: float, beta_max: float) -> np.ndarray:
    """ᾱ(t) = exp(−β_min t − ½(β_max − β_min) t²) of the variance-preserving SDE, t ∈ [0, 1] (Song et al. 2021)."""
    t = np.asarray(t, dtype=np.float64)
    return np.exp(-beta_min * t - 0.5 * (beta_max - beta_min) * t ** 2)


def vp_times(T: int, t_eps: float) -> np.ndarray:
    """The grid t_k = ε + (1 − ε)·k/T, k = 0..T, of the paper's code (ε = 0: t_k = k/T)."""
    return t_eps + (1.0 - t_eps) * np.arange(T + 1, dtype=np.float64) / T


def vp_betas(T: int, beta_min: float, beta_max: float, t_eps: float = 1e-3) -> np.ndarray:
    """β_k = 1 − ᾱ(t_k)/ᾱ(t_{k−1}), k = 1..T (length T, float64).

    Then ᾱ_k = ∏_{j≤k}(1 − β_j) = ᾱ(t_k)/ᾱ(t_0): exactly ᾱ(k/T) when ε = 0, and
    within a factor ᾱ(ε) ≈ 1 − 10⁻⁴ of it with the code's ε = 10⁻³.
    """
    alpha_bar = vp_alpha_bar(vp_times(T, t_eps), beta_min, beta_max)     # (T+1,)
    return 1.0 - alpha_bar[1:] / alpha_bar[:-1]


def respaced_steps(base_T: int, T: int) -> list[int]:
    """T evenly spaced steps τ_i = round(i·base_T/T), i = 1..T, of a base_T-step schedule (the last is base_T)."""
    return [round(i * base_T / T) for i in range(1, T + 1)]


def ddgan_schedule(config: DDGANConfig) -> NoiseSchedule:
    """The T-step schedule of ``config`` (betas[0] = 0, ``model_t[t] = t``).

    ``config.schedule == "vp"``: :func:`vp_betas` (the paper's). Otherwise the
    named trilemma schedule with ``config.base_T`` steps, respaced to T evenly
    spaced steps (:meth:`NoiseSchedule.respace`: ᾱ is kept at the chosen steps).
    """
    if config.schedule == "vp":
        betas = vp_betas(config.T, config.beta_min, config.beta_max, config.t_eps)
        return NoiseSchedule(betas=np.concatenate([[0.0], betas]), model_t=np.arange(config.T + 1))
    base = make_schedule(ScheduleConfig(name=config.schedule, T=config.base_T))
    respaced = base.respace(respaced_steps(config.base_T, config.T))
    # The DDGAN networks are trained on the T steps themselves: tell them t, not the base schedule's step.
    return NoiseSchedule(betas=respaced.betas, model_t=np.arange(config.T + 1), config=base.config)


# -------------------------------------------------------------------------------------------- helpers
def _derived(schedule: NoiseSchedule, name: str) -> np.ndarray:
    """A coefficient array of the DDGAN steps by name: a schedule attribute, or one derived from them."""
    if name == "sqrt_alphas":
        return np.sqrt(schedule.alphas)
    if name == "sqrt_betas":
        return np.sqrt(schedule.betas)
    if name in ("posterior_c0", "posterior_ct"):
        return posterior_coefficients(schedule)[name == "posterior_ct"]
    return getattr(schedule, name)


def _at(schedule: NoiseSchedule, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The coefficient ``name`` at steps ``t``, in ``like``'s dtype and device, shaped to broadcast: (B,) → (B, 1, 1, 1).

    The (T+1,) table is made on the device once per schedule, device and dtype (cached in the
    schedule), so a training step on a GPU indexes it there without copying from the host.
    """
    table = schedule.tensor(f"ddgan:{name}", like.device, like.dtype, values=lambda: _derived(schedule, name))
    return table[t].reshape(t.shape[0], *([1] * (like.dim() - 1)))


def randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, I) noise of ``shape`` with ``like``'s dtype and device, drawn from ``generator`` if one is given."""
    if generator is None:
        return torch.randn(*shape, dtype=like.dtype, device=like.device)
    return torch.randn(*shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def sample_t(batch: int, T: int, device: torch.device | str, generator: torch.Generator | None = None,
             probs: Sequence[float] | None = None) -> torch.Tensor:
    """t ~ Uniform{1..T} (``probs`` None), or P(t = k) = ``probs[k − 1]`` (summing to 1), one per sample: (B,) long.

    The weighted draw inverts the cumulative probabilities at u ~ U[0, 1) from ``generator``, one
    uniform per sample, on the host's or the generator's device.
    """
    where = device if generator is None else generator.device
    if probs is None:
        if generator is None:
            return torch.randint(1, T + 1, (batch,), device=device)
        return torch.randint(1, T + 1, (batch,), generator=generator, device=where).to(device)
    if len(probs) != T:
        raise ValueError(f"probs: need {T} probabilities for t = 1..{T}, got {len(probs)}")
    cdf = torch.tensor(np.cumsum(probs)[:-1], dtype=torch.float64, device=where)      # (T − 1,)
    u = torch.rand(batch, generator=generator, device=where, dtype=torch.float64)      # (B,)
    return (torch.searchsorted(cdf, u, right=True) + 1).to(device)                     # (B,) in 1..T


def _check_t(schedule: NoiseSchedule, t: torch.Tensor) -> None:
    """t must be a (B,) integer tensor with values in 1..T.

    The values are checked without reading them back to the host (``torch._assert_async``): on
    the CPU an out-of-range step raises here, on a GPU it fails the next kernel launch, and a
    training step never waits for the device.
    """
    if t.dim() != 1 or t.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"t must be a (B,) integer tensor with values in 1..{schedule.T}, got {t.dtype} {tuple(t.shape)}")
    torch._assert_async(((t >= 1) & (t <= schedule.T)).all(), f"t must have values in 1..{schedule.T}")


# --------------------------------------------------------------------------------------- real pairs
def q_sample_pairs(schedule: NoiseSchedule, x_0: torch.Tensor, t: torch.Tensor,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A real pair (x_{t−1}, x_t): x_{t−1} ~ q(x_{t−1} | x_0), then x_t ~ q(x_t | x_{t−1}) (paper §3, "real" pairs).

        x_{t−1} = √ᾱ_{t−1} x_0 + √(1 − ᾱ_{t−1}) ε,     x_t = √α_t x_{t−1} + √β_t ε′

    so that (x_{t−1}, x_t) is distributed as q(x_{t−1}, x_t | x_0); at t = 1, x_{t−1} = x_0.
    x_0 (B, C, H, W), t (B,) in 1..T → two (B, C, H, W) tensors.
    """
    _check_t(schedule, t)
    eps = randn(x_0.shape, x_0, generator)                                          # (B, C, H, W)
    eps_step = randn(x_0.shape, x_0, generator)                                     # (B, C, H, W)
    x_prev = (_at(schedule, "sqrt_alpha_bar", t - 1, x_0) * x_0
              + _at(schedule, "sqrt_one_minus_alpha_bar", t - 1, x_0) * eps)        # (B, C, H, W) ~ q(x_{t−1}|x_0)
    x_t = (_at(schedule, "sqrt_alphas", t, x_0) * x_prev
           + _at(schedule, "sqrt_betas", t, x_0) * eps_step)                        # (B, C, H, W) ~ q(x_t|x_{t−1})
    return x_prev, x_t


# ----------------------------------------------------------------------------------- the posterior
def posterior_coefficients(schedule: NoiseSchedule) -> tuple[np.ndarray, np.ndarray]:
    """(c₀, c_t), indexed by t = 0..T, with μ̃_t(x_t, x_0) = c₀[t] x_0 + c_t[t] x_t (c₀[0] = c_t[0] = 0 unused)."""
    ab = schedule.alpha_bar
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    c0, ct = np.zeros_like(ab), np.zeros_like(ab)
    c0[1:] = np.sqrt(ab_prev[1:]) * schedule.betas[1:] / (1.0 - ab[1:])
    ct[1:] = np.sqrt(schedule.alphas[1:]) * (1.0 - ab_prev[1:]) / (1.0 - ab[1:])
    return c0, ct


def posterior_mean_var(schedule: NoiseSchedule, x0_hat: torch.Tensor, x_t: torch.Tensor,
                       t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean μ̃_t (B, C, H, W) and variance β̃_t (B, 1, 1, 1) of q(x_{t−1} | x_t, x̂₀), per-sample t."""
    _check_t(schedule, t)
    mean = (_at(schedule, "posterior_c0", t, x_t) * x0_hat
            + _at(schedule, "posterior_ct", t, x_t) * x_t)                           # (B, C, H, W)
    return mean, _at(schedule, "posterior_var", t, x_t)                              # (B, 1, 1, 1)


def posterior_sample(schedule: NoiseSchedule, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """x_{t−1} ~ q(x_{t−1} | x_t, x̂₀) = N(μ̃_t, β̃_t I) (paper eq. 7), with no noise where t = 1.

    At t = 1, β̃_1 = 0 and μ̃_1 = x̂₀ (c₀[1] = 1, c_t[1] = 0), so the step returns x̂₀ itself.
    x0_hat, x_t (B, C, H, W), t (B,) in 1..T → (B, C, H, W).
    """
    mean, var = posterior_mean_var(schedule, x0_hat, x_t, t)                         # (B, C, H, W), (B, 1, 1, 1)
    noise = randn(x_t.shape, x_t, generator)                                         # (B, C, H, W)
    nonzero = (t > 1).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))           # (B, 1, 1, 1)
    return mean + nonzero * var.sqrt() * noise


# ------------------------------------------------------------------------------------------ sampling
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def ddgan_sample(generator_net: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                 x_T: torch.Tensor, schedule: NoiseSchedule, z_dim: int,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 start: int | None = None) -> torch.Tensor:
    """x_0 from x_T ~ N(0, I) in T generator calls (paper Alg. / ``sample_from_model`` of its code).

        for t = T..1:  z ~ N(0, I);  x̂₀ = G(x_t, z, t);  x_{t−1} ~ q(x_{t−1} | x_t, x̂₀)

    The result is the last step's x_0, which is the t = 1 posterior mean, i.e.
    x̂₀ = G(x_1, z, 1) itself (see :func:`posterior_sample`); the paper's code
    returns the same quantity. ``callback(t, x_t, x0_hat)`` is called at each step.
    ``start = k`` (1..T, default T) runs only steps k..1, taking ``x_T`` to be an x_k.
    """
    x = x_T                                                                          # (B, C, H, W)
    B = x.shape[0]
    for step in range(schedule.T if start is None else start, 0, -1):
        t = torch.full((B,), step, dtype=torch.long, device=x.device)               # (B,)
        z = randn((B, z_dim), x, generator)                                          # (B, z_dim)
        x0_hat = generator_net(x, z, t)                                              # (B, C, H, W)
        if callback is not None:
            callback(step, x, x0_hat)
        x = posterior_sample(schedule, x0_hat, x, t, generator)                      # (B, C, H, W) = x_{t−1}
    return x
