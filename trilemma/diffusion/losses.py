"""The diffusion training objective (Algorithm 1 of Ho et al. 2020), per sample.

    x_0 ~ data;  t ~ Uniform{1..T};  ε ~ N(0, I)
    x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    L_simple = ‖ε − ε_θ(x_t, t)‖²          (ε-prediction)
    L_v      = ‖v − v_θ(x_t, t)‖²,  v = √ᾱ_t ε − √(1 − ᾱ_t) x_0   (v-prediction, Salimans & Ho 2022)

Losses return one value per sample (the mean over pixels); the training loop
reduces and calls backward.
"""

from __future__ import annotations

from typing import Any, Callable

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


def diffusion_loss(model: Callable[..., torch.Tensor], x_0: torch.Tensor, schedule: NoiseSchedule, *,
                   prediction: Prediction = "eps", generator: torch.Generator | None = None,
                   cond: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Per-sample diffusion loss for a batch ``x_0`` (B, C, H, W); returns {"loss": (B,), "t": (B,)}."""
    B = x_0.shape[0]
    t = sample_t(B, schedule.T, generator, x_0.device)                            # (B,)
    eps = torch.randn(x_0.shape, generator=generator, device=x_0.device, dtype=x_0.dtype)
    x_t = schedule.q_sample(x_0, t, eps)                                          # (B, C, H, W)
    out = model(x_t, t, **(cond or {}))
    target = diffusion_target(x_0, eps, t, schedule, prediction)
    loss = (out.float() - target.float()).pow(2).flatten(1).mean(1)              # (B,)
    return {"loss": loss, "t": t}
