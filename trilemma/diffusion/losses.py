"""The diffusion training objective (Algorithm 1 of Ho et al. 2020), per sample.

    x_0 ~ data;  t ~ Uniform{1..T};  ε ~ N(0, I)
    x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    L_simple = ‖ε − ε_θ(x_t, t)‖²          (ε-prediction)
    L_v      = ‖v − v_θ(x_t, t)‖²,  v = √ᾱ_t ε − √(1 − ᾱ_t) x_0   (v-prediction, Salimans & Ho 2022)

Min-SNR-γ weighting (Hang et al. 2023, docs/methods.md §12) multiplies the per-sample loss by w_t so
that the implied x₀-space weight is min(SNR_t, γ): since ‖x̂₀ − x₀‖² = ‖ε̂ − ε‖²/SNR_t for ε and
(1 − ᾱ_t)‖v̂ − v‖² = ‖v̂ − v‖²/(SNR_t + 1) for v,

    w_t = min(SNR_t, γ) / SNR_t          (ε)        w_t = min(SNR_t, γ) / (SNR_t + 1)      (v)

Losses return one value per sample (the mean over pixels); the training loop
reduces and calls backward.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch

from trilemma.diffusion.denoiser import Prediction
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


def min_snr_weight(t: torch.Tensor, schedule: NoiseSchedule, prediction: Prediction, gamma: float) -> torch.Tensor:
    """w_t of min-SNR-γ for the loss of ``prediction`` (module docstring), one per entry of ``t`` (1..T)."""
    snr = schedule.tensor("log_snr", t.device)[t].double().exp()
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
                   snr_gamma: float = 5.0) -> dict[str, torch.Tensor]:
    """Per-sample diffusion loss for a batch ``x_0`` (B, C, H, W); returns {"loss": (B,), "t": (B,)}.

    ``weighting="min-snr"`` multiplies each sample's loss by the min-SNR-γ weight of its t.
    """
    B = x_0.shape[0]
    t = sample_t(B, schedule.T, generator, x_0.device)                            # (B,)
    eps = torch.randn(x_0.shape, generator=generator, device=x_0.device, dtype=x_0.dtype)
    x_t = schedule.q_sample(x_0, t, eps)                                          # (B, C, H, W)
    out = model(x_t, t, **(cond or {}))
    target = diffusion_target(x_0, eps, t, schedule, prediction)
    loss = (out.float() - target.float()).pow(2).flatten(1).mean(1)              # (B,)
    if weighting == "min-snr":
        loss = loss * min_snr_weight(t, schedule, prediction, snr_gamma)
    return {"loss": loss, "t": t}
