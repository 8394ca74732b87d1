"""The VAE objective as per-sample functions named after the maths (docs/methods.md §1).

    ELBO(x) = E_{q_φ(z|x)}[log p_θ(x|z)] − KL(q_φ(z|x) ‖ p(z)),   p(z) = N(0, I)

Every function returns one value per sample (or per dimension); the training
loop reduces. Log-likelihoods are in nats; bits per dimension = nats / (D ln 2)
with D = C·H·W.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

from trilemma.vae.config import VAEConfig

LOG_2PI = math.log(2 * math.pi)
BIN_WIDTH = 2.0 / 255.0      # 256 pixel levels spread over [−1, 1]
_FAR = 1e4                   # stands in for ±∞ at the edge bins (keeps gradients finite)


class Autoencoder(Protocol):
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = μ + σ ⊙ ε, ε ~ N(0, I): a sample of q(z|x) that is differentiable in μ and σ (Kingma & Welling 2014, §2.4)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − log σ_j² − 1): (B, d) → (B,) nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(dim=1)


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log N(x; μ, σ²) = −½ log 2π − log σ − ½ ((x − μ)/σ)², per dimension (a density, not a probability)."""
    return -0.5 * LOG_2PI - log_scale - 0.5 * ((x - mean) * torch.exp(-log_scale)).pow(2)


def discretised_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        bin_width: float = BIN_WIDTH) -> torch.Tensor:
    """log P(x), per dimension, for x on the 256 levels k/127.5 − 1 of [−1, 1] (Ho et al. 2020 §3.3).

    P(x) = Φ(b) − Φ(a) with a = (x − w/2 − μ)/σ, b = (x + w/2 − μ)/σ, w the bin width;
    the lowest level takes a = −∞, the highest b = +∞, so the 256 masses sum to 1.
    """
    inv_sigma = torch.exp(-log_scale)
    a = (x - mean - bin_width / 2) * inv_sigma
    b = (x - mean + bin_width / 2) * inv_sigma
    a = torch.where(x < -1 + bin_width / 2, torch.full_like(a, -_FAR), a)      # lowest level: (−∞, b]
    b = torch.where(x > 1 - bin_width / 2, torch.full_like(b, _FAR), b)        # highest level: [a, +∞)
    # Φ(b) − Φ(a) = Φ(−a) − Φ(−b): use the side where both are small tails, where log Φ is accurate.
    flip = (a + b) > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    # log(Φ(hi) − Φ(lo)) = log Φ(hi) + log(1 − exp(log Φ(lo) − log Φ(hi)))
    return log_hi + torch.log(-torch.expm1((log_lo - log_hi).clamp(max=-1e-30)))


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x) = x log σ(l) + (1 − x) log(1 − σ(l)) = −BCE-with-logits(l, x), per dimension; x ∈ {0, 1}."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def binarise(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic binarisation (Salakhutdinov & Murray 2008): x ∈ [−1, 1] → 2·Bernoulli((x + 1)/2) − 1 ∈ {−1, 1}.

    The uniforms come from ``generator`` on its own device (the trainer's CPU data generator, also
    when the images are resident on a GPU: the same draws as a CPU run) and then move to x's.
    """
    p = ((x + 1) / 2).clamp(0, 1)
    where = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=where, dtype=x.dtype).to(x.device, non_blocking=True)
    return torch.where(u < p, 1.0, -1.0).to(x.dtype)


def log_likelihood(x: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor | None], config: VAEConfig) -> torch.Tensor:
    """log p_θ(x|z) per sample (summed over the C·H·W dimensions): (B, C, H, W) → (B,)."""
    out, log_scale = params
    if config.likelihood == "bernoulli":
        ll = bernoulli_log_likelihood((x + 1) / 2, out)              # targets {0, 1} from {−1, 1}
    elif config.discretised:
        ll = discretised_gaussian_log_likelihood(x, out, log_scale)
    else:
        ll = gaussian_log_likelihood(x, out, log_scale)
    return ll.flatten(1).sum(dim=1)


def elbo_terms(model: Autoencoder, x: torch.Tensor, config: VAEConfig,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The (β-weighted) −ELBO of each image and its terms, all (B,).

    ``recon`` = −log p_θ(x|z) with one z ~ q_φ(z|x) (nats per image); ``kl`` =
    KL(q_φ(z|x) ‖ N(0, I)) in closed form; ``neg_elbo`` = recon + kl (always β = 1);
    ``bpd`` = neg_elbo / (D ln 2); ``loss`` = (recon + β·kl) / D, per dimension so
    that the gradient scale does not grow with the image size.
    """
    mu, logvar = model.encode(x)                                      # (B, d) each
    z = reparameterise(mu, logvar, generator)                         # (B, d)
    recon = -log_likelihood(x, model.decode(z), config)               # (B,)
    kl = gaussian_kl(mu, logvar)                                      # (B,)
    dims = x[0].numel()
    neg_elbo = recon + kl
    return {"loss": (recon + config.beta * kl) / dims, "recon": recon, "kl": kl, "neg_elbo": neg_elbo,
            "bpd": neg_elbo / (dims * math.log(2))}
