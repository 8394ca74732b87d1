"""EDM preconditioning and log-normal noise levels (Karras et al. 2022, docs/methods.md §12.2).

Checked against the paper's formulas written in its own variables (x̃ = x₀ + σ n), against diffusers'
``EDMEulerScheduler`` preconditioning, against the samplers' step interpolation, and end to end.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from trilemma.ddpm.config import DiffusionConfig
from trilemma.ddpm.train import train_ddpm
from trilemma.diffusion import make_schedule
from trilemma.diffusion.denoiser import Denoiser
from trilemma.diffusion.edm import edm_coefficients, edm_target, lognormal_t, step_of_log_sigma
from trilemma.diffusion.losses import diffusion_loss
from trilemma.diffusion.samplers import (alpha_bar_at, dpmpp_2m_sample, heun_sample, solver_timesteps, time_at_sigma,
                                        unipc_sample)
from trilemma.errors import TrilemmaError

SCHED = make_schedule("linear", T=1000)
SOLVERS = {"dpmpp-2m": dpmpp_2m_sample, "unipc": unipc_sample, "heun": heun_sample}
SIGMAS = torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0, 80.0], dtype=torch.float64)


def paper(sigma: torch.Tensor, sigma_data: float):
    """Karras et al. 2022, Table 1: (c_skip, c_out, c_in, λ) at noise level σ."""
    sd2 = sigma_data**2
    return (sd2 / (sigma**2 + sd2), sigma * sigma_data / (sigma**2 + sd2).sqrt(), 1 / (sigma**2 + sd2).sqrt(),
            (sigma**2 + sd2) / (sigma * sigma_data) ** 2)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0, 1.7])
def test_denoiser_is_the_paper_wrapper_in_x_t(sigma_data):
    """For x_t = √ᾱ x̃ the network sees c_in x̃ and x̂₀ = c_skip x̃ + c_out F, as in the paper's variables."""
    g = torch.Generator().manual_seed(0)
    seen = {}

    def net(x, t):                                        # an arbitrary F that remembers its input
        seen["x"] = x
        return torch.tanh(3 * x) + 0.1 * t.double().view(-1, 1, 1, 1) / 1000

    for sigma in SIGMAS:
        ab = float(1 / (1 + sigma**2))
        x_tilde = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64) * 2
        _, x0_hat = Denoiser(net, "edm", clip=None, sigma_data=sigma_data)(math.sqrt(ab) * x_tilde, 7, ab)
        c_skip, c_out, c_in, _ = paper(sigma, sigma_data)
        torch.testing.assert_close(seen["x"], c_in * x_tilde, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(x0_hat, c_skip * x_tilde + c_out * net(c_in * x_tilde, torch.tensor([7] * 3)),
                                   rtol=1e-9, atol=1e-10)


def test_preconditioning_matches_diffusers_edm_scheduler():
    diffusers = pytest.importorskip("diffusers")
    for sigma_data in (0.5, 1.0):
        sched = diffusers.EDMEulerScheduler(sigma_data=sigma_data, prediction_type="epsilon")
        for sigma in SIGMAS:
            x_tilde = torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            F = torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
            ab = 1 / (1 + sigma**2)
            c_in, c_skip, c_out = edm_coefficients(ab, sigma_data)
            x_t = ab.sqrt() * x_tilde
            torch.testing.assert_close(c_in * x_t, sched.precondition_inputs(x_tilde, sigma), rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(c_skip * x_t + c_out * F, sched.precondition_outputs(x_tilde, F, sigma),
                                       rtol=1e-9, atol=1e-12)


def test_edm_on_unit_variance_data_is_v_prediction():
    """σ_d = 1: the target is −v and an edm network F = −v samples exactly as the v network."""
    g = torch.Generator().manual_seed(0)
    x_0, eps = torch.randn(2, 4, 1, 3, 3, generator=g, dtype=torch.float64)
    ab = torch.tensor([0.999, 0.7, 0.2, 1e-4], dtype=torch.float64).view(4, 1, 1, 1)
    x_t = ab.sqrt() * x_0 + (1 - ab).sqrt() * eps
    torch.testing.assert_close(edm_target(x_0, x_t, ab, 1.0), -(ab.sqrt() * eps - (1 - ab).sqrt() * x_0))

    def v_net(x, t):
        return torch.sin(x) * (1 + t.double().view(-1, 1, 1, 1) / 1000)

    x_T = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    taus = solver_timesteps(SCHED, 6, "karras")
    a = SOLVERS["dpmpp-2m"](Denoiser(v_net, "v", clip=None), x_T, SCHED, taus)
    b = SOLVERS["dpmpp-2m"](Denoiser(lambda x, t: -v_net(x, t), "edm", clip=None, sigma_data=1.0), x_T, SCHED, taus)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


MU, S = 0.3, 0.6                                         # Gaussian data N(μ, s²) per pixel


def exact_x0(x_t, ab):
    """E[x₀ | x_t] for x₀ ~ N(μ, s²): μ + √ᾱ s² (x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ)."""
    return MU + math.sqrt(ab) * S**2 * (x_t - math.sqrt(ab) * MU) / (ab * S**2 + 1 - ab)


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "unipc", "heun"])
def test_exact_edm_network_samples_like_the_exact_eps_network(sampler):
    """The exact F = (E[x₀|x_t] − c_skip x_t)/c_out, fed c_in x_t, gives the exact ε-network's samples."""
    sigma_data = 0.5

    def exact_f(x_in, t):
        ab = alpha_bar_at(SCHED, float(t[0]))
        c_in, c_skip, c_out = (float(c) for c in edm_coefficients(ab, sigma_data))
        x_t = x_in / c_in
        return (exact_x0(x_t, ab) - c_skip * x_t) / c_out

    def exact_eps(x_t, t):
        ab = alpha_bar_at(SCHED, float(t[0]))
        return (x_t - math.sqrt(ab) * exact_x0(x_t, ab)) / math.sqrt(1 - ab)

    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    taus = solver_timesteps(SCHED, 10, "logsnr")
    a = SOLVERS[sampler](Denoiser(exact_eps, "eps", clip=None), x_T, SCHED, taus)
    b = SOLVERS[sampler](Denoiser(exact_f, "edm", clip=None, sigma_data=sigma_data), x_T, SCHED, taus)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("noise_levels", ["uniform", "lognormal"])
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_edm_loss_is_lambda_weighted_error_of_the_denoised_image(noise_levels, sigma_data):
    """‖F − target‖² = λ(σ) ‖D(x̃; σ) − x₀‖² per sample, D from the paper's wrapper, σ from the drawn step."""
    x_0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    seen = {}

    def net(x, t):
        seen["x"] = x
        return 0.3 * torch.cos(x)

    out = diffusion_loss(net, x_0, SCHED, prediction="edm", sigma_data=sigma_data, noise_levels=noise_levels,
                         generator=torch.Generator().manual_seed(1))
    t = out["t"].double()
    ab = torch.tensor([alpha_bar_at(SCHED, float(s)) for s in t], dtype=torch.float64)
    sigma = ((1 - ab) / ab).sqrt().view(-1, 1, 1, 1)
    c_skip, c_out, c_in, lam = paper(sigma, sigma_data)
    x_tilde = seen["x"].double() / c_in
    D = c_skip * x_tilde + c_out * net(c_in * x_tilde, None).double()
    ref = (lam * (D - x_0.double()) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(out["loss"].double(), ref, rtol=2e-4, atol=1e-6)
    assert (out["t"] >= 1).all() and (out["t"] <= SCHED.T).all()


def test_lognormal_levels_follow_the_samplers_interpolation_and_the_normal_law():
    scipy_stats = pytest.importorskip("scipy.stats")
    ln_sigma = torch.linspace(-8.0, 8.0, 4001, dtype=torch.float64)
    t = step_of_log_sigma(ln_sigma, SCHED)
    inside = (t > 1) & (t < SCHED.T)
    np.testing.assert_allclose(t[inside].numpy(), time_at_sigma(SCHED, ln_sigma[inside].exp().numpy()), atol=1e-9)
    for s, ls in zip(t[inside][::50], ln_sigma[inside][::50]):
        assert alpha_bar_at(SCHED, float(s)) == pytest.approx(float(torch.sigmoid(-2 * ls)), rel=1e-9)
    assert t.min() == 1 and t.max() == SCHED.T                       # clamped to the schedule's σ range

    steps, ab = lognormal_t(20000, SCHED, -1.2, 1.2, torch.Generator().manual_seed(0), "cpu")
    assert steps.dtype == torch.float32 and ab.dtype == torch.float64
    ln_s = 0.5 * torch.log((1 - ab) / ab)
    result = scipy_stats.kstest(ln_s.numpy(), scipy_stats.norm(-1.2, 1.2).cdf)
    assert result.pvalue > 0.01, result
    with pytest.raises(AssertionError):                              # and the test can tell another law
        assert scipy_stats.kstest(ln_s.numpy(), scipy_stats.norm(-1.0, 1.2).cdf).pvalue > 0.01


def recording_zero_net():
    """(seen, net): a network answering 0 that keeps its last input and time in ``seen``."""
    seen = {}

    def net(x, t):
        seen["x"], seen["t"] = x, t
        return torch.zeros_like(x)

    return seen, net


def test_lognormal_levels_with_eps_and_v_keep_the_forward_process():
    """With fractional t the input is √ᾱ x₀ + √(1−ᾱ) ε at ᾱ of t, and the ε/v targets are the usual ones."""
    x_0 = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    seen, net = recording_zero_net()
    for prediction in ("eps", "v"):
        out = diffusion_loss(net, x_0, SCHED, prediction=prediction, noise_levels="lognormal",
                             generator=torch.Generator().manual_seed(2))
        assert seen["t"].dtype == torch.float32 and not torch.all(seen["t"] == seen["t"].round())
        ab = torch.tensor([alpha_bar_at(SCHED, float(s)) for s in seen["t"].double()]).view(-1, 1, 1, 1)
        eps = (seen["x"] - ab.sqrt() * x_0) / (1 - ab).sqrt()
        target = eps if prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x_0
        torch.testing.assert_close(out["loss"], target.pow(2).flatten(1).mean(1), rtol=2e-3, atol=1e-5)


def test_uniform_levels_are_unchanged_by_the_new_options():
    """The default path draws and computes exactly what it did: q_sample at integer t."""
    x_0 = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    seen, net = recording_zero_net()
    g = torch.Generator().manual_seed(5)
    diffusion_loss(net, x_0, SCHED, prediction="v", generator=g)
    g = torch.Generator().manual_seed(5)
    t = torch.randint(1, SCHED.T + 1, (8,), generator=g)
    eps = torch.randn(x_0.shape, generator=g)
    assert torch.equal(seen["t"], t) and torch.equal(seen["x"], SCHED.q_sample(x_0, t, eps))


def test_config_checks_and_sigma_data_default():
    with pytest.raises(TrilemmaError, match="--loss-weight"):
        DiffusionConfig(prediction="edm", loss_weight="min-snr")
    with pytest.raises(TrilemmaError, match="--p-std"):
        DiffusionConfig(p_std=0.0)
    with pytest.raises(TrilemmaError, match="--sigma-data"):
        DiffusionConfig(prediction="edm", sigma_data=-1.0)
    assert DiffusionConfig(prediction="edm").data_std == 0.5                       # pixels in [-1, 1]
    assert DiffusionConfig(prediction="edm", clip=False).data_std == 1.0           # unit-variance latents
    assert DiffusionConfig(prediction="edm", sigma_data=0.7).data_std == 0.7


def test_train_and_sample_an_edm_lognormal_run(tmp_path):
    from trilemma.registry import load_run
    from trilemma.run import SampleOptions

    train_ddpm(tmp_path / "run", data="digits", preset="tiny", steps=3, batch_size=8, progress=False,
               prediction="edm", noise_levels="lognormal", p_mean=-1.0, device="cpu")
    diffusion = json.loads((tmp_path / "run" / "config.json").read_text())["diffusion"]
    assert (diffusion["prediction"], diffusion["noise_levels"], diffusion["p_mean"]) == ("edm", "lognormal", -1.0)
    run = load_run(tmp_path / "run", device="cpu")
    assert run.denoiser(SampleOptions()).sigma_data == 0.5
    images = run.sample_batch(4, torch.Generator().manual_seed(0), SampleOptions(sampler="unipc", steps=4))
    assert images.shape[0] == 4 and images.isfinite().all()
