"""EDM preconditioning (Karras et al. 2022, Table 1) written for a VP network, and log-normal noise levels.

Karras et al. work with x̃ = x₀ + σ n (σ the noise level, σ_d the data's standard deviation) and wrap
the raw network F as

    D(x̃; σ) = c_skip x̃ + c_out F(c_in x̃; c_noise)
    c_skip = σ_d²/(σ² + σ_d²),  c_out = σ σ_d/√(σ² + σ_d²),  c_in = 1/√(σ² + σ_d²)

trained with the weight λ(σ) = (σ² + σ_d²)/(σ σ_d)², so that λ c_out² = 1 and the loss is the plain
regression ‖F − (x₀ − c_skip x̃)/c_out‖² (docs/methods.md §12.2). trilemma's diffused variable is the
VP x_t = √ᾱ x̃ with σ² = (1 − ᾱ)/ᾱ. Writing D² = 1 − ᾱ + ᾱσ_d² = ᾱ(σ² + σ_d²), the same wrapper in x_t is

    network input   c_in x̃  = x_t / D
    x̂₀ = D(x̃; σ)   = (σ_d² √ᾱ / D²) x_t + (σ_d √(1 − ᾱ) / D) F

(no 1/√ᾱ appears, so nothing overflows at ᾱ → 0). With σ_d = 1, D = 1 and F = −v: EDM on unit-variance
data is v-prediction with a uniform loss. The network is told the (fractional) step t of σ, not
c_noise = ¼ ln σ: the same information, and every sampler and schedule keeps working unchanged.

Log-normal noise levels: ln σ ~ N(P_mean, P_std²), clamped to the schedule's [σ_1, σ_T], and mapped
to the fractional step t where σ_t = σ by the samplers' own interpolation (linear in ln σ between
whole steps: :func:`trilemma.diffusion.samplers.time_at_sigma`), so ᾱ(t) = 1/(1 + σ²) exactly.
"""

from __future__ import annotations

import torch

from trilemma.diffusion.schedule import NoiseSchedule

P_MEAN = -1.2      # Karras et al. 2022, Table 1: ln σ ~ N(P_mean, P_std²)
P_STD = 1.2


def edm_coefficients(alpha_bar: torch.Tensor | float, sigma_data: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_in, c_skip, c_out) in x_t, float64: the network sees c_in·x_t and x̂₀ = c_skip·x_t + c_out·F.

    ``alpha_bar``: a float or a tensor (float64 for full precision: a float32 ᾱ carries its rounding).
    """
    ab = alpha_bar.to(torch.float64) if isinstance(alpha_bar, torch.Tensor) else torch.tensor(float(alpha_bar),
                                                                                                dtype=torch.float64)
    sd2 = sigma_data * sigma_data
    d2 = (1.0 - ab) + ab * sd2                                                  # D² = ᾱ(σ² + σ_d²)
    c_in = d2.rsqrt()
    c_skip = sd2 * ab.sqrt() / d2
    c_out = sigma_data * (1.0 - ab).sqrt() * c_in
    return c_in, c_skip, c_out


def edm_target(x_0: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """F's regression target (x₀ − c_skip x_t)/c_out; ``alpha_bar`` broadcasts against ``x_0``."""
    _, c_skip, c_out = (c.to(x_0.dtype) for c in edm_coefficients(alpha_bar, sigma_data))
    return (x_0 - c_skip * x_t) / c_out


def schedule_log_sigmas(schedule: NoiseSchedule, device) -> torch.Tensor:
    """(T,) ln σ_t = −½ log-SNR_t for t = 1..T, increasing, float64 on ``device`` (no copy per call)."""
    return -0.5 * schedule.tensor("log_snr", device, torch.float64)[1:]


def step_of_log_sigma(ln_sigma: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """The fractional step t ∈ [1, T] (float64) where ln σ_t = ``ln_sigma``, clamped to the schedule's range.

    Linear in ln σ between whole steps: the torch twin of :func:`trilemma.diffusion.samplers.time_at_sigma`.
    """
    log_sigmas = schedule_log_sigmas(schedule, ln_sigma.device)
    ln_sigma = ln_sigma.to(torch.float64).clamp(log_sigmas[0], log_sigmas[-1])
    hi = torch.searchsorted(log_sigmas, ln_sigma).clamp(1, len(log_sigmas) - 1)     # ln σ in [lo, hi]
    lo = hi - 1
    w = (ln_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
    return (lo + 1).to(torch.float64) + w                                        # steps are 1-based


def lognormal_t(batch_size: int, schedule: NoiseSchedule, p_mean: float, p_std: float,
                generator: torch.Generator | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, ᾱ_t), each (B,): ln σ ~ N(p_mean, p_std²) clamped to [ln σ_1, ln σ_T], t the fractional step of σ.

    t is float32 (what the network's time embedding reads), ᾱ float64 = 1/(1 + σ²) of the clamped σ.
    """
    log_sigmas = schedule_log_sigmas(schedule, device)
    ln_sigma = torch.randn(batch_size, generator=generator, device=device, dtype=torch.float64) * p_std + p_mean
    ln_sigma = ln_sigma.clamp(log_sigmas[0], log_sigmas[-1])
    return step_of_log_sigma(ln_sigma, schedule).float(), torch.sigmoid(-2.0 * ln_sigma)   # ᾱ = 1/(1 + σ²)
