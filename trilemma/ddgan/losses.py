"""The DDGAN game, per sample (Xiao et al., ICLR 2022, eq. 8–9; docs/methods.md §11).

For t ~ Uniform{1..T}, x_0 ~ data:

    real pair   x_{t−1} ~ q(x_{t−1} | x_0),  x_t ~ q(x_t | x_{t−1})
    fake pair   the same x_t,  x′_{t−1} ~ q(x_{t−1} | x_t, x̂₀),  x̂₀ = G(x_t, z, t),  z ~ N(0, I)

    D minimises   −log D(x_{t−1}, x_t, t) − log(1 − D(x′_{t−1}, x_t, t)) + γ/2 ‖∇_{x_{t−1}} D(x_{t−1}, x_t, t)‖²
    G minimises   −log D(x′_{t−1}, x_t, t)                                   (non-saturating)
                  [+ λ·mean|x̂₀ − x₀|, an optional L1 reconstruction term; the paper has λ = 0]

or, with ``loss = "rp"`` (relativistic pairing; not the paper's), on the real and fake pair that share x_t:

    D minimises   softplus(l(x′_{t−1}, x_t, t) − l(x_{t−1}, x_t, t)) + R1
    G minimises   softplus(l(x_{t−1}, x_t, t) − l(x′_{t−1}, x_t, t))

with D = σ(logit) and every log-probability written with softplus
(:mod:`trilemma.gan.losses`). The R1 gradient is of the logit (as in Mescheder
et al. 2018 and the paper's code), taken with respect to the real x_{t−1} only.

Everything here returns (B,) tensors and never calls ``.backward()``: a trainer
averages ``terms["loss"]`` and steps its optimiser. The D step draws G's x̂₀
under ``torch.no_grad()``; the G step leaves D's parameters as they are (freeze
them with ``D.requires_grad_(False)`` around it, or zero D's gradients before
its next step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.ddgan.diffusion import posterior_sample, q_sample_pairs, randn, sample_t
from trilemma.diffusion.schedule import NoiseSchedule
from trilemma.gan.losses import discriminator_loss, nonsaturating_generator_cost

Disc = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(real pair) − log(1 − D(fake pair)) = softplus(−l_r) + softplus(l_f): (B,), (B,) → (B,)."""
    return discriminator_loss(real_logits, fake_logits)


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating cost −log D(fake pair) = softplus(−l_f): (B,) → (B,)."""
    return nonsaturating_generator_cost(fake_logits)


def rp_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic pairing, D's cost −log σ(l_r − l_f) = softplus(l_f − l_r) (Jolicoeur-Martineau 2019): (B,), (B,) → (B,)."""
    return F.softplus(fake_logits - real_logits)


def rp_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic pairing, G's cost −log σ(l_f − l_r) = softplus(l_r − l_f): (B,), (B,) → (B,)."""
    return F.softplus(real_logits - fake_logits)


def r1_from_logits(real_logits: torch.Tensor, x_prev: torch.Tensor, gamma: float) -> torch.Tensor:
    """γ/2 ‖∂ l_i / ∂ x_{t−1,i}‖² per sample, from logits already computed on ``x_prev`` (which requires grad).

    The gradient of Σ_i l_i gives each sample's own gradient because every logit
    depends on its own pair only; with D's minibatch-standard-deviation map
    (``mbstd_group > 0``) it also holds the group's cross terms, as in the paper's
    code. ``create_graph=True``: the penalty is differentiable with respect to D's
    parameters. (B,), (B, C, H, W) → (B,).
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), x_prev, create_graph=True)      # (B, C, H, W)
    return 0.5 * gamma * grad.flatten(1).square().sum(dim=1)                          # (B,)


def r1_penalty(disc: Disc, x_prev_real: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 = γ/2 ‖∇_{x_{t−1}} D(x_{t−1}, x_t, t)‖² on real pairs (Mescheder et al. 2018; paper eq. 9): (B,).

    Computed with autograd on a fresh leaf copy of ``x_prev_real`` (x_t is
    treated as a constant); differentiable with respect to D's parameters.
    """
    x_prev = x_prev_real.detach().requires_grad_(True)                               # (B, C, H, W)
    return r1_from_logits(disc(x_prev, x_t.detach(), t), x_prev, gamma)


def energy_score(a: torch.Tensor, b: torch.Tensor, x_0: torch.Tensor) -> torch.Tensor:
    """Per-sample energy score ½(‖a − x₀‖ + ‖b − x₀‖) − ½‖a − b‖ of two draws a, b of x̂₀ (Gneiting & Raftery 2007).

    Norms are root-mean-squares over the C·H·W values (Euclidean norm / √(C·H·W)). Its expectation
    over a, b ~ p(· | x_t) and x₀ ~ q(x₀ | x_t) is a strictly proper score: lowest exactly when
    p(· | x_t) = q(x₀ | x_t), so it rewards as much spread as the true conditional has, no more
    (the ½‖a − b‖ term pays for spread, the first two for closeness). 1e-12 under each root keeps
    the gradient finite where two draws coincide (a zero-initialised G). (B, C, H, W) × 3 → (B,).
    """
    def rms(u: torch.Tensor) -> torch.Tensor:
        u = u.to(torch.promote_types(u.dtype, torch.float32)).flatten(1)              # bf16 → fp32, fp64 kept
        return u.square().mean(dim=1).add(1e-12).sqrt()                              # (B,)
    return 0.5 * (rms(a - x_0) + rms(b - x_0)) - 0.5 * rms(a - b)


def hide_x_t(x_t: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """D's view of x_t (B, C, H, W): each sample's replaced by zeros with probability ``p`` (``--d-uncond``).

    A hidden pair shows D x_{t−1} alone, so the game also matches the marginal of x_{t−1}, not only
    the pair (docs/methods.md §11.6). Nothing is drawn at p = 0 (the paper's: D always sees x_t).
    """
    if p <= 0:
        return x_t
    where = x_t.device if generator is None else generator.device
    shown = torch.rand(x_t.shape[0], generator=generator, device=where).to(x_t.device) >= p       # (B,)
    return x_t * shown.to(x_t.dtype)[:, None, None, None]


def discriminator_terms(G: nn.Module, D: nn.Module, schedule: NoiseSchedule, x_0: torch.Tensor, z_dim: int,
                        r1_gamma: float, generator: torch.Generator | None = None,
                        loss: str = "ns", t_probs: Sequence[float] | None = None,
                        d_uncond: float = 0.0) -> dict[str, torch.Tensor]:
    """One D step's per-sample terms on data x_0 (B, C, H, W); each value is (B,).

    ``loss`` = ``d_loss`` + ``r1`` (minimise its mean over D's parameters; ``d_loss`` is
    −log D(real) − log(1 − D(fake)), or softplus(l_fake − l_real) with ``loss="rp"``); ``d_real``
    and ``d_fake`` are D's probabilities σ(l) of the real and fake pairs (detached);
    ``t`` the steps drawn. ``r1_gamma = 0`` skips the penalty (lazy regularisation:
    pass :meth:`DDGANConfig.r1_gamma_at` of the step). G runs without gradients. ``t_probs``:
    P(t = 1..T) (None: uniform, the paper's; :meth:`DDGANConfig.t_probs`). ``d_uncond``: the share
    of pairs whose x_t D does not see (:func:`hide_x_t`; the real and the fake pair of one x_t alike).
    """
    B = x_0.shape[0]
    t = sample_t(B, schedule.T, x_0.device, generator, t_probs)                      # (B,) in 1..T
    x_prev, x_t = q_sample_pairs(schedule, x_0, t, generator)                         # (B, C, H, W) × 2
    x_prev = x_prev.detach().requires_grad_(r1_gamma > 0)
    x_t_seen = hide_x_t(x_t, d_uncond, generator)                                    # D's view of x_t
    real_logits = D(x_prev, x_t_seen, t)                                             # (B,)
    r1 = r1_from_logits(real_logits, x_prev, r1_gamma) if r1_gamma > 0 else torch.zeros_like(real_logits)
    with torch.no_grad():
        x0_hat = G(x_t, randn((B, z_dim), x_0, generator), t)                        # (B, C, H, W)
        x_prev_fake = posterior_sample(schedule, x0_hat, x_t, t, generator)          # (B, C, H, W), same x_t
    fake_logits = D(x_prev_fake, x_t_seen, t)                                        # (B,)
    loss_d = (rp_d_loss if loss == "rp" else d_loss)(real_logits, fake_logits)       # (B,)
    return {"loss": loss_d + r1, "d_loss": loss_d, "r1": r1,
            "d_real": torch.sigmoid(real_logits).detach(), "d_fake": torch.sigmoid(fake_logits).detach(), "t": t}


def generator_terms(G: nn.Module, D: nn.Module, schedule: NoiseSchedule, x_0: torch.Tensor, z_dim: int,
                    generator: torch.Generator | None = None, rec_weight: float = 0.0,
                    loss: str = "ns", div_weight: float = 0.0, div_cap: float = 0.5,
                    es_weight: float = 0.0, t_probs: Sequence[float] | None = None,
                    d_uncond: float = 0.0) -> dict[str, torch.Tensor]:
    """One G step's per-sample terms on fresh fake pairs from data x_0 (B, C, H, W); each value is (B,).

    ``loss`` = −log D(x′_{t−1}, x_t, t) (``loss="rp"``: softplus(l_real − l_fake) against the real
    pair of the same x_t, whose logit is taken without gradients) + λ·``rec`` with λ = ``rec_weight``
    − μ·min(``div``, τ) with μ = ``div_weight``, τ = ``div_cap`` + ν·``es`` with ν = ``es_weight``
    (minimise its mean over G's parameters); ``rec`` = mean |x̂₀ − x₀| over the pixels (the L1
    reconstruction of the x₀ that made x_t, detached); ``div`` = mean|x̂₀(z₁) − x̂₀(z₂)| / mean|z₁ − z₂|,
    how far a second z moves x̂₀ at the same x_t and t (DSGAN's diversity ratio; computed only when
    ``div_weight > 0``, else 0; detached); ``es`` = :func:`energy_score` of x̂₀(z₁), x̂₀(z₂) against
    the x₀ that made x_t (computed only when ``es_weight > 0``, else 0; detached; the second z is
    drawn once for both terms); ``d_fake`` = σ(l) of the pairs (detached); ``t`` the steps drawn,
    from ``t_probs`` as in :func:`discriminator_terms`; ``d_uncond`` hides x_t from D as there (the
    mask is drawn after every other draw of the step).
    """
    B = x_0.shape[0]
    t = sample_t(B, schedule.T, x_0.device, generator, t_probs)                      # (B,) fresh steps
    x_prev, x_t = q_sample_pairs(schedule, x_0, t, generator)                         # (B, C, H, W) × 2
    z = randn((B, z_dim), x_0, generator)                                            # (B, z_dim)
    x0_hat = G(x_t, z, t)                                                            # (B, C, H, W)
    x_prev_fake = posterior_sample(schedule, x0_hat, x_t, t, generator)              # (B, C, H, W)
    div = es = torch.zeros(B, device=x_0.device)
    if div_weight > 0 or es_weight > 0:                                              # a second z at the same x_t, t
        z_2 = randn((B, z_dim), x_0, generator)                                      # (B, z_dim)
        x0_hat_2 = G(x_t, z_2, t)                                                    # (B, C, H, W)
        if div_weight > 0:
            moved = (x0_hat - x0_hat_2).abs().flatten(1).mean(dim=1)                 # (B,)
            div = moved / (z - z_2).abs().mean(dim=1)                                # (B,)
        if es_weight > 0:
            es = energy_score(x0_hat, x0_hat_2, x_0.detach())                        # (B,)
    x_t_seen = hide_x_t(x_t, d_uncond, generator)                                    # D's view of x_t
    fake_logits = D(x_prev_fake, x_t_seen, t)                                        # (B,)
    if loss == "rp":                                                                 # against the real pair of the same x_t
        with torch.no_grad():                                                        # no path to G's parameters
            real_logits = D(x_prev, x_t_seen, t)                                     # (B,)
        adversarial = rp_g_loss(real_logits, fake_logits)                            # (B,)
    else:
        adversarial = g_loss(fake_logits)                                            # (B,)
    rec = (x0_hat - x_0).abs().flatten(1).mean(dim=1)                                 # (B,)
    return {"loss": adversarial + rec_weight * rec - div_weight * div.clamp(max=div_cap) + es_weight * es,
            "rec": rec.detach(), "div": div.detach(), "es": es.detach(),
            "d_fake": torch.sigmoid(fake_logits).detach(), "t": t}


def regression_terms(G: nn.Module, schedule: NoiseSchedule, x_0: torch.Tensor, z_dim: int,
                     generator: torch.Generator | None = None,
                     t_probs: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """G as a denoiser (``--pretrain``): per-sample mean (x̂₀ − x₀)² at t ~ U{1..T}, x_t ~ q(x_t | x₀); each (B,).

    ``loss`` = mean squared error over the pixels (its minimiser over G is E[x₀ | x_t]); ``rec``
    = mean |x̂₀ − x₀| as in :func:`generator_terms`, detached; ``t`` the steps drawn (from ``t_probs``).
    """
    B = x_0.shape[0]
    t = sample_t(B, schedule.T, x_0.device, generator, t_probs)                      # (B,) in 1..T
    _, x_t = q_sample_pairs(schedule, x_0, t, generator)                              # (B, C, H, W)
    x0_hat = G(x_t, randn((B, z_dim), x_0, generator), t)                            # (B, C, H, W)
    err = (x0_hat.float() - x_0.float()).flatten(1)                                  # (B, C·H·W)
    return {"loss": err.square().mean(dim=1), "rec": err.abs().mean(dim=1).detach(), "t": t}
