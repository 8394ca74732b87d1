"""The autoencoder's per-image objective, PSNR, the latent scale factor and the patch discriminator's losses.

Objective (docs/methods.md §7): rec(x, x̂) + β·KL(q(z|x) ‖ N(0, I)), per image, divided by the number of pixels.
Discriminator losses are per image (the mean over its patches), from logits l:

    hinge (Lim & Ye 2017; VQGAN):   L_D = relu(1 − l_real) + relu(1 + l_fake),   L_G = −l_fake
    non-saturating (Goodfellow et al. 2014): the GAN family's pair in :mod:`trilemma.gan.losses`
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trilemma.autoencoder.config import AutoencoderObjective
from trilemma.autoencoder.networks import Autoencoder
from trilemma.errors import TrilemmaError
from trilemma.gan.losses import discriminator_loss, nonsaturating_generator_cost
from trilemma.vae.losses import gaussian_kl, reparameterise


# ----------------------------------------------------------------------------------------- the objective
def reconstruction_error(x: torch.Tensor, x_hat: torch.Tensor, kind: str) -> torch.Tensor:
    """Σ over pixels of |x − x̂| (``l1``) or (x − x̂)² (``l2``): (B, C, H, W) × 2 → (B,)."""
    diff = (x_hat.float() - x.float()).flatten(1)
    return diff.abs().sum(1) if kind == "l1" else diff.pow(2).sum(1)



def psnr(x: torch.Tensor, x_hat: torch.Tensor, peak: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10 log10(peak² / MSE) dB: (B, C, H, W) × 2 → (B,).

    ``peak`` is the data range: 2 for floats in [−1, 1], 255 for uint8 pixels.
    """
    mse = (x_hat.double() - x.double()).flatten(1).pow(2).mean(1)
    return 10 * torch.log10(peak ** 2 / mse.clamp_min(1e-20))



def autoencoder_terms(model: Autoencoder, x: torch.Tensor, objective: AutoencoderObjective,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-image terms of the phase-1 loss, all (B,), plus the reconstructions ``x_hat`` (B, C, H, W).

    ``loss`` = (rec + β·KL) / D with D = C·H·W; ``rec`` = rec / D (the mean error per pixel);
    ``kl`` in nats per image; ``psnr`` of x̂ (one posterior sample) in dB on [−1, 1].
    """
    mu, logvar = model.encode(x)                                            # (B, c, h, w) each
    z = reparameterise(mu, logvar, generator)                               # z = μ + σ ⊙ ε
    x_hat = model.decode(z)                                                 # (B, C, H, W)
    rec = reconstruction_error(x, x_hat, objective.recon)                   # (B,)
    kl = gaussian_kl(mu.flatten(1).float(), logvar.flatten(1).float())      # (B,) nats
    dims = x[0].numel()
    return {"loss": (rec + objective.kl_weight * kl) / dims, "rec": rec / dims, "kl": kl,
            "psnr": psnr(x.detach(), x_hat.detach().clamp(-1, 1)).float(), "x_hat": x_hat}



@torch.no_grad()
def latent_moments(latents: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    """Mean, standard deviation and scale factor s = 1/std over every element of ``latents`` (N, c, h, w).

    Accumulated in float64, so ``(latents · s).std()`` over the same set is 1 to ~1e-12.
    """
    n, total, total_sq = 0, 0.0, 0.0
    for start in range(0, len(latents), batch):
        z = latents[start:start + batch].double()
        n += z.numel()
        total += z.sum().item()
        total_sq += z.pow(2).sum().item()
    mean = total / n
    var = (total_sq - n * mean ** 2) / (n - 1)                               # unbiased, as torch.std
    std = math.sqrt(max(var, 0.0))
    if not std > 0:
        raise TrilemmaError("the autoencoder's latents are constant on the training set (std 0): "
                            "it has not learned anything; train it longer")
    return {"mean": mean, "std": std, "scale_factor": 1.0 / std}


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).mean(1)                                        # (B, 1, h, w) → (B,)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """relu(1 − l_real) + relu(1 + l_fake), averaged over each image's patches: → (B,)."""
    return _per_image(F.relu(1 - real_logits)) + _per_image(F.relu(1 + fake_logits))


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−l_fake, averaged over each image's patches: → (B,)."""
    return -_per_image(fake_logits)


def nonsaturating_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(x) − log(1 − D(x̂)) per patch (the GAN family's discriminator loss), averaged per image."""
    return _per_image(discriminator_loss(real_logits, fake_logits))


def nonsaturating_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(x̂) per patch, averaged per image."""
    return _per_image(nonsaturating_generator_cost(fake_logits))


# name -> (discriminator loss, generator loss), both per image
DISC_LOSSES = {"hinge": (hinge_d_loss, hinge_g_loss), "nonsaturating": (nonsaturating_d_loss, nonsaturating_g_loss)}
