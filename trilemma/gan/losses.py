"""The GAN's costs (Goodfellow et al. 2014; docs/methods.md §2), per sample, from D's logits l.

D(x) = σ(l). Every log-probability is written with softplus, never as the log of
a probability (which is −∞ once σ(l) rounds to 0 or 1):

    log D       = log σ(l)      = −softplus(−l)
    log(1 − D)  = log σ(−l)     = −softplus(l)

Discriminator (ascends V, so minimises −V):     −log D(x) − log(1 − D(G(z)))
Generator, the original minimax cost:            log(1 − D(G(z)))     (saturates)
Generator, the alternative non-saturating cost:  −log D(G(z))

With respect to the fake logit l, d/dl log(1 − σ(l)) = −σ(l) → 0 as D(G(z)) → 0:
the minimax cost stops teaching G exactly when D wins; d/dl [−log σ(l)] =
−(1 − σ(l)) → −1 keeps the gradient (Arjovsky & Bottou 2017).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(x) − log(1 − D(G(z))) per pair (real i, fake i): (B,), (B,) → (B,)."""
    return F.softplus(-real_logits) + F.softplus(fake_logits)       # −log σ(l_r) = softplus(−l_r); −log σ(−l_f) = softplus(l_f)


def minimax_generator_cost(fake_logits: torch.Tensor) -> torch.Tensor:
    """log(1 − D(G(z))), minimised by G (the original cost): (B,) → (B,)."""
    return -F.softplus(fake_logits)                                  # log(1 − σ(l)) = log σ(−l) = −softplus(l)


def nonsaturating_generator_cost(fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(G(z)), minimised by G (the alternative cost): (B,) → (B,)."""
    return F.softplus(-fake_logits)                                  # −log σ(l) = softplus(−l)


GENERATOR_COSTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "minimax": minimax_generator_cost,
    "nonsaturating": nonsaturating_generator_cost,
}


def discriminator_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Share of reals with D > ½ and fakes with D < ½ (a logit > 0 means "real"), over both batches."""
    return torch.cat([real_logits > 0, fake_logits < 0]).float().mean()
