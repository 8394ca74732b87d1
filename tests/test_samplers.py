"""DDPM and DDIM samplers: parity with diffusers, identities between them, reproducibility (docs/methods.md §5–6)."""

import math

import numpy as np
import pytest
import torch

from trilemma.diffusion import Denoiser, ddim_sample, ddim_timesteps, ddpm_sample, make_schedule
from trilemma.diffusion.samplers import ddim_step, ddpm_step
from trilemma.diffusion.schedule import SCHEDULES

diffusers = pytest.importorskip("diffusers")
DIFFUSERS_NAMES = {"linear": "linear", "quadratic": "scaled_linear", "cosine": "squaredcos_cap_v2",
                   "sigmoid": "sigmoid"}


def float64(ref, sched):
    """diffusers keeps its coefficients in float32, whose cancellation (1 − ᾱ near t = 1, 1/√ᾱ near T)
    costs up to 1e-3 relative. The β themselves are compared in test_schedule.py; here diffusers gets
    our float64 β so that the comparison tests the sampler formulas, not float32 rounding."""
    np.testing.assert_allclose(ref.betas.numpy(), sched.betas[1:], rtol=2e-6)
    ref.betas = torch.from_numpy(np.array(sched.betas[1:]))
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, 0)
    ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    return ref


def eps_model(x, t):
    """A dummy ε-model that depends on x and on the (1-based) step t."""
    t = t.float().view(-1, *([1] * (x.dim() - 1)))
    return 0.6 * torch.tanh(x) + 0.3 * torch.cos(t / 37.0) * torch.sin(3 * x) + 0.05 * t / 1000


def test_denoiser_parameterisations_recover_truth():
    """With a perfect network, every parameterisation gives back the true (ε, x₀)."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(4, 1, 5, 5, generator=g) * 1.6 - 0.8, torch.randn(4, 1, 5, 5, generator=g)
    ab = 0.37
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    targets = {"eps": eps, "v": math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0, "x0": x0}
    for prediction, target in targets.items():
        d = Denoiser(lambda x, t, _target=target: _target, prediction, clip=None)
        eps_hat, x0_hat = d(x_t, 10, ab)
        torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=0)
        torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=0)


def test_denoiser_clip_keeps_eps_consistent():
    x_t = torch.full((1, 1, 2, 2), 3.0)
    d = Denoiser(lambda x, t: torch.zeros_like(x), "eps", clip=(-1.0, 1.0))
    ab = 0.5
    eps_hat, x0_hat = d(x_t, 5, ab)
    assert x0_hat.max() == 1.0
    torch.testing.assert_close(math.sqrt(ab) * x0_hat + math.sqrt(1 - ab) * eps_hat, x_t)


def test_classifier_free_guidance_formula():
    def model(x, t, y):                          # "conditional" output depends on the label
        return x * 0 + y.float().view(-1, 1, 1, 1)

    x = torch.zeros(3, 1, 2, 2)
    cond, uncond = {"y": torch.full((3,), 5)}, {"y": torch.full((3,), 1)}
    for w in (0.0, 1.0, 3.0, 7.5):
        d = Denoiser(model, "eps", clip=None, guidance=w, uncond=uncond)
        expected = 1 + w * (5 - 1)               # ε(∅) + w (ε(y) − ε(∅))
        torch.testing.assert_close(d.raw(x, torch.ones(3, dtype=torch.long), cond), torch.full_like(x, expected))
    d1 = Denoiser(model, "eps", clip=None, guidance=1.0, uncond=uncond)
    torch.testing.assert_close(d1.raw(x, torch.ones(3, dtype=torch.long), cond), model(x, None, cond["y"]))


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("variance,vtype", [("beta_tilde", "fixed_small"), ("beta", "fixed_large")])
def test_one_ddpm_step_matches_diffusers(name, variance, vtype):
    sched = make_schedule(name)
    ref = float64(diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name],
                                          variance_type=vtype, clip_sample=False), sched)
    d = Denoiser(eps_model, "eps", clip=None)
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (1000, 731, 250, 2, 1):
        ours, _ = ddpm_step(d, x, t, sched, variance=variance, generator=torch.Generator().manual_seed(t))
        k = t - 1                                                    # diffusers' 0-based timestep
        theirs = ref.step(eps_model(x, torch.full((2,), t)), k, x,
                          generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_whole_ddim_loop_matches_diffusers(name, spacing, eta):
    S = 20
    sched = make_schedule(name)
    # diffusers' DDIMScheduler has no "sigmoid"; it takes the DDPMScheduler's sigmoid β instead.
    betas = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name]).betas.numpy()
    ref = float64(diffusers.DDIMScheduler(num_train_timesteps=1000, trained_betas=betas, clip_sample=False,
                                          set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing), sched)
    ref.set_timesteps(S)
    taus = ddim_timesteps(1000, S, spacing)
    np.testing.assert_array_equal(taus[::-1] - 1, ref.timesteps.numpy())

    x_T = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = ddim_sample(Denoiser(eps_model, "eps", clip=None), x_T, sched, taus, eta=eta,
                       generator=torch.Generator().manual_seed(7))
    # The same noise, in the order our sampler draws it (every step but the last, when η > 0).
    g = torch.Generator().manual_seed(7)
    x = x_T
    for i, k in enumerate(ref.timesteps):
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype) if eta > 0 and i < S - 1 else torch.zeros_like(x)
        x = ref.step(eps_model(x, torch.full((2,), int(k) + 1)), int(k), x, eta=eta, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-10, rtol=1e-9)


def test_ddim_with_all_steps_and_eta_one_equals_ddpm_beta_tilde():
    sched = make_schedule("linear", T=100)
    d = Denoiser(eps_model, "eps", clip=None)
    x_T = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    a = ddim_sample(d, x_T, sched, np.arange(1, 101), eta=1.0, generator=torch.Generator().manual_seed(3))
    b = ddpm_sample(d, x_T, sched, variance="beta_tilde", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    c = ddpm_sample(d, x_T, sched, variance="beta", generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(b, c, atol=1e-3)           # the two variances really differ


def test_single_ddim_step_formula():
    """x_{τ−1} = √ᾱ' x̂₀ + √(1−ᾱ'−σ²) ε̂ + σz written out by hand, with η = 0.5."""
    sched = make_schedule("cosine")
    d = Denoiser(eps_model, "eps", clip=None)
    x = torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    t, tp, eta = 600, 400, 0.5
    out, x0_hat = ddim_step(d, x, t, tp, sched, eta=eta, generator=torch.Generator().manual_seed(9))
    ab, abp = sched.alpha_bar[t], sched.alpha_bar[tp]
    eps = eps_model(x, torch.tensor([t]))
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    sigma = eta * math.sqrt((1 - abp) / (1 - ab) * (1 - ab / abp))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    expected = math.sqrt(abp) * x0 + math.sqrt(1 - abp - sigma**2) * eps + sigma * z
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)


def test_last_ddim_step_returns_x0_hat_and_trajectory():
    sched = make_schedule("linear")
    d = Denoiser(eps_model, "eps", clip=None)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out, traj = ddim_sample(d, x_T, sched, ddim_timesteps(1000, 10, "trailing"), return_trajectory=True)
    assert traj["t"] == sorted(ddim_timesteps(1000, 10, "trailing").tolist(), reverse=True)
    assert len(traj["x_t"]) == 11 and len(traj["x0_hat"]) == 10
    torch.testing.assert_close(out, traj["x0_hat"][-1])
    torch.testing.assert_close(traj["x_t"][0], x_T)


def test_same_seed_same_images_and_no_hidden_state():
    sched = make_schedule("linear", T=50)
    d = Denoiser(eps_model, "eps")

    def draw(seed, sampler):
        g = torch.Generator().manual_seed(seed)
        x_T = torch.randn(2, 1, 4, 4, generator=g)
        if sampler == "ddpm":
            return ddpm_sample(d, x_T, sched, generator=g)
        return ddim_sample(d, x_T, sched, ddim_timesteps(50, 10), eta=0.5, generator=g)

    for sampler in ("ddpm", "ddim"):
        a = draw(0, sampler)
        draw(5, sampler)                             # an unrelated call in between changes nothing
        torch.testing.assert_close(a, draw(0, sampler), rtol=0, atol=0)
        assert not torch.allclose(a, draw(1, sampler))


def test_respaced_ddpm_walks_fewer_steps():
    sched = make_schedule("linear")
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    taus = ddim_timesteps(1000, 25, "trailing")
    ddpm_sample(Denoiser(model, "eps"), torch.zeros(1, 1, 2, 2), sched.respace(taus),
                generator=torch.Generator().manual_seed(0))
    assert calls == sorted(taus.tolist(), reverse=True)    # the network sees the original steps


def test_timestep_spacings():
    np.testing.assert_array_equal(ddim_timesteps(1000, 4, "leading"), [1, 251, 501, 751])
    np.testing.assert_array_equal(ddim_timesteps(1000, 4, "trailing"), [250, 500, 750, 1000])
    np.testing.assert_array_equal(ddim_timesteps(1000, 4, "linspace"), [1, 334, 667, 1000])
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    ref.set_timesteps(50)
    np.testing.assert_array_equal(ddim_timesteps(1000, 50, "linspace")[::-1] - 1, ref.timesteps.numpy())
