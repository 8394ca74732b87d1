"""Fast diffusion solvers (docs/methods.md §10): parity with diffusers, Gaussian closed forms, identities, NFE.

Parity mapping: diffusers' timestep k (0-based) is our step t = k + 1, and its sigma is our σ̃_t =
√((1 − ᾱ_t)/ᾱ_t). Our ``trailing`` spacing is diffusers' ``timestep_spacing="trailing"`` for every
scheduler; our ``karras`` / ``logsnr`` grids are its ``use_karras_sigmas`` / ``use_lu_lambdas`` (with
``timestep_spacing="linspace"`` for Euler and Heun, whose Karras range comes from the spaced steps).
"""

import functools
import itertools
import math
import types

import numpy as np
import pytest
import torch

from trilemma.diffusion import Denoiser, make_schedule
from trilemma.diffusion.samplers import (SAMPLERS, alpha_bar_at, auto_sampler, ddim_sample, ddim_timesteps,
                                         ddpm_sample, default_spacing, dpmpp_2m_sample, dpmpp_2m_sde_sample, euler_sample,
                                         heun_sample, sample_with, solver_grid, solver_nfe, solver_points,
                                         solver_timesteps, time_at_sigma, unipc_sample)
from trilemma.errors import TrilemmaError
from trilemma.nets.layers import sinusoidal_embedding

diffusers = pytest.importorskip("diffusers")
scheduling_dpmsolver_multistep = pytest.importorskip("diffusers.schedulers.scheduling_dpmsolver_multistep")
scheduling_euler_discrete = pytest.importorskip("diffusers.schedulers.scheduling_euler_discrete")

SCHED = make_schedule("linear")
SOLVERS = {"dpmpp-2m": dpmpp_2m_sample, "dpmpp-2m-sde": functools.partial(dpmpp_2m_sde_sample, eta=1.0),
           "unipc": unipc_sample, "unipc-3": functools.partial(unipc_sample, order=3),
           "heun": heun_sample, "euler": euler_sample}


def dummy_model(x, t):
    """A network stand-in that depends non-linearly on x and on the (1-based, maybe fractional) step t."""
    t = t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return 0.6 * torch.tanh(x) + 0.3 * torch.cos(t / 37.0) * torch.sin(3 * x) + 0.05 * t / 1000


# ------------------------------------------------------------------------------ parity with diffusers
class _Float64Torch(types.ModuleType):
    """diffusers' DPM-Solver and Euler ``step`` upcast the sample with ``sample.to(torch.float32)``. Seen
    through this module, float32 is float64, so the comparison tests the formulas, not float32 rounding."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.fixture
def float64_diffusers(monkeypatch):
    proxy = _Float64Torch("torch")
    for module in (scheduling_dpmsolver_multistep, scheduling_euler_discrete):
        monkeypatch.setattr(module, "torch", proxy)


REFERENCES = {
    "dpmpp-2m": ("DPMSolverMultistepScheduler",
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}),
    "dpmpp-2m-sde": ("DPMSolverMultistepScheduler",
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}),
    "unipc": ("UniPCMultistepScheduler",
              {"solver_type": "bh2", "solver_order": 2, "predict_x0": True, "final_sigmas_type": "zero"}),
    "unipc-3": ("UniPCMultistepScheduler",
                {"solver_type": "bh2", "solver_order": 3, "predict_x0": True, "final_sigmas_type": "zero"}),
    "heun": ("HeunDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {"final_sigmas_type": "zero"}),
}


def reference(name, prediction, spacing, steps):
    """The diffusers scheduler for ``name`` with our float64 ᾱ, set to ``steps`` steps of ``spacing``."""
    cls, config = REFERENCES[name]
    config = dict(config, prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction])
    if spacing == "karras":
        config.update(use_karras_sigmas=True)
    elif spacing == "logsnr":
        config.update(use_lu_lambdas=True)
    if spacing in ("karras", "logsnr"):
        config.update(timestep_spacing="linspace")
    else:
        config.update(timestep_spacing=spacing)
    betas = np.array(SCHED.betas[1:])
    ref = getattr(diffusers, cls)(num_train_timesteps=1000, trained_betas=betas, **config)
    ref.betas = torch.from_numpy(betas)
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, 0)
    ref.set_timesteps(steps)
    return ref


def aligned(name, grid):
    """Our model times and σ̃ laid out as diffusers lays out ``timesteps`` and ``sigmas`` (Heun: repeated)."""
    times, sigmas = list(grid.model_t), grid.sigma_ve
    if name == "heun":
        times = times[:1] + [t for t in times[1:] for _ in range(2)]
        sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
    return times, sigmas


def check_grid(name, spacing, ref, times, sigmas):
    ref_t = ref.timesteps.numpy().astype(np.float64)
    ours = np.asarray(times, dtype=np.float64) - 1.0
    if spacing in ("karras", "logsnr") and name not in ("heun", "euler"):
        np.testing.assert_array_equal(ref_t, np.round(ours))   # DPM-Solver and UniPC round the model time
    else:
        np.testing.assert_allclose(ref_t, ours, rtol=0, atol=1e-3)   # exact on whole steps; float32 otherwise
    np.testing.assert_allclose(ref.sigmas.numpy(), sigmas, rtol=2e-6, atol=0)   # diffusers stores float32


def run_reference(name, ref, x_T, model, times, noises, scale):
    """Drive a diffusers scheduler from ``x_T * scale``; the model is told our (unrounded) time at each step.

    Euler and Heun start from x̃_T = x_T/√ᾱ_T = x_T·√(1 + σ̃_max²). (diffusers' own ``init_noise_sigma`` is
    σ̃_max for "linspace"/"trailing", a 2e-5 relative difference; both runs here start from the same x̃_T.)
    """
    x = x_T * scale
    states = []
    for i, k in enumerate(ref.timesteps):
        out = model(ref.scale_model_input(x, k), torch.full((x.shape[0],), float(times[i]), dtype=x.dtype))
        kwargs = {"variance_noise": noises[i]} if name == "dpmpp-2m-sde" else {}
        x = ref.step(out, k, x, **kwargs).prev_sample
        states.append(x)
    if name == "heun":
        states = states[1::2] + states[-1:]                         # after each full Heun step
    return x, states


def assert_parity(name, prediction, spacing, steps):
    ref = reference(name, prediction, spacing, steps)
    grid = solver_grid(SCHED, solver_timesteps(SCHED, steps, spacing))
    times, sigmas = aligned(name, grid)
    check_grid(name, spacing, ref, times, sigmas)
    ref.sigmas = torch.from_numpy(sigmas.copy())                    # then run its maths in float64
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(7)                            # the SDE's noise, in our order
    noises = [torch.randn(x_T.shape, generator=g, dtype=x_T.dtype) for _ in range(steps - 1)]
    noises.append(torch.zeros_like(x_T))
    ours, traj = SOLVERS[name](Denoiser(dummy_model, prediction, clip=None), x_T, SCHED,
                               solver_timesteps(SCHED, steps, spacing), generator=torch.Generator().manual_seed(7),
                               return_trajectory=True)
    ve = name in ("heun", "euler")                                  # diffusers works in x̃ = x/α there
    theirs, states = run_reference(name, ref, x_T, dummy_model, times, noises, 1 / grid.alpha[0] if ve else 1.0)
    assert len(states) == steps
    for i, state in enumerate(states):
        ours_i = traj["x_t"][i + 1] / (grid.alpha[i + 1] if ve else 1.0)
        torch.testing.assert_close(ours_i, state, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["dpmpp-2m", "dpmpp-2m-sde", "unipc", "heun", "euler"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_trailing_trajectory_matches_diffusers(float64_diffusers, name, prediction, steps):
    assert_parity(name, prediction, "trailing", steps)


@pytest.mark.parametrize("name,spacing", [("dpmpp-2m", "karras"), ("dpmpp-2m", "logsnr"), ("unipc", "karras"),
                                          ("unipc-3", "trailing"), ("unipc-3", "karras"),
                                          ("dpmpp-2m-sde", "karras"), ("heun", "karras"), ("euler", "karras")])
def test_fractional_grids_and_unipc3_match_diffusers(float64_diffusers, name, spacing):
    assert_parity(name, "eps", spacing, 10)


def test_time_at_sigma_is_diffusers_sigma_to_t():
    ref = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, trained_betas=np.array(SCHED.betas[1:]))
    sigmas = np.exp(np.random.default_rng(0).uniform(-4.5, 5.0, size=50))
    log_sigmas = -0.5 * np.array(SCHED.log_snr[1:])
    expected = np.array([ref._sigma_to_t(s, log_sigmas) for s in sigmas]) + 1
    times = time_at_sigma(SCHED, sigmas)
    np.testing.assert_allclose(times, expected, rtol=0, atol=1e-9)
    back = [math.sqrt((1 - alpha_bar_at(SCHED, t)) / alpha_bar_at(SCHED, t)) for t in times]
    np.testing.assert_allclose(back, sigmas, rtol=1e-9)                         # alpha_bar_at inverts it


# ----------------------------------------------------------------------------- time grids
def test_solver_timesteps():
    for spacing in ("leading", "trailing", "linspace"):
        np.testing.assert_array_equal(solver_timesteps(SCHED, 7, spacing), ddim_timesteps(1000, 7, spacing))
    sig = np.sqrt((1 - SCHED.alpha_bar) / SCHED.alpha_bar)
    karras = solver_timesteps(SCHED, 6, "karras")
    assert karras[0] == 1.0 and karras[-1] == 1000.0                            # σ̃_min … σ̃_max of the schedule
    s = np.array([math.sqrt((1 - alpha_bar_at(SCHED, t)) / alpha_bar_at(SCHED, t)) for t in karras[::-1]])
    ramp = np.arange(6) / 5
    expected = (sig[1000] ** (1 / 7) + ramp * (sig[1] ** (1 / 7) - sig[1000] ** (1 / 7))) ** 7
    np.testing.assert_allclose(s, expected, rtol=1e-10)
    logsnr = solver_timesteps(SCHED, 6, "logsnr")
    lam = [math.log(alpha_bar_at(SCHED, t) / (1 - alpha_bar_at(SCHED, t))) for t in logsnr]
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)       # uniform in log-SNR
    grid = solver_grid(SCHED, karras)
    assert grid.t[-1] == 0 and grid.sigma[-1] == 0 and grid.alpha_bar[-1] == 1 and grid.lam[-1] == np.inf
    assert all(isinstance(t, float) for t in grid.model_t[1:-1]) and grid.model_t[0] == 1000
    with pytest.raises(TrilemmaError, match="--spacing"):
        solver_timesteps(SCHED, 5, "cosine")


def test_fractional_time_reaches_the_network_as_float():
    seen = []

    def model(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    d = Denoiser(model, "eps", clip=None)
    d(torch.zeros(2, 1, 2, 2), 7, 0.9)
    d(torch.zeros(2, 1, 2, 2), 7.25, 0.9)
    assert seen[0].dtype == torch.long and seen[1].dtype == torch.float32 and seen[1][0].item() == 7.25
    # the U-Net's sinusoidal embedding takes t.float(): whole floats equal longs, fractions lie in between
    e7, e7f = sinusoidal_embedding(torch.tensor([7]), 32), sinusoidal_embedding(torch.tensor([7.0]), 32)
    torch.testing.assert_close(e7, e7f)
    e8 = sinusoidal_embedding(torch.tensor([8]), 32)
    mid = sinusoidal_embedding(torch.tensor([7.5]), 32)
    assert torch.all(mid.isfinite()) and (mid - e7).abs().max() < (e8 - e7).abs().max()


def test_unet_runs_on_fractional_times():
    from trilemma.nets.unet import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                          attn_resolutions=(), dropout=0.0)).eval()
    with torch.no_grad():
        for p in net.parameters():                    # the zero-initialised output layers would hide t
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(2, 1, 8, 8)
        torch.testing.assert_close(net(x, torch.tensor([7, 7])), net(x, torch.tensor([7.0, 7.0])))
        assert not torch.allclose(net(x, torch.tensor([7, 7])), net(x, torch.tensor([7.5, 7.5])))
    out = sample_with("dpmpp-2m", Denoiser(net, "eps"), x, SCHED, steps=4, spacing="karras")
    assert out.shape == x.shape and out.isfinite().all()


# ----------------------------------------------------------------------- Gaussian data: closed forms
MU = torch.tensor([0.3, -0.5, 0.1, 0.0], dtype=torch.float64).view(1, 1, 2, 2)
S = torch.tensor([0.5, 0.7, 0.9, 0.6], dtype=torch.float64).view(1, 1, 2, 2)


def gaussian_model(prediction, schedule=SCHED):
    """The exact network for data x₀ ~ N(μ, s²): E[ε | x_t] = √(1−ᾱ) (x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ), as ε, v or x₀."""
    def model(x, t):
        ab = alpha_bar_at(schedule, float(t[0]))
        eps = math.sqrt(1 - ab) * (x - math.sqrt(ab) * MU) / (ab * S**2 + 1 - ab)
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        return {"eps": eps, "x0": x0, "v": math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0}[prediction]
    return model


def exact_ode(x_start, ab_start, ab):
    """Probability-flow ODE for Gaussian data in closed form. In x̃ = x/√ᾱ with σ̃² = (1−ᾱ)/ᾱ,
    dx̃/dσ̃ = (x̃ − D)/σ̃ = σ̃(x̃ − μ)/(s² + σ̃²), so (x̃ − μ)/√(s² + σ̃²) is constant along the path.
    Returns x at ᾱ = ``ab`` from ``x_start`` at ᾱ = ``ab_start`` (at ᾱ = 1: x₀ = μ + s (x̃ − μ)/√(s² + σ̃²))."""
    v0, v = (1 - ab_start) / ab_start, (1 - ab) / ab
    x_tilde = MU + (x_start / math.sqrt(ab_start) - MU) * torch.sqrt(S**2 + v) / torch.sqrt(S**2 + v0)
    return math.sqrt(ab) * x_tilde


def test_exact_ode_solves_the_ode():
    """Check the closed form against a fine Euler solve of dx̃/dσ̃ = (x̃ − D)/σ̃ with the exact D."""
    x = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = np.linspace(3.0, 0.5, 20001)
    xt = x * math.sqrt(1 + sig[0] ** 2)
    for a, b in itertools.pairwise(sig):
        D = MU + S**2 / (S**2 + a**2) * (xt - MU)
        xt = xt + (b - a) * (xt - D) / a
    ab0, ab1 = 1 / (1 + sig[0] ** 2), 1 / (1 + sig[-1] ** 2)
    torch.testing.assert_close(xt * math.sqrt(ab1), exact_ode(x, ab0, ab1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name,order", [("dpmpp-2m", 2.0), ("heun", 2.0), ("euler", 1.0), ("unipc", 3.0)])
def test_order_of_convergence_on_gaussian_data(name, order):
    """Error against the exact ODE solution at the last σ > 0 (the step to σ = 0 is first order by design),
    for N = 32, 64, 128 log-SNR-uniform steps: log-log slope ≈ −order. Heun's N steps cost 2N − 1
    evaluations, the same slope in NFE. UniPC-2 with its corrector is third order (Zhao et al. 2023:
    UniC raises the order by one)."""
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = Denoiser(gaussian_model("eps"), "eps", clip=None)
    Ns, errors = (32, 64, 128), []
    for N in Ns:
        taus = solver_timesteps(SCHED, N, "logsnr")
        grid = solver_grid(SCHED, taus)
        _, traj = SOLVERS[name](d, x_T, SCHED, taus, return_trajectory=True)
        exact = exact_ode(x_T, grid.alpha_bar[0], grid.alpha_bar[-2])
        errors.append((traj["x_t"][-2] - exact).abs().max().item())
    slopes = -np.diff(np.log(errors)) / np.log(2)
    assert np.all(np.abs(slopes - order) < 0.2), (errors, slopes)


@pytest.mark.parametrize("name,eta", [("ddpm", None), ("ddim", 0.0), ("ddim", 1.0), ("dpmpp-2m", None),
                                      ("dpmpp-2m-sde", 1.0), ("unipc", None), ("heun", None), ("euler", 0.0),
                                      ("euler", 1.0)])
def test_gaussian_moments_converge_with_steps(name, eta):
    """Mean and variance of the samples: within tolerances that shrink with the number of steps.

    Antithetic noise (z, −z) makes the sample mean of x_T exactly 0; deterministic samplers are compared
    with the exact ODE map of the same x_T (no sampling error), stochastic ones with μ and s² themselves
    (8192 samples: sampling error ≈ 0.011 s on the mean, 1.6 % on the variance). Most of the error at
    few steps is the last step, x̂₀ at the smallest σ > 0 walked, which shrinks the variance by s²/(s² + σ̃²).
    """
    z = torch.randn(4096, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = torch.cat([z, -z])
    d = Denoiser(gaussian_model("eps"), "eps", clip=None)
    deterministic = name not in ("ddpm", "dpmpp-2m-sde") and not eta
    target = exact_ode(x_T, SCHED.alpha_bar[1000], 1.0) if deterministic else None
    mean, var = (target.mean(0), target.var(0)) if deterministic else (MU[0], S[0] ** 2)
    second_order = name in ("dpmpp-2m", "unipc", "heun")
    tolerance = {10: 0.75, 50: 0.08, 250: 0.01} if second_order else {10: 0.75, 50: 0.25, 250: 0.06}
    for steps, tol in tolerance.items():
        out = sample_with(name, d, x_T, SCHED, steps=steps, spacing="trailing", eta=eta,
                          generator=torch.Generator().manual_seed(1))
        assert ((out.mean(0) - mean).abs() / S[0]).max() < (0.01 if deterministic else 0.05)
        assert (out.var(0) / var - 1).abs().max() < tol, (steps, (out.var(0) / var - 1).abs().max())


@pytest.mark.parametrize("name", ["dpmpp-2m", "unipc", "heun", "euler"])
def test_parameterisations_give_the_same_samples(name):
    """ε-, v- and x₀-networks that agree on (ε, x₀) give the same samples, also on fractional (Karras) times."""
    x_T = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    taus = solver_timesteps(SCHED, 8, "karras")
    outs = [SOLVERS[name](Denoiser(gaussian_model(p), p, clip=None), x_T, SCHED, taus) for p in ("eps", "v", "x0")]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-9, rtol=1e-9)


# ---------------------------------------------------------------------------------------- identities
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_euler_is_ddim(spacing, eta):
    """Euler in x̃ = x/√ᾱ (ancestral for η > 0) is DDIM with the same η, step for step and draw for draw."""
    d = Denoiser(dummy_model, "eps", clip=None)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    taus = ddim_timesteps(1000, 12, spacing)
    a, ta = ddim_sample(d, x_T, SCHED, taus, eta=eta, generator=torch.Generator().manual_seed(5),
                        return_trajectory=True)
    b, tb = euler_sample(d, x_T, SCHED, taus, eta=eta, generator=torch.Generator().manual_seed(5),
                         return_trajectory=True)
    assert ta["t"] == tb["t"]
    for xa, xb in zip(ta["x_t"], tb["x_t"]):
        torch.testing.assert_close(xa, xb, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_sde_with_eta_zero_is_the_ode_solver():
    d = Denoiser(dummy_model, "v", clip=None)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    taus = solver_timesteps(SCHED, 10, "karras")
    g = torch.Generator().manual_seed(3)
    a = dpmpp_2m_sde_sample(d, x_T, SCHED, taus, eta=0.0, generator=g)
    torch.testing.assert_close(a, dpmpp_2m_sample(d, x_T, SCHED, taus), rtol=0, atol=0)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(3).get_state())   # nothing drawn


@pytest.mark.parametrize("name", SAMPLERS)
def test_last_sigma_is_zero(name):
    """Whatever x_t is, a network whose x̂₀ is a fixed c makes every sampler return exactly c: no noise is left."""
    c = torch.linspace(-0.9, 0.9, 16, dtype=torch.float64).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    schedule = make_schedule("linear", T=100)

    def model(x, t):                                  # an x₀-network predicting c everywhere
        return c
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = Denoiser(model, "x0", clip=None)
    for steps, spacing in ((5, "trailing"), (5, "karras"), (4, "leading")):
        if name in ("ddpm", "ddim") and spacing == "karras":
            continue
        out = sample_with(name, d, x_T, schedule, steps=steps, spacing=spacing,
                          generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(out, c, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_seed_determinism_and_no_hidden_state(name):
    schedule = make_schedule("linear", T=50)
    d = Denoiser(dummy_model, "eps")

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        x_T = torch.randn(2, 1, 4, 4, generator=g)
        eta = 1.0 if name in ("ddim", "euler") else None
        return sample_with(name, d, x_T, schedule, steps=8, spacing="trailing", eta=eta, generator=g)

    a = draw(0)
    draw(5)                                           # an unrelated call in between changes nothing
    torch.testing.assert_close(a, draw(0), rtol=0, atol=0)
    assert not torch.allclose(a, draw(1))


@pytest.mark.parametrize("name", SAMPLERS)
def test_nfe_counts_denoiser_calls(name):
    schedule = make_schedule("linear", T=60)
    calls = []

    def model(x, t):
        calls.append(t)
        return torch.zeros_like(x)
    d = Denoiser(model, "eps")
    for steps in (1, 2, 5, 10, 11):
        calls.clear()
        sample_with(name, d, torch.zeros(1, 1, 2, 2), schedule, steps=steps, generator=torch.Generator())
        assert len(calls) == solver_nfe(name, steps) <= steps
    assert solver_nfe("heun", 10) == 9 and solver_points("heun", 10) == 5 and solver_nfe("heun", 11) == 11
    calls.clear()
    sample_with(name, d, torch.zeros(1, 1, 2, 2), schedule, generator=torch.Generator())    # default steps
    assert len(calls) == (60 if name == "ddpm" else solver_nfe(name, 50))


def test_dispatcher_reproduces_ddpm_and_ddim_exactly():
    d = Denoiser(dummy_model, "eps")
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def same(a, b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    def g():
        return torch.Generator().manual_seed(4)
    same(sample_with("ddim", d, x_T, SCHED, steps=20, spacing="leading", eta=0.3, generator=g()),
         ddim_sample(d, x_T, SCHED, ddim_timesteps(1000, 20, "leading"), eta=0.3, generator=g()))
    same(sample_with("ddim", d, x_T, SCHED, spacing="trailing", generator=g()),
         ddim_sample(d, x_T, SCHED, ddim_timesteps(1000, 50, "trailing"), generator=g()))
    same(sample_with("ddpm", d, x_T, SCHED, steps=25, spacing="linspace", variance="beta", generator=g()),
         ddpm_sample(d, x_T, SCHED.respace(ddim_timesteps(1000, 25, "linspace")), variance="beta", generator=g()))
    small = make_schedule("linear", T=40)
    for steps in (None, 40):
        same(sample_with("ddpm", d, x_T, small, steps=steps, generator=g()), ddpm_sample(d, x_T, small, generator=g()))


def test_default_sampler_and_spacing_follow_the_budget():
    """auto = unipc below 20 NFE, dpmpp-2m-sde from 20; the solvers walk karras from 8 NFE, trailing below."""
    from trilemma.run import SampleOptions

    assert auto_sampler(4) == auto_sampler(19) == "unipc"
    assert auto_sampler(20) == auto_sampler(None) == "dpmpp-2m-sde"             # None: the default 50 steps
    for steps in (4, 50, None):
        assert default_spacing("ddpm", steps) == default_spacing("ddim", steps) == "trailing"
    d = Denoiser(dummy_model, "eps")
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for name in ("dpmpp-2m", "dpmpp-2m-sde", "unipc", "heun", "euler"):
        assert default_spacing(name, 7) == "trailing" and default_spacing(name, 8) == "karras"
        assert default_spacing(name) == "karras" and SampleOptions(sampler=name).spacing == "karras"
        for steps, spacing in ((5, "trailing"), (9, "karras")):
            walked = []
            out = sample_with(name, d, x_T, SCHED, steps=steps, generator=torch.Generator().manual_seed(1),
                              callback=lambda i, t, x, x0, walked=walked: walked.append(t))
            again = sample_with(name, d, x_T, SCHED, steps=steps, spacing=spacing,
                                generator=torch.Generator().manual_seed(1))
            torch.testing.assert_close(out, again, rtol=0, atol=0)
            assert walked == list(solver_timesteps(SCHED, solver_points(name, steps), spacing)[::-1])
    # "auto" in the dispatcher and in SampleOptions: the same sampler, η and spacing as naming them
    for steps, name in ((10, "unipc"), (30, "dpmpp-2m-sde")):
        auto = sample_with("auto", d, x_T, SCHED, steps=steps, generator=torch.Generator().manual_seed(2))
        named = sample_with(name, d, x_T, SCHED, steps=steps, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(auto, named, rtol=0, atol=0)
    assert SampleOptions() == SampleOptions(sampler="dpmpp-2m-sde", eta=1.0, spacing="karras")
    assert SampleOptions(steps=10) == SampleOptions(sampler="unipc", steps=10, eta=0.0, spacing="karras")
    assert SampleOptions(steps=6).spacing == "trailing" and SampleOptions(sampler="ddim").spacing == "trailing"
    assert SampleOptions(sampler="dpmpp-2m-sde", eta=0.0).eta == 0.0                # a given η is kept
    assert SampleOptions(sampler="unipc", spacing="logsnr").spacing == "logsnr"     # a given spacing is kept
    assert SampleOptions(sampler="ddpm").to_dict()["spacing"] == "trailing"         # reports record the resolved one
    with pytest.raises(TrilemmaError, match="--sampler"):
        default_spacing("plms")


def test_dispatcher_passes_guidance_and_reports_progress():
    def model(x, t, y):
        return 0.5 * x + 0.1 * y.to(x.dtype).view(-1, 1, 1, 1)
    cond, uncond = {"y": torch.full((2,), 3)}, {"y": torch.full((2,), 0)}
    w = 4.0
    guided = Denoiser(model, "eps", clip=None, guidance=w, uncond=uncond)
    by_hand = Denoiser(lambda x, t: model(x, t, uncond["y"]) + w * (model(x, t, cond["y"]) - model(x, t, uncond["y"])),
                       "eps", clip=None)
    x_T = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in ("dpmpp-2m", "unipc", "heun"):
        seen = []
        a = sample_with(name, guided, x_T, SCHED, steps=6, spacing="karras", cond=cond,
                        callback=lambda i, t, x, x0, seen=seen: seen.append((i, t)))
        torch.testing.assert_close(a, sample_with(name, by_hand, x_T, SCHED, steps=6, spacing="karras"))
        assert [i for i, _ in seen] == list(range(solver_points(name, 6)))
        assert seen[0][1] == 1000 and seen[-1][1] == 1


def test_bad_options_raise_one_line_errors():
    d = Denoiser(dummy_model, "eps")
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(TrilemmaError, match="--sampler"):
        sample_with("plms", d, x, SCHED, steps=5)
    with pytest.raises(TrilemmaError, match="--eta"):
        sample_with("heun", d, x, SCHED, steps=5, eta=0.5)
    with pytest.raises(TrilemmaError, match="--eta"):
        sample_with("dpmpp-2m-sde", d, x, SCHED, steps=5, eta=1.5)
    sample_with("ddpm", d, x, make_schedule("linear", T=10), eta=0.5)        # ddpm ignores η, as before
    with pytest.raises(TrilemmaError, match="--spacing"):
        sample_with("ddim", d, x, SCHED, steps=5, spacing="karras")
    with pytest.raises(TrilemmaError, match="--steps"):
        solver_nfe("unipc", 0)
    with pytest.raises(TrilemmaError, match="--order"):
        unipc_sample(d, x, SCHED, [10.0, 500.0], order=4)
    with pytest.raises(TrilemmaError, match="timesteps"):
        heun_sample(d, x, SCHED, [500.0, 10.0])
