"""The denoiser boundary: any network becomes (ε̂, x̂₀) for the samplers.

Samplers never know what the network predicts. :class:`Denoiser` wraps a
network trained for one of three parameterisations and returns both the noise
estimate ε̂ and the clean-image estimate x̂₀, using

    x_t = √ᾱ x_0 + √(1−ᾱ) ε                      (forward process)
    ε-prediction:  x̂₀ = (x_t − √(1−ᾱ) ε̂) / √ᾱ
    v-prediction:  v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022), so
                   x̂₀ = √ᾱ x_t − √(1−ᾱ) v̂,  ε̂ = √(1−ᾱ) x_t + √ᾱ v̂
    x₀-prediction: ε̂ = (x_t − √ᾱ x̂₀) / √(1−ᾱ)
    EDM (Karras et al. 2022, :mod:`trilemma.diffusion.edm`): the network sees c_in·x_t and
                   x̂₀ = c_skip·x_t + c_out·F, then ε̂ as for x₀-prediction

With ``clip`` set, x̂₀ is clamped to the data range and ε̂ recomputed from it,
so (ε̂, x̂₀) stay consistent (the "clip_denoised" of Ho et al.'s code).
Classifier-free guidance (Ho & Salimans 2022) lives here too: with a guidance
weight w ≠ 1 and an unconditional input, ε̃ = ε(∅) + w · (ε(y) − ε(∅)), with
the conditional and unconditional halves run as one batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch

from trilemma.diffusion.edm import edm_coefficients

Prediction = Literal["eps", "v", "x0", "edm"]
PREDICTIONS: tuple[str, ...] = ("eps", "v", "x0", "edm")


def _concat_cond(cond: dict[str, Any], uncond: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in cond.items():
        other = uncond[key]
        out[key] = torch.cat([value, other]) if isinstance(value, torch.Tensor) else value
    return out


def _time_batch(t: int | float, x_t: torch.Tensor) -> torch.Tensor:
    """(B,) copies of the step t: long if t is a whole number, else float (float64 for float64 x_t)."""
    if float(t).is_integer():
        return torch.full((x_t.shape[0],), int(t), device=x_t.device, dtype=torch.long)
    dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
    return torch.full((x_t.shape[0],), float(t), device=x_t.device, dtype=dtype)


class Denoiser:
    """Wrap ``model(x_t, t, **cond)`` into ``(ε̂, x̂₀) = denoiser(x_t, t, alpha_bar, cond)``.

    Args:
        model: the network; called as ``model(x_t, t_batch, **cond)``.
        prediction: what the network outputs: "eps", "v", "x0" or "edm" (EDM's preconditioned F).
        clip: clamp x̂₀ to this range (``None``: no clamping; use for latents).
        guidance: classifier-free guidance weight w (1 = plain conditional prediction).
        uncond: the conditioning of the "empty" prompt, same keys as ``cond``; needed when w ≠ 1.
        sigma_data: σ_d of EDM preconditioning (``prediction="edm"`` only).
    """

    def __init__(self, model: Callable[..., torch.Tensor], prediction: Prediction = "eps",
                 clip: tuple[float, float] | None = (-1.0, 1.0), guidance: float = 1.0,
                 uncond: dict[str, Any] | None = None, sigma_data: float = 0.5):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if guidance != 1.0 and uncond is None:
            raise ValueError("classifier-free guidance (w != 1) needs the unconditional input `uncond`")
        self.model = model
        self.prediction = prediction
        self.clip = clip
        self.guidance = guidance
        self.uncond = uncond
        self.sigma_data = float(sigma_data)

    def raw(self, x_t: torch.Tensor, t_batch: torch.Tensor, cond: dict[str, Any] | None) -> torch.Tensor:
        """The network's output, with classifier-free guidance applied when w ≠ 1."""
        cond = cond or {}
        if self.guidance == 1.0:
            return self.model(x_t, t_batch, **cond)
        both = self.model(torch.cat([x_t, x_t]), torch.cat([t_batch, t_batch]), **_concat_cond(cond, self.uncond))
        out_cond, out_uncond = both.chunk(2)
        return out_uncond + self.guidance * (out_cond - out_uncond)   # ε̃ = ε(∅) + w (ε(y) − ε(∅))

    def __call__(self, x_t: torch.Tensor, t: int | float, alpha_bar: float,
                 cond: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, x̂₀) at step ``t`` (the network's step) where ᾱ_t = ``alpha_bar``.

        An integer ``t`` reaches the network as a long tensor, as in training. A fractional
        ``t`` (the ODE solvers' Karras and log-SNR grids fall between steps) reaches it as a
        float tensor; the sinusoidal time embedding takes ``t.float()``, so it is defined there.
        """
        t_batch = _time_batch(t, x_t)
        sa, s1a = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
        if self.prediction == "edm":
            c_in, c_skip, c_out = (float(c) for c in edm_coefficients(alpha_bar, self.sigma_data))
            out = self.raw(c_in * x_t, t_batch, cond).to(x_t.dtype)
            x0_hat = c_skip * x_t + c_out * out
            eps_hat = (x_t - sa * x0_hat) / s1a
        else:
            out = self.raw(x_t, t_batch, cond).to(x_t.dtype)
        if self.prediction == "eps":
            eps_hat = out
            x0_hat = (x_t - s1a * eps_hat) / sa
        elif self.prediction == "v":
            x0_hat = sa * x_t - s1a * out
            eps_hat = s1a * x_t + sa * out
        elif self.prediction == "x0":
            x0_hat = out
            eps_hat = (x_t - sa * x0_hat) / s1a
        if self.clip is not None:
            x0_hat = x0_hat.clamp(*self.clip)
            eps_hat = (x_t - sa * x0_hat) / s1a
        return eps_hat, x0_hat
