"""Algorithm 1 of Goodfellow et al. (2014): one training iteration = k discriminator steps, then one generator step.

    for k steps:
        sample m noises z and m real examples x
        ascend  ∇_θd (1/m) Σ [log D(x⁽ⁱ⁾) + log(1 − D(G(z⁽ⁱ⁾)))]      (= descend the mean discriminator_loss)
    sample m noises z
    descend ∇_θg (1/m) Σ cost(D(G(z⁽ⁱ⁾)))                               (minimax or non-saturating cost)

The optimisers are whatever the caller built (Adam, lr 2e-4, β = (0.5, 0.999) in
trilemma's trainer, after Radford et al. 2016).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from trilemma.gan.losses import discriminator_accuracy, discriminator_loss
from trilemma.train.common import grad_norm_and_clip

Cost = Callable[[torch.Tensor], torch.Tensor]


def discriminator_step(G: nn.Module, D: nn.Module, opt_d: torch.optim.Optimizer, x: torch.Tensor, z: torch.Tensor,
                       grad_clip: float = 0.0) -> dict[str, float]:
    """One ascent step of D on V(D, G) with reals x (m, C, H, W) and noises z (m, z_dim); G is not changed."""
    with torch.no_grad():
        x_fake = G(z)                                                   # (m, C, H, W), no gradient into G
    l_real, l_fake = D(x), D(x_fake)                                    # (m,), (m,) logits; one batch each (DCGAN)
    loss_d = discriminator_loss(l_real, l_fake).mean()
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    grad_norm = grad_norm_and_clip(D.parameters(), grad_clip)
    opt_d.step()
    return {"loss_d": loss_d.item(), "d_real": torch.sigmoid(l_real).mean().item(),
            "d_accuracy": discriminator_accuracy(l_real, l_fake).item(), "grad_norm_d": grad_norm}


def generator_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, z: torch.Tensor, cost: Cost,
                   grad_clip: float = 0.0) -> dict[str, float]:
    """One descent step of G on the mean ``cost`` of D's logits for G(z); D is not changed."""
    D.requires_grad_(False)
    l_gen = D(G(z))                                                     # (m,) logits of fresh fakes
    loss_g = cost(l_gen).mean()
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    grad_norm = grad_norm_and_clip(G.parameters(), grad_clip)
    opt_g.step()
    D.requires_grad_(True)
    return {"loss_g": loss_g.item(), "d_fake": torch.sigmoid(l_gen).mean().item(), "grad_norm_g": grad_norm}


def algorithm1_iteration(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, *,
                         real_batch: Callable[[], torch.Tensor], noise: Callable[[int], torch.Tensor], k: int,
                         generator_cost: Cost, grad_clip: float = 0.0) -> dict[str, float]:
    """One iteration of Algorithm 1; returns the last D step's and the G step's statistics.

    ``real_batch()`` returns a fresh minibatch of real images (m, C, H, W) on the
    device; ``noise(m)`` a fresh (m, z_dim) draw of z ~ N(0, I).
    """
    for _ in range(k):                                                  # k discriminator steps
        x = real_batch()
        d_stats = discriminator_step(G, D, opt_d, x, noise(len(x)), grad_clip)
    g_stats = generator_step(G, D, opt_g, noise(len(x)), generator_cost, grad_clip)   # then one generator step
    return {**d_stats, **g_stats}


def generator_gradient_norms(G: nn.Module, D: nn.Module, z: torch.Tensor, costs: dict[str, Cost]) -> dict[str, float]:
    """‖∇_θg (1/m) Σ cost(D(G(z⁽ⁱ⁾)))‖₂ for each cost, on the fixed noises z; nothing is updated.

    The quantity of Arjovsky & Bottou (2017), Figures 2 and 3: how much the
    generator would be taught by each cost against the current D.
    """
    params = [p for p in G.parameters()]
    D.requires_grad_(False)
    logits = D(G(z))                                                    # (m,), one forward pass for every cost
    out = {}
    for name, cost in costs.items():
        grads = torch.autograd.grad(cost(logits).mean(), params, retain_graph=True)
        out[name] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
    D.requires_grad_(True)
    return out
