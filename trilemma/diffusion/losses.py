"""The diffusion training objective (Algorithm 1 of Ho et al. 2020), per sample.

    x_0 ~ data;  t ~ Uniform{1..T};  ε ~ N(0, I)
    x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    L_simple = ‖ε − ε_θ(x_t, t)‖²          (ε-prediction)
    L_v      = ‖v − v_θ(x_t, t)‖²,  v = √ᾱ_t ε − √(1 − ᾱ_t) x_0   (v-prediction, Salimans & Ho 2022)

Min-SNR-γ weighting (Hang et al. 2023, docs/methods.md §12) multiplies the per-sample loss by w_t so
that the implied x₀-space weight is min(SNR_t, γ): since ‖x̂₀ − x₀‖² = ‖ε̂ − ε‖²/SNR_t for ε and
(1 − ᾱ_t)‖v̂ − v‖² = ‖v̂ − v‖²/(SNR_t + 1) for v,

    w_t = min(SNR_t, γ) / SNR_t          (ε)        w_t = min(SNR_t, γ) / (SNR_t + 1)      (v)

EDM preconditioning (``prediction="edm"``, Karras et al. 2022; :mod:`trilemma.diffusion.edm`) trains
the raw network F on (x₀ − c_skip x_t)/c_out from the input c_in·x_t, unweighted: that is EDM's λ(σ).
``noise_levels="lognormal"`` draws the noise level as EDM does, ln σ ~ N(P_mean, P_std²), at the
fractional step t of σ, for any prediction; ``"uniform"`` is t ~ Uniform{1..T}.

Losses return one value per sample (the mean over pixels); the training loop
reduces and calls backward.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch

from trilemma.diffusion.denoiser import Prediction
from trilemma.diffusion.edm import P_MEAN, P_STD, edm_coefficients, edm_target, lognormal_t
from trilemma.diffusion.schedule import NoiseSchedule, extract


def sample_t(batch_size: int, T: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """t ~ Uniform{1..T}, one per sample."""
    return torch.randint(1, T + 1, (batch_size,), generator=generator, device=device)


def diffusion_target(x_0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
                     prediction: Prediction) -> torch.Tensor:
    if prediction == "eps":
        return eps
    if prediction == "v":
        sa = extract(schedule.tensor("sqrt_alpha_bar", x_0.device), t, x_0.shape)
        s1a = extract(schedule.tensor("sqrt_one_minus_alpha_bar", x_0.device), t, x_0.shape)
        return sa * eps - s1a * x_0
    return x_0


Weighting = Literal["uniform", "min-snr"]
NoiseLevels = Literal["uniform", "lognormal"]


def min_snr_weight(t: torch.Tensor, schedule: NoiseSchedule, prediction: Prediction, gamma: float) -> torch.Tensor:
    """w_t of min-SNR-γ for the loss of ``prediction`` (module docstring), one per entry of ``t`` (1..T)."""
    return min_snr_weight_of_snr(schedule.tensor("log_snr", t.device)[t].double().exp(), prediction, gamma)


def min_snr_weight_of_snr(snr: torch.Tensor, prediction: Prediction, gamma: float) -> torch.Tensor:
    """w of min-SNR-γ at the given SNRs (any shape; also fractional steps)."""
    snr = snr.double()
    clipped = torch.clamp(snr, max=gamma)
    if prediction == "eps":
        w = clipped / snr
    elif prediction == "v":
        w = clipped / (snr + 1)
    else:                                                                          # x₀: the weight itself
        w = clipped
    return w.float()


def diffusion_loss(model: Callable[..., torch.Tensor], x_0: torch.Tensor, schedule: NoiseSchedule, *,
                   prediction: Prediction = "eps", generator: torch.Generator | None = None,
                   cond: dict[str, Any] | None = None, weighting: Weighting = "uniform",
                   snr_gamma: float = 5.0, noise_levels: NoiseLevels = "uniform",
                   p_mean: float = P_MEAN, p_std: float = P_STD, sigma_data: float = 0.5) -> dict[str, torch.Tensor]:
    """Per-sample diffusion loss for a batch ``x_0`` (B, C, H, W); returns {"loss": (B,), "t": (B,)}.

    ``weighting="min-snr"`` multiplies each sample's loss by the min-SNR-γ weight of its t.
    ``noise_levels="lognormal"`` draws t at log-normal noise levels (fractional, float t);
    ``prediction="edm"`` trains EDM's preconditioned F with data standard deviation ``sigma_data``.
    """
    B = x_0.shape[0]
    expand = (B, *([1] * (x_0.dim() - 1)))
    if noise_levels == "uniform":
        t = sample_t(B, schedule.T, generator, x_0.device)                        # (B,) long
        eps = torch.randn(x_0.shape, generator=generator, device=x_0.device, dtype=x_0.dtype)
        x_t = schedule.q_sample(x_0, t, eps)                                      # (B, C, H, W)
        alpha_bar = schedule.tensor("alpha_bar", x_0.device)[t].double()
    elif noise_levels == "lognormal":
        t, alpha_bar = lognormal_t(B, schedule, p_mean, p_std, generator, x_0.device)   # (B,) float t
        eps = torch.randn(x_0.shape, generator=generator, device=x_0.device, dtype=x_0.dtype)
        ab = alpha_bar.view(expand)
        x_t = ab.sqrt().to(x_0.dtype) * x_0 + (1.0 - ab).sqrt().to(x_0.dtype) * eps
    else:
        raise ValueError(f"noise_levels must be 'uniform' or 'lognormal', got {noise_levels!r}")
    if prediction == "edm":
        if weighting == "min-snr":
            raise ValueError("min-SNR weighting does not apply to EDM preconditioning (its loss weight is λ(σ))")
        ab = alpha_bar.view(expand)
        out = model(edm_coefficients(ab, sigma_data)[0].to(x_0.dtype) * x_t, t, **(cond or {}))
        target = edm_target(x_0, x_t, ab, sigma_data)
    else:
        out = model(x_t, t, **(cond or {}))
        if noise_levels == "uniform":
            target = diffusion_target(x_0, eps, t, schedule, prediction)
        else:
            ab = alpha_bar.view(expand)
            sa, s1a = ab.sqrt().to(x_0.dtype), (1.0 - ab).sqrt().to(x_0.dtype)
            target = {"eps": eps, "v": sa * eps - s1a * x_0}.get(prediction, x_0)
    loss = (out.float() - target.float()).pow(2).flatten(1).mean(1)              # (B,)
    if weighting == "min-snr":
        loss = loss * (min_snr_weight(t, schedule, prediction, snr_gamma) if noise_levels == "uniform"
                       else min_snr_weight_of_snr(alpha_bar / (1.0 - alpha_bar), prediction, snr_gamma))
    return {"loss": loss, "t": t}
