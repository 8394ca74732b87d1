"""Denoising diffusion GANs: the schedule against its closed form, the real pairs' joint law, the posterior step
(a perfect x₀ predictor reproduces the forward marginals), the fake pairs, R1 against autograd and finite
differences, the costs against their formulas, the networks, and the configs."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trilemma.config import from_dict, to_dict
from trilemma.ddgan import (
    DDGANConfig,
    DDGANDiscriminator,
    DDGANGenerator,
    DDGANNetConfig,
    d_loss,
    ddgan_sample,
    ddgan_schedule,
    discriminator_terms,
    energy_score,
    g_loss,
    generator_terms,
    make_discriminator,
    make_generator,
    posterior_coefficients,
    posterior_sample,
    preset,
    q_sample_pairs,
    r1_penalty,
)
from trilemma.ddgan.diffusion import respaced_steps, sample_t
from trilemma.ddgan.losses import hide_x_t, regression_terms
from trilemma.ddgan.networks import minibatch_stddev
from trilemma.diffusion.schedule import make_schedule
from trilemma.errors import TrilemmaError

X0_PIXELS = torch.tensor([-0.9, -0.3, 0.4, 1.0], dtype=torch.float64).reshape(1, 1, 2, 2)   # one 2×2 "image"


def repeated_x0(n: int) -> torch.Tensor:
    return X0_PIXELS.expand(n, 1, 2, 2).clone()                                   # (n, 1, 2, 2)


def steps_cycling(n: int, T: int) -> torch.Tensor:
    return torch.arange(n) % T + 1                                                # (n,) with every t = 1..T equally often


def perturb(module: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Move every weight off its initialisation (zero-initialised residual convs would hide the conditioning)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def slope_and_residual_var(y: torch.Tensor, x: torch.Tensor) -> tuple[float, float, float]:
    """Least-squares y ≈ a + b·x over samples (dim 0), pooled over pixels centred separately: (b, a_mean, residual var)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    b = (xc * yc).sum() / (xc * xc).sum()
    residual = yc - b * xc
    return b.item(), (y.mean(0) - b * x.mean(0)), residual.var().item()


# ------------------------------------------------------------------------------------------ the schedule
@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_vp_schedule_is_the_closed_form_alpha_bar_on_k_over_T_and_has_T_steps(T):
    s = ddgan_schedule(DDGANConfig(T=T, t_eps=0.0))
    k = np.arange(T + 1) / T
    closed = np.exp(-0.1 * k - 0.5 * (20.0 - 0.1) * k ** 2)                        # ᾱ(t) = exp(−β_min t − ½Δβ t²)
    assert s.T == T and len(s.betas) == T + 1 and s.betas[0] == 0.0
    np.testing.assert_allclose(s.alpha_bar, closed, rtol=1e-12)
    np.testing.assert_array_equal(s.model_t, np.arange(T + 1))                     # the networks are told t itself
    assert np.all(np.diff(s.alpha_bar) < 0)


def test_vp_schedule_matches_the_papers_code_convention():
    # The public code: t_k = ε + (1 − ε)k/T with ε = 1e-3, var(t) = 1 − exp(2(−¼Δβ t² − ½β_min t)),
    # ᾱ = 1 − var, β_k = 1 − ᾱ_k/ᾱ_{k−1}; written out here independently of vp_betas.
    T, eps = 4, 1e-3
    t = np.arange(T + 1) / T * (1 - eps) + eps
    log_mean = -0.25 * t ** 2 * (20.0 - 0.1) - 0.5 * t * 0.1
    ab = 1.0 - (1.0 - np.exp(2 * log_mean))
    s = ddgan_schedule(DDGANConfig(T=4))
    np.testing.assert_allclose(s.betas[1:], 1 - ab[1:] / ab[:-1], rtol=1e-12)
    np.testing.assert_allclose(s.alpha_bar[1:], ab[1:] / ab[0], rtol=1e-12)
    # The paper's T = 4 steps are large: β ≈ (0.48, 0.85, 0.96, 0.99) and x_T is nearly pure noise.
    np.testing.assert_allclose(s.betas[1:], [0.478, 0.849, 0.956, 0.987], atol=1e-3)
    assert s.alpha_bar[-1] < 1e-4


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respaced_trilemma_schedule_keeps_alpha_bar_at_the_kept_steps(name):
    s = ddgan_schedule(DDGANConfig(T=4, schedule=name, base_T=1000))
    base = make_schedule(name, T=1000)
    taus = respaced_steps(1000, 4)
    assert taus == [250, 500, 750, 1000]
    np.testing.assert_allclose(s.alpha_bar[1:], base.alpha_bar[taus], rtol=1e-9, atol=1e-12)
    assert s.T == 4 and s.betas[0] == 0.0 and list(s.model_t) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------ real pairs
def test_real_pairs_have_the_forward_joint():
    T, n = 4, 80_000
    s = ddgan_schedule(DDGANConfig(T=T))
    g = torch.Generator().manual_seed(0)
    t = steps_cycling(n, T)
    x_prev, x_t = q_sample_pairs(s, repeated_x0(n), t, g)
    for step in range(1, T + 1):
        sel = t == step
        xp, xt = x_prev[sel], x_t[sel]                                             # (n/T, 1, 2, 2)
        ab_prev = s.alpha_bar[step - 1]
        # x_{t−1} ~ q(x_{t−1} | x_0) = N(√ᾱ_{t−1} x_0, 1 − ᾱ_{t−1})
        torch.testing.assert_close(xp.mean(0), math.sqrt(ab_prev) * X0_PIXELS[0], atol=0.03, rtol=0)
        assert xp.var(0).mean().item() == pytest.approx(1 - ab_prev, abs=0.03)
        if step == 1:
            assert torch.equal(xp, repeated_x0(len(xp)))                           # x_0 itself at t = 1
            torch.testing.assert_close(xt.mean(0), math.sqrt(s.alphas[1]) * X0_PIXELS[0], atol=0.03, rtol=0)
            assert xt.var(0).mean().item() == pytest.approx(s.betas[1], abs=0.03)
            continue
        # x_t | x_{t−1} ~ N(√α_t x_{t−1}, β_t): regression slope √α_t, zero intercept, residual variance β_t
        b, a, res_var = slope_and_residual_var(xt, xp)
        assert b == pytest.approx(math.sqrt(s.alphas[step]), abs=0.03)
        assert a.abs().max().item() < 0.03
        assert res_var == pytest.approx(s.betas[step], rel=0.03)


def test_perfect_x0_predictor_reverse_chain_reproduces_the_forward_marginals():
    """x_T ~ q(x_T|x_0), then x_{t−1} ~ q(x_{t−1}|x_t, x_0) for t = T..1: each x_t ~ q(x_t|x_0), and
    consecutive pairs have the forward covariance Cov(x_{t−1}, x_t) = √α_t (1 − ᾱ_{t−1})."""
    T, n = 4, 40_000
    s = ddgan_schedule(DDGANConfig(T=T))
    g = torch.Generator().manual_seed(1)
    x_0 = repeated_x0(n)
    x = s.q_sample(x_0, torch.full((n,), T), torch.randn(x_0.shape, generator=g, dtype=torch.float64))
    for step in range(T, 0, -1):
        t = torch.full((n,), step)
        x_prev = posterior_sample(s, x_0, x, t, g)
        ab_prev = s.alpha_bar[step - 1]
        torch.testing.assert_close(x_prev.mean(0), math.sqrt(ab_prev) * X0_PIXELS[0], atol=0.03, rtol=0)
        assert x_prev.var(0).mean().item() == pytest.approx(1 - ab_prev, abs=0.03)
        cov = ((x_prev - x_prev.mean(0)) * (x - x.mean(0))).mean(0).mean().item()
        assert cov == pytest.approx(math.sqrt(s.alphas[step]) * (1 - ab_prev), abs=0.03)
        x = x_prev
    assert torch.equal(x, x_0)                                                    # the t = 1 step is noiseless and = x̂₀


def test_posterior_coefficients_are_those_of_the_schedule_posterior():
    s = ddgan_schedule(DDGANConfig(T=4))
    c0, ct = posterior_coefficients(s)
    x0, xt = torch.tensor([0.3]), torch.tensor([-1.2])
    for step in range(1, 5):
        mean, var = s.q_posterior(x0, xt, step)                                    # Ho et al. eq. 7, scalar t
        assert (c0[step] * x0 + ct[step] * xt).item() == pytest.approx(mean.item(), rel=1e-6)
        assert s.posterior_var[step] == pytest.approx(var)
    assert c0[1] == pytest.approx(1.0) and ct[1] == 0.0 and s.posterior_var[1] == 0.0


# ------------------------------------------------------------------------------------------ the D and G terms
class ConstantG(nn.Module):
    """x̂₀ = c for every input, c a learnable scalar; records its inputs."""

    def __init__(self, c: float):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))
        self.calls = []

    def forward(self, x_t, z, t):
        self.calls.append((x_t, z, t))
        return self.c * torch.ones_like(x_t)


class LinearD(nn.Module):
    """l = w · Σ_pixels x_{t−1} + u · Σ_pixels x_t + b: ∇_{x_{t−1}} l = w everywhere; records its inputs."""

    def __init__(self, w=0.7, u=-0.2, b=0.1):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.u, self.b = u, b
        self.calls = []

    def forward(self, x_prev, x_t, t):
        self.calls.append((x_prev.detach(), x_t.detach(), t))
        return self.w * x_prev.flatten(1).sum(1) + self.u * x_t.flatten(1).sum(1) + self.b


def test_discriminator_terms_fake_pairs_use_the_posterior_with_Gs_x0_and_the_loss_is_its_formula():
    T, n, c, gamma = 4, 40_000, 0.5, 0.3
    s = ddgan_schedule(DDGANConfig(T=T))
    G, D = ConstantG(c), LinearD()
    terms = discriminator_terms(G, D, s, repeated_x0(n), z_dim=3, r1_gamma=gamma,
                                generator=torch.Generator().manual_seed(2))
    assert set(terms) == {"loss", "d_loss", "r1", "d_real", "d_fake", "t"}
    assert all(v.shape == (n,) for v in terms.values())
    (xp_real, xt_real, t_real), (xp_fake, xt_fake, t_fake) = D.calls
    assert torch.equal(xt_real, xt_fake) and torch.equal(t_real, t_fake)        # the same x_t and t in both pairs
    (g_xt, g_z, g_t), = G.calls
    assert torch.equal(g_xt, xt_real) and torch.equal(g_t, t_real) and g_z.shape == (n, 3)
    assert torch.bincount(t_real, minlength=T + 1)[1:].min() > n / T * 0.9        # t ~ Uniform{1..T}
    c0, ct = posterior_coefficients(s)
    for step in range(1, T + 1):
        sel = t_real == step
        if step == 1:
            assert torch.allclose(xp_fake[sel], torch.full_like(xp_fake[sel], c))  # x̂₀ itself, no noise
            continue
        # x′_{t−1} | x_t ~ N(c₀[t]·c + c_t[t]·x_t, β̃_t): slope c_t, intercept c₀·c, residual variance β̃_t
        b, a, res_var = slope_and_residual_var(xp_fake[sel], xt_real[sel])
        assert b == pytest.approx(ct[step], abs=0.02)
        torch.testing.assert_close(a, torch.full_like(a, c0[step] * c), atol=0.03, rtol=0)
        assert res_var == pytest.approx(s.posterior_var[step], rel=0.03)
    # loss = softplus(−l_r) + softplus(l_f) + γ/2 ‖w·1‖², from the recorded pairs
    l_real = D.w * xp_real.flatten(1).sum(1) + D.u * xt_real.flatten(1).sum(1) + D.b
    l_fake = D.w * xp_fake.flatten(1).sum(1) + D.u * xt_fake.flatten(1).sum(1) + D.b
    r1 = gamma / 2 * D.w.item() ** 2 * 4                                           # 4 pixels, each ∂l/∂x = w
    torch.testing.assert_close(terms["r1"], torch.full((n,), r1, dtype=torch.float64))
    torch.testing.assert_close(terms["loss"], F.softplus(-l_real) + F.softplus(l_fake) + r1)
    torch.testing.assert_close(terms["d_real"], torch.sigmoid(l_real).detach())
    # the R1 term is differentiable in D's parameters: d/dw of mean(γ/2 · 4w²) = 4γw
    (grad_w,) = torch.autograd.grad(terms["r1"].mean(), D.w)
    assert grad_w.item() == pytest.approx(4 * gamma * D.w.item())
    assert G.c.grad is None                                                        # the D step does not train G


def test_discriminator_terms_with_zero_gamma_skips_r1():
    s = ddgan_schedule(DDGANConfig(T=2))
    terms = discriminator_terms(ConstantG(0.0), LinearD(), s, repeated_x0(8), 3, r1_gamma=0.0)
    assert torch.equal(terms["r1"], torch.zeros(8, dtype=torch.float64))
    assert torch.equal(terms["loss"], terms["d_loss"])


def test_hide_x_t_zeroes_whole_samples_with_probability_p_and_draws_nothing_at_zero():
    x_t = torch.randn(20_000, 1, 2, 2, dtype=torch.float64) + 3.0                  # no sample is zero by chance
    g = torch.Generator().manual_seed(0)
    assert hide_x_t(x_t, 0.0, g) is x_t and torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    seen = hide_x_t(x_t, 0.3, g)
    hidden = (seen == 0).flatten(1).all(1)                                           # (n,)
    assert torch.equal(seen[~hidden], x_t[~hidden]) and (seen != 0).flatten(1).all(1).eq(~hidden).all()
    assert hidden.double().mean().item() == pytest.approx(0.3, abs=0.015)


@pytest.mark.parametrize("loss", ["ns", "rp"])
def test_d_uncond_hides_the_same_x_t_from_the_real_and_fake_pair_and_G_still_sees_it(loss):
    T, n, p = 4, 4000, 0.4
    s = ddgan_schedule(DDGANConfig(T=T))
    G, D = ConstantG(0.5), LinearD()
    terms = discriminator_terms(G, D, s, repeated_x0(n), 3, 0.1, torch.Generator().manual_seed(2), loss=loss,
                                d_uncond=p)
    (xp_real, xt_real, _), (xp_fake, xt_fake, _) = D.calls
    (g_xt, _, _), = G.calls
    hidden = (xt_real == 0).flatten(1).all(1)
    assert torch.equal(xt_real, xt_fake) and torch.equal(xt_real[~hidden], g_xt[~hidden])
    assert not (g_xt == 0).flatten(1).all(1).any() and hidden.double().mean().item() == pytest.approx(p, abs=0.03)
    l_real = D.w * xp_real.flatten(1).sum(1) + D.u * xt_real.flatten(1).sum(1) + D.b    # the loss is on D's view
    l_fake = D.w * xp_fake.flatten(1).sum(1) + D.u * xt_fake.flatten(1).sum(1) + D.b
    expected = F.softplus(l_fake - l_real) if loss == "rp" else F.softplus(-l_real) + F.softplus(l_fake)
    torch.testing.assert_close(terms["d_loss"], expected)
    G.calls.clear(), D.calls.clear()
    terms = generator_terms(G, D, s, repeated_x0(n), 3, torch.Generator().manual_seed(3), loss=loss, d_uncond=p)
    *real, (xp_fake, xt_fake, _) = D.calls
    (g_xt, _, _), = G.calls
    hidden = (xt_fake == 0).flatten(1).all(1)
    assert torch.equal(xt_fake[~hidden], g_xt[~hidden]) and not (g_xt == 0).flatten(1).all(1).any()
    assert hidden.double().mean().item() == pytest.approx(p, abs=0.03)
    if loss == "rp":                                                               # the real pair of the same x_t, hidden alike
        assert torch.equal(real[0][1], xt_fake)
    # p = 0 is the paper's game, draw for draw
    a = generator_terms(ConstantG(0.5), LinearD(), s, repeated_x0(64), 3, torch.Generator().manual_seed(4), loss=loss)
    b = generator_terms(ConstantG(0.5), LinearD(), s, repeated_x0(64), 3, torch.Generator().manual_seed(4), loss=loss,
                        d_uncond=0.0)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generator_terms_loss_and_its_gradient_equal_the_formula():
    T, n = 4, 64
    s = ddgan_schedule(DDGANConfig(T=T))
    G, D = ConstantG(0.2), LinearD()
    terms = generator_terms(G, D, s, repeated_x0(n), 3, generator=torch.Generator().manual_seed(3))
    (xp_fake, xt, t), = D.calls
    l_fake = D.w * xp_fake.flatten(1).sum(1) + D.u * xt.flatten(1).sum(1) + D.b
    torch.testing.assert_close(terms["loss"].detach(), F.softplus(-l_fake).detach())
    # d/dc mean softplus(−l) = mean[−σ(−l) · w · 4 · c₀[t]]   (x′ = c₀[t]·c + …, 4 pixels)
    (grad_c,) = torch.autograd.grad(terms["loss"].mean(), G.c)
    c0 = torch.as_tensor(posterior_coefficients(s)[0])[t]
    expected = (-torch.sigmoid(-l_fake.detach()) * D.w.detach() * 4 * c0).mean()
    assert grad_c.item() == pytest.approx(expected.item(), rel=1e-9)


def test_generator_terms_reconstruction_term_is_lambda_times_the_l1_of_x0_hat_against_x0():
    """λ·mean|x̂₀ − x₀| is added per sample on the same draws; with λ = 0 the cost is the paper's alone."""
    s, x_0 = ddgan_schedule(DDGANConfig(T=4)), repeated_x0(32)
    G, D = ConstantG(0.2), LinearD()
    plain = generator_terms(G, D, s, x_0, 3, generator=torch.Generator().manual_seed(5))
    weighted = generator_terms(G, D, s, x_0, 3, generator=torch.Generator().manual_seed(5), rec_weight=0.5)
    expected_rec = (0.2 - X0_PIXELS).abs().mean().item()                         # x̂₀ = 0.2 everywhere
    torch.testing.assert_close(weighted["rec"], torch.full((32,), expected_rec, dtype=torch.float64))
    torch.testing.assert_close(plain["rec"], weighted["rec"])
    torch.testing.assert_close(weighted["loss"], plain["loss"] + 0.5 * expected_rec)
    (grad_c,) = torch.autograd.grad((weighted["loss"] - plain["loss"]).mean(), G.c)
    assert grad_c.item() == pytest.approx(0.5 * torch.sign(0.2 - X0_PIXELS).mean().item(), abs=1e-12)   # ∂|c − x₀|/∂c


class ZSlopeG(ConstantG):
    """x̂₀ = c + a·z₁ (the first coordinate of z) at every pixel: x̂₀ moves with z by |a|·|Δz₁|."""

    def __init__(self, c: float, a: float):
        super().__init__(c)
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, x_t, z, t):
        self.calls.append((x_t, z, t))
        return self.c + self.a * z[:, :1, None, None].to(x_t.dtype) * torch.ones_like(x_t)


@pytest.mark.parametrize("cap", [10.0, 0.3])
def test_diversity_term_is_the_capped_ratio_of_a_second_z_at_the_same_x_t(cap):
    """−μ·min(ℓ, τ) with ℓ = mean|x̂₀(z₁) − x̂₀(z₂)| / mean|z₁ − z₂| is subtracted per sample on the same
    draws; the second z is drawn last, so everything else (t, pairs, z₁, the posterior noise) is unchanged."""
    s, x_0, n, mu = ddgan_schedule(DDGANConfig(T=4)), repeated_x0(64), 64, 0.7
    g, D = ZSlopeG(0.2, 0.5), LinearD()
    plain = generator_terms(g, D, s, x_0, 3, generator=torch.Generator().manual_seed(5))
    terms = generator_terms(g, D, s, x_0, 3, generator=torch.Generator().manual_seed(5), div_weight=mu, div_cap=cap)
    assert torch.equal(plain["div"], torch.zeros(n)) and len(g.calls) == 3     # off: one G call, nothing else
    (_, z_plain, _), (xt_1, z_1, t_1), (xt_2, z_2, t_2) = g.calls                # on: two calls at the same x_t, t
    assert torch.equal(xt_1, xt_2) and torch.equal(t_1, t_2) and not torch.equal(z_1, z_2)
    assert torch.equal(z_1, z_plain) and torch.equal(terms["t"], plain["t"])
    ratio = 0.5 * (z_1[:, 0] - z_2[:, 0]).abs() / (z_1 - z_2).abs().mean(dim=1)
    torch.testing.assert_close(terms["div"], ratio.double())
    torch.testing.assert_close(terms["loss"], plain["loss"] - mu * ratio.double().clamp(max=cap))
    assert (ratio > cap).any() == (cap < 1)                                      # the cap binds for some pairs
    # ∂/∂a of −μ·mean min(ℓ, τ) (the adversarial parts are the same function of a and cancel):
    # −μ·mean(ℓ/a) over the pairs below the cap, 0 above it
    (grad_a,) = torch.autograd.grad((terms["loss"] - plain["loss"]).mean(), g.a)
    expected = (-mu * ratio / 0.5 * (ratio < cap)).mean()
    assert grad_a.item() == pytest.approx(expected.item(), rel=1e-9)


def test_energy_score_by_hand():
    """½(‖a − x₀‖ + ‖b − x₀‖) − ½‖a − b‖ with root-mean-square norms over C·H·W."""
    x_0 = torch.zeros(2, 1, 1, 2, dtype=torch.float64)
    a = torch.tensor([[3.0, 4.0], [1.0, 1.0]], dtype=torch.float64).reshape(2, 1, 1, 2)
    b = torch.tensor([[0.0, 0.0], [-1.0, -1.0]], dtype=torch.float64).reshape(2, 1, 1, 2)
    rms = lambda v: math.sqrt(sum(u * u for u in v) / 2)
    expected = [0.5 * (rms([3, 4]) + 0) - 0.5 * rms([3, 4]),          # b = x₀: the spread term cancels a's error
                0.5 * (rms([1, 1]) + rms([1, 1])) - 0.5 * rms([2, 2])]  # a, b mirrored about x₀: score 0
    torch.testing.assert_close(energy_score(a, b, x_0), torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=0)
    assert energy_score(a, a, x_0)[1] == pytest.approx(rms([1, 1]), abs=1e-5)   # a point mass: the error alone
    a.requires_grad_(True)                                    # 1e-12 under each root: finite where a = b
    (grad,) = torch.autograd.grad(energy_score(a, a, x_0).sum(), a)
    assert torch.isfinite(grad).all()


def test_energy_score_is_lowest_at_the_true_conditional_spread():
    """Strict propriety in a case with a closed form: x₀ ~ N(0, σ²) and draws a, b ~ N(0, s²) (one value each)
    give E[score] = √(2/π)·(√(s² + σ²) − s/√2), whose minimum over s is at s = σ; the Monte Carlo mean
    matches it, and a collapsed (s = σ/2) or over-spread (s = 2σ) sampler scores worse than the true one."""
    g, n, sigma = torch.Generator().manual_seed(0), 400_000, 0.8
    x_0 = sigma * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    closed = lambda s: math.sqrt(2 / math.pi) * (math.sqrt(s * s + sigma * sigma) - s / math.sqrt(2))
    mc = {}
    for s in (0.5 * sigma, sigma, 2 * sigma):
        a, b = (s * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64) for _ in range(2))
        mc[s] = energy_score(a, b, x_0).mean().item()
        assert mc[s] == pytest.approx(closed(s), rel=5e-3)
    assert mc[sigma] < mc[0.5 * sigma] and mc[sigma] < mc[2 * sigma]
    s_grid = np.linspace(0.05, 3, 2000)
    assert s_grid[np.argmin([closed(s) for s in s_grid])] == pytest.approx(sigma, abs=2e-3)


@pytest.mark.parametrize("with_div", [False, True])
def test_energy_score_term_scores_two_z_at_the_same_x_t_against_the_x0_that_made_it(with_div):
    """+ν·score(x̂₀(z₁), x̂₀(z₂); x₀) is added per sample on the same draws; the second z is drawn last and
    shared with the diversity term when both are on (one extra G call in all)."""
    s, x_0, n, nu = ddgan_schedule(DDGANConfig(T=4)), repeated_x0(64), 64, 0.6
    g, D = ZSlopeG(0.2, 0.5), LinearD()
    plain = generator_terms(g, D, s, x_0, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(plain["es"], torch.zeros(n))                              # off: not computed
    mu = 0.7 if with_div else 0.0
    terms = generator_terms(g, D, s, x_0, 3, generator=torch.Generator().manual_seed(5), es_weight=nu,
                            div_weight=mu)
    assert len(g.calls) == 3                                                     # plain: 1, here: 2
    (_, z_plain, _), (xt_1, z_1, t_1), (xt_2, z_2, t_2) = g.calls
    assert torch.equal(xt_1, xt_2) and torch.equal(t_1, t_2) and torch.equal(z_1, z_plain)
    a = 0.2 + 0.5 * z_1[:, :1, None, None].double().expand(n, 1, 2, 2)           # x̂₀(z₁), x̂₀(z₂)
    b = 0.2 + 0.5 * z_2[:, :1, None, None].double().expand(n, 1, 2, 2)
    rms = lambda v: v.flatten(1).square().mean(dim=1).sqrt()
    score = 0.5 * (rms(a - x_0) + rms(b - x_0)) - 0.5 * rms(a - b)
    torch.testing.assert_close(terms["es"], score)
    torch.testing.assert_close(terms["loss"], plain["loss"] + nu * score - mu * terms["div"].clamp(max=0.5))
    assert torch.equal(terms["div"] > 0, torch.full((n,), with_div))


def test_relativistic_pairing_costs_compare_the_real_and_fake_pair_of_the_same_x_t():
    """--loss rp: D's cost softplus(l_f − l_r) + R1 and G's softplus(l_r − l_f), on pairs sharing x_t and t;
    G's gradient equals the formula's."""
    T, n, gamma = 4, 64, 0.3
    s = ddgan_schedule(DDGANConfig(T=T))
    G, D = ConstantG(0.2), LinearD()
    terms = discriminator_terms(G, D, s, repeated_x0(n), 3, gamma, torch.Generator().manual_seed(2), loss="rp")
    (xp_real, xt_real, t_real), (xp_fake, xt_fake, t_fake) = D.calls
    assert torch.equal(xt_real, xt_fake) and torch.equal(t_real, t_fake)
    logit = lambda xp, xt: D.w * xp.flatten(1).sum(1) + D.u * xt.flatten(1).sum(1) + D.b
    l_real, l_fake = logit(xp_real, xt_real), logit(xp_fake, xt_fake)
    r1 = gamma / 2 * D.w.item() ** 2 * 4
    torch.testing.assert_close(terms["loss"], -torch.log(torch.sigmoid(l_real - l_fake)) + r1)
    torch.testing.assert_close(terms["d_loss"], F.softplus(l_fake - l_real))

    G, D = ConstantG(0.2), LinearD()
    g_terms = generator_terms(G, D, s, repeated_x0(n), 3, torch.Generator().manual_seed(3), loss="rp")
    (xp_fake, xt, t), (xp_real, xt_real, t_real) = D.calls                      # the fake pair, then the real one
    assert torch.equal(xt, xt_real) and torch.equal(t, t_real)
    l_real, l_fake = logit(xp_real, xt), logit(xp_fake, xt)
    torch.testing.assert_close(g_terms["loss"].detach(), F.softplus(l_real - l_fake).detach())
    (grad_c,) = torch.autograd.grad(g_terms["loss"].mean(), G.c)
    c0 = torch.as_tensor(posterior_coefficients(s)[0])[t]
    expected = (-torch.sigmoid(l_real - l_fake).detach() * D.w.detach() * 4 * c0).mean()
    assert grad_c.item() == pytest.approx(expected.item(), rel=1e-9)
    # the same draws as the paper's cost: only the adversarial term differs
    G, D = ConstantG(0.2), LinearD()
    ns = generator_terms(G, D, s, repeated_x0(n), 3, torch.Generator().manual_seed(3))
    assert torch.equal(ns["t"], g_terms["t"]) and torch.equal(D.calls[0][0], xp_fake)


def test_reconstruction_weight_fades_as_a_sigmoid_of_the_budget_spent_or_stays_constant():
    c = DDGANConfig(rec_weight=2.0)
    assert c.rec_weight_at(0.5) == pytest.approx(1.0)
    assert c.rec_weight_at(0.0) == pytest.approx(2.0 * (1 - 1 / (1 + math.exp(6))))      # ≈ 1.995
    assert c.rec_weight_at(1.0) == pytest.approx(2.0 / (1 + math.exp(6)))                # ≈ 0.005
    weights = [c.rec_weight_at(p / 10) for p in range(11)]
    assert all(a > b for a, b in zip(weights, weights[1:]))
    assert [DDGANConfig(rec_weight=0.3, rec_fade="constant").rec_weight_at(p) for p in (0, 0.7, 1)] == [0.3] * 3
    assert DDGANConfig().rec_weight_at(0.2) == 0.0                                # the paper: no reconstruction


# ------------------------------------------------------------------------------------------ R1 and the costs
ARCHS = ("unet", "dcgan")


@pytest.fixture(scope="module", params=ARCHS)
def tiny_d(request):
    torch.manual_seed(0)
    return perturb(make_discriminator(preset("tiny", 8, 1, arch=request.param))).double()


def test_r1_equals_its_definition_by_per_sample_autograd_and_finite_differences(tiny_d):
    D, gamma = tiny_d, 0.7
    g = torch.Generator().manual_seed(4)
    x_prev = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    x_t = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 4])
    r1 = r1_penalty(D, x_prev, x_t, t, gamma)
    assert r1.shape == (3,)
    for i in range(3):                                                            # one sample at a time
        xi = x_prev[i:i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(D(xi, x_t[i:i + 1], t[i:i + 1]).sum(), xi)
        assert r1[i].item() == pytest.approx(gamma / 2 * gi.square().sum().item(), rel=1e-10)
    # central differences on every pixel of x_{t−1}: ∂D/∂x_j ≈ (D(x + h e_j) − D(x − h e_j)) / 2h
    h, P = 1e-5, 64
    eye = torch.eye(P, dtype=torch.float64).reshape(P, 1, 8, 8)
    with torch.no_grad():
        for i in range(3):
            plus = D(x_prev[i] + h * eye, x_t[i].expand(P, 1, 8, 8), t[i].expand(P))
            minus = D(x_prev[i] - h * eye, x_t[i].expand(P, 1, 8, 8), t[i].expand(P))
            grad_fd = (plus - minus) / (2 * h)                                     # (64,)
            assert r1[i].item() == pytest.approx(gamma / 2 * grad_fd.square().sum().item(), rel=1e-6)


def test_r1_is_differentiable_in_Ds_parameters():
    a = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
    quad_d = lambda x_prev, x_t, t: a * x_prev.flatten(1).square().sum(1)          # ∇ = 2a x, R1 = γ/2 · 4a²‖x‖²
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    gamma = 0.5
    r1 = r1_penalty(quad_d, x, x, torch.ones(5, dtype=torch.long), gamma)
    sq = x.flatten(1).square().sum(1)
    torch.testing.assert_close(r1.detach(), gamma / 2 * 4 * 0.09 * sq)
    (grad_a,) = torch.autograd.grad(r1.sum(), a)                                   # d/da γ/2·4a²‖x‖² = 4γa‖x‖²
    assert grad_a.item() == pytest.approx((4 * gamma * 0.3 * sq).sum().item())


def test_costs_equal_their_formulas_from_probabilities():
    l_real = torch.linspace(-6, 6, 25, dtype=torch.float64)
    l_fake = torch.linspace(5, -7, 25, dtype=torch.float64)
    d_real, d_fake = torch.sigmoid(l_real), torch.sigmoid(l_fake)
    torch.testing.assert_close(d_loss(l_real, l_fake), -torch.log(d_real) - torch.log(1 - d_fake))
    torch.testing.assert_close(d_loss(l_real, l_fake), F.softplus(-l_real) + F.softplus(l_fake))
    torch.testing.assert_close(g_loss(l_fake), -torch.log(d_fake))
    torch.testing.assert_close(g_loss(l_fake), F.softplus(-l_fake))
    assert torch.isfinite(g_loss(torch.tensor([-200.0, 200.0]))).all()


# ------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [8, 28, 32])
def test_network_shapes(size, arch):
    torch.manual_seed(0)
    c = preset("tiny", size, 3, arch=arch)
    G, D = make_generator(c, z_dim=10), make_discriminator(c)
    x, z, t = torch.randn(2, 3, size, size), torch.randn(2, 10), torch.tensor([1, 4])
    x0_hat = G(x, z, t)
    assert x0_hat.shape == (2, 3, size, size) and x0_hat.abs().max() < 1                  # tanh output
    assert D(x, x, t).shape == (2,)


@pytest.mark.parametrize("arch", ARCHS)
def test_small_preset_runs_on_fashion_mnist_size(arch):
    torch.manual_seed(0)
    c = preset("small", 28, 1, arch=arch)
    G, D = make_generator(c, z_dim=100), make_discriminator(c)
    x = torch.randn(2, 1, 28, 28)
    assert G(x, torch.randn(2, 100), torch.tensor([2, 3])).shape == (2, 1, 28, 28)
    assert D(x, x, torch.tensor([2, 3])).shape == (2,)


@pytest.mark.parametrize("arch", ARCHS)
def test_z_and_t_change_the_generator_and_t_changes_the_discriminator(arch):
    torch.manual_seed(0)
    c = preset("tiny", 8, 1, arch=arch)
    G, D = perturb(make_generator(c, z_dim=10)), perturb(make_discriminator(c))
    x, z = torch.randn(4, 1, 8, 8), torch.randn(4, 10)
    t = torch.full((4,), 2)
    with torch.no_grad():
        out = G(x, z, t)
        assert (G(x, torch.randn(4, 10), t) - out).abs().max() > 1e-3                     # z matters
        assert (G(x, z, t + 1) - out).abs().max() > 1e-3                                  # t matters
        assert (D(x, x, t + 1) - D(x, x, t)).abs().min() > 1e-4                           # t matters to D
        assert (D(torch.randn_like(x), x, t) - D(x, x, t)).abs().min() > 1e-4             # so does x_{t−1}


def test_spatial_noise_maps_are_the_tail_of_z_and_change_x0_hat_place_by_place():
    torch.manual_seed(0)
    c = preset("tiny", 8, 1, z_maps=2)
    G = perturb(make_generator(c, z_dim=10))
    assert G.z_numel == 10 + 2 * 8 * 8 and make_generator(preset("tiny", 8, 1), z_dim=10).z_numel == 10
    assert G.conv_in.in_channels == 1 + 2                                             # x_t and the maps
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 1)
    z = torch.randn(4, G.z_numel)
    with torch.no_grad():
        out = G(x, z, t)
        assert out.shape == x.shape
        local = z.clone()
        local[:, 10:].view(4, 2, 8, 8)[:, :, 0, 0] += 3.0                             # one corner of the maps
        moved = (G(x, local, t) - out).abs()                                          # (4, 1, 8, 8)
        assert moved[..., 0, 0].min() > 1e-4                                          # the maps matter there …
        glob = z.clone()
        glob[:, :10] = torch.randn(4, 10)
        assert (G(x, glob, t) - out).abs().max() > 1e-3                               # … and so does the global z
        # the maps are read as (k, H, W) per sample: the same values give the same x̂₀ from a one-sample batch
        torch.testing.assert_close(G(x[1:2], z[1:2], t[1:2]), out[1:2], rtol=1e-5, atol=1e-6)


def test_the_map_of_w_is_one_added_term_at_the_lowest_resolution():
    torch.manual_seed(0)
    c = preset("tiny", 7, 4, z_spatial=True)
    G = perturb(make_generator(c, z_dim=10))
    width = c.base_channels * c.channel_mults[-1]
    assert c.resolutions[-1] == 4 and G.z_spatial.out_features == width * 4 * 4     # 7 → 4, as for latents
    plain = make_generator(preset("tiny", 7, 4), z_dim=10)
    assert plain.z_spatial is None
    missing, unexpected = plain.load_state_dict(G.state_dict(), strict=False)
    assert not missing and set(unexpected) == {"z_spatial.weight", "z_spatial.bias"}
    x, z, t = torch.randn(4, 4, 7, 7), torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        out = G(x, z, t)
        assert (out - plain(x, z, t)).abs().max() > 1e-3                              # the map matters …
        G.z_spatial.weight.zero_()
        G.z_spatial.bias.zero_()
        torch.testing.assert_close(G(x, z, t), plain(x, z, t))                       # … and is all that differs


def test_spatial_noise_maps_are_for_the_unet_generator_only():
    with pytest.raises(TrilemmaError, match="--z-maps.*--arch unet"):
        DDGANNetConfig(image_size=8, arch="dcgan", z_maps=1)
    with pytest.raises(TrilemmaError, match="--z-spatial.*--arch unet"):
        DDGANNetConfig(image_size=8, arch="dcgan", z_spatial=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_discriminator_logits_depend_on_their_own_pair_only(arch):
    torch.manual_seed(0)
    D = perturb(make_discriminator(preset("tiny", 8, 1, arch=arch))).double()
    x_prev, x_t = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randn(5, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([1, 2, 3, 4, 1])
    batched = D(x_prev, x_t, t)
    single = torch.cat([D(x_prev[i:i + 1], x_t[i:i + 1], t[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single)


@pytest.mark.parametrize("B, group, sizes", [(8, 4, (4, 4)), (6, 4, (3, 3)), (5, 4, (1,) * 5), (3, 8, (3,))])
def test_minibatch_stddev_is_the_mean_std_over_groups_of_consecutive_samples(B, group, sizes):
    h = torch.randn(B, 3, 2, 2, dtype=torch.float64)
    out = minibatch_stddev(h, group)
    assert out.shape == (B, 4, 2, 2)
    torch.testing.assert_close(out[:, :3], h)
    start = 0
    for size in sizes:                                    # the largest divisor of B that is at most `group`
        block = h[start:start + size].numpy()
        expected = np.sqrt(block.var(axis=0) + 1e-8).mean()
        np.testing.assert_allclose(out[start:start + size, 3].numpy(), expected, rtol=1e-6)
        start += size


@pytest.mark.parametrize("arch", ARCHS)
def test_minibatch_stddev_logits_see_their_group_only_and_a_contiguous_slice_gives_the_same_logits(arch):
    torch.manual_seed(0)
    D = perturb(make_discriminator(preset("tiny", 8, 1, arch=arch, mbstd_group=4))).double()
    x_prev, x_t = torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randn(8, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([1, 2, 3, 4, 1, 2, 3, 4])
    logits = D(x_prev, x_t, t)
    changed = x_prev.clone()
    changed[6] = torch.randn(1, 8, 8, dtype=torch.float64)                         # a pair of the second group
    moved = D(changed, x_t, t) - logits
    assert moved[:4].abs().max() == 0                                             # the first group does not see it
    assert moved[4:].abs().min() > 1e-8                                           # its whole group does
    halves = torch.cat([D(x_prev[:4], x_t[:4], t[:4]), D(x_prev[4:], x_t[4:], t[4:])])
    torch.testing.assert_close(halves, logits)                                    # a data-parallel rank's slice
    r1 = r1_penalty(D, x_prev, x_t, t, 0.5)                                       # the paper's: ∇ of the summed logits
    x = x_prev.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x, x_t, t).sum(), x)
    torch.testing.assert_close(r1, 0.25 * grad.flatten(1).square().sum(1))


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_every_parameter_of_G_and_D(arch):
    torch.manual_seed(0)
    c = preset("tiny", 8, 1, arch=arch)
    G, D = perturb(make_generator(c, z_dim=10)), perturb(make_discriminator(c))
    s = ddgan_schedule(DDGANConfig(T=4, z_dim=10))
    x_0 = torch.rand(6, 1, 8, 8) * 2 - 1
    generator_terms(G, D, s, x_0, 10)["loss"].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    D.zero_grad(set_to_none=True)
    discriminator_terms(G, D, s, x_0, 10, r1_gamma=0.02)["loss"].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())


def test_t_weights_set_the_training_draws_of_t_and_uniform_stays_the_papers_draw():
    """--t-weights w: P(t = k) = w_k / Σw in D's, G's and the denoiser start's draws; empty: torch.randint, as before."""
    cfg = DDGANConfig(T=4, t_weights=(3.0, 2.0, 2.0, 1.0))
    assert cfg.t_probs == (3 / 8, 2 / 8, 2 / 8, 1 / 8) and DDGANConfig(T=4).t_probs is None
    t = sample_t(200_000, 4, "cpu", torch.Generator().manual_seed(0), cfg.t_probs)
    assert t.dtype == torch.long and set(t.unique().tolist()) == {1, 2, 3, 4}
    freq = torch.bincount(t, minlength=5)[1:].double() / len(t)
    torch.testing.assert_close(freq, torch.tensor(cfg.t_probs, dtype=torch.float64), atol=4e-3, rtol=0)
    assert set(sample_t(5000, 4, "cpu", torch.Generator().manual_seed(1), (0.5, 0.0, 0.5, 0.0)).tolist()) == {1, 3}
    uniform = sample_t(100, 4, "cpu", torch.Generator().manual_seed(2))
    assert torch.equal(uniform, torch.randint(1, 5, (100,), generator=torch.Generator().manual_seed(2)))
    s, x_0, only_1 = ddgan_schedule(DDGANConfig(T=4)), repeated_x0(32), (1.0, 0.0, 0.0, 0.0)
    G, D = ConstantG(0.2), LinearD()
    assert (discriminator_terms(G, D, s, x_0, 3, 0.0, t_probs=only_1)["t"] == 1).all()
    assert (generator_terms(G, D, s, x_0, 3, t_probs=only_1)["t"] == 1).all()
    assert (regression_terms(G, s, x_0, 3, t_probs=(0.0, 0.0, 0.0, 1.0))["t"] == 4).all()


@pytest.mark.parametrize("weights", [(1.0, 2.0, 3.0), (1.0, -1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 0.0),
                                     (1.0, float("nan"), 1.0, 1.0)])
def test_t_weights_must_be_T_finite_non_negative_weights(weights):
    with pytest.raises(TrilemmaError, match="--t-weights: need 4 finite weights"):
        DDGANConfig(T=4, t_weights=weights)


def test_sampling_calls_G_T_times_from_T_down_to_1_and_returns_the_last_x0_hat():
    s = ddgan_schedule(DDGANConfig(T=4))
    G = ConstantG(0.25)
    seen = []
    x_0 = ddgan_sample(G, torch.randn(3, 1, 2, 2, dtype=torch.float64), s, z_dim=5,
                       callback=lambda t, x_t, x0_hat: seen.append(t))
    assert [call[2].tolist() for call in G.calls] == [[4] * 3, [3] * 3, [2] * 3, [1] * 3]
    assert seen == [4, 3, 2, 1] and all(call[1].shape == (3, 5) for call in G.calls)
    assert torch.equal(x_0, torch.full((3, 1, 2, 2), 0.25, dtype=torch.float64))


def test_sampling_from_a_later_start_runs_only_steps_k_to_1():
    s, G = ddgan_schedule(DDGANConfig(T=4)), ConstantG(0.25)
    x_0 = ddgan_sample(G, torch.randn(3, 1, 2, 2, dtype=torch.float64), s, z_dim=5, start=2)
    assert [call[2].tolist() for call in G.calls] == [[2] * 3, [1] * 3]
    assert torch.equal(x_0, torch.full((3, 1, 2, 2), 0.25, dtype=torch.float64))


def test_sampling_with_a_real_generator_is_reproducible():
    torch.manual_seed(0)
    G = DDGANGenerator(preset("tiny", 8, 1), z_dim=10).eval()
    s = ddgan_schedule(DDGANConfig(T=2))
    x_T = torch.randn(2, 1, 8, 8)
    a = ddgan_sample(G, x_T, s, 10, generator=torch.Generator().manual_seed(7))
    b = ddgan_sample(G, x_T, s, 10, generator=torch.Generator().manual_seed(7))
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b)


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("kwargs, message", [
    (dict(T=0), "--T: must be between 1 and 8"),
    (dict(T=9), "--T: must be between 1 and 8"),
    (dict(schedule="fancy"), "--schedule"),
    (dict(beta_min=20.0, beta_max=0.1), "--beta-min/--beta-max"),
    (dict(t_eps=1.0), "--t-eps"),
    (dict(schedule="linear", base_T=3, T=4), "--base-T"),
    (dict(r1_gamma=-1.0), "--r1-gamma"),
    (dict(lazy_reg=0), "--lazy-reg"),
    (dict(d_steps=0), "--d-steps"),
    (dict(rec_weight=-0.1), "--rec-weight"),
    (dict(rec_fade="linear"), "--rec-fade"),
    (dict(div_weight=-1.0), "--div-weight"),
    (dict(div_cap=0.0), "--div-cap"),
    (dict(es_weight=-0.5), "--es-weight"),
    (dict(z_dim=0), "--z-dim"),
    (dict(lr_d=-1.0), "--lr-d"),
    (dict(beta2=1.0), "--beta2"),
])
def test_ddgan_config_rejects_bad_options_in_one_line(kwargs, message):
    with pytest.raises(TrilemmaError, match=message) as info:
        DDGANConfig(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=2), "--image-size"),
    (dict(channels=0), "channels"),
    (dict(channel_mults=()), "channel_mults"),
    (dict(base_channels=0), "--base-channels"),
    (dict(n_mlp=-1), "n_mlp"),
    (dict(dropout=1.0), "dropout"),
])
def test_net_config_rejects_bad_options(kwargs, message):
    with pytest.raises(TrilemmaError, match=message):
        DDGANNetConfig(**kwargs)


def test_presets_and_config_round_trip():
    with pytest.raises(TrilemmaError, match="--preset"):
        preset("huge", 28, 1)
    for name in ("tiny", "small", "base"):
        c = preset(name, 28, 1)
        assert from_dict(DDGANNetConfig, to_dict(c)) == c
    assert preset("tiny", 8, 1, d_channels=4).d_channels == 4
    m = DDGANConfig(T=2, schedule="cosine", r1_gamma=0.05)
    assert from_dict(DDGANConfig, to_dict(m)) == m
    assert (DDGANConfig().lr_d, DDGANConfig().beta1, DDGANConfig().beta2) == (1.25e-4, 0.5, 0.9)


def test_lazy_regularisation_applies_r1_every_k_steps():
    c = DDGANConfig(r1_gamma=0.02, lazy_reg=3)
    assert [c.r1_gamma_at(i) for i in range(6)] == [0.02, 0.0, 0.0, 0.02, 0.0, 0.0]
