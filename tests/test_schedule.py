"""Noise schedules and the forward process against closed forms and diffusers (docs/methods.md §4)."""

import math

import numpy as np
import pytest
import torch

from trilemma.diffusion.schedule import SCHEDULES, ScheduleConfig, make_schedule
from trilemma.errors import TrilemmaError


def closed_form_betas(name, T=1000, b1=1e-4, bT=0.02, r=6.0, s=0.008):
    """β_1..β_T written out term by term from docs/methods.md §4, in plain Python floats."""
    out = []
    for t in range(1, T + 1):
        u = (t - 1) / (T - 1)
        if name == "linear":
            out.append(b1 + u * (bT - b1))
        elif name == "quadratic":
            out.append((math.sqrt(b1) + u * (math.sqrt(bT) - math.sqrt(b1))) ** 2)
        elif name == "sigmoid":
            out.append(b1 + (bT - b1) / (1 + math.exp(r * (1 - 2 * u))))
        else:
            f = lambda tt: math.cos((tt / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
            out.append(min(1 - (f(t) / f(0)) / (f(t - 1) / f(0)), 0.999))
    return np.array(out)


@pytest.mark.parametrize("name", SCHEDULES)
def test_betas_match_closed_form(name):
    s = make_schedule(name)
    assert s.T == 1000 and s.betas[0] == 0.0 and s.alpha_bar[0] == 1.0
    np.testing.assert_allclose(s.betas[1:], closed_form_betas(name), rtol=1e-12, atol=0)
    np.testing.assert_allclose(s.alpha_bar[1:], np.cumprod(1 - closed_form_betas(name)), rtol=1e-12)
    assert s.betas.dtype == np.float64


def test_endpoints_and_cosine_alpha_bar():
    lin = make_schedule("linear")
    assert lin.betas[1] == pytest.approx(1e-4) and lin.betas[-1] == pytest.approx(0.02)
    quad = make_schedule("quadratic")
    assert quad.betas[1] == pytest.approx(1e-4) and quad.betas[-1] == pytest.approx(0.02)
    cos = make_schedule("cosine")
    T, s = 1000, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (1, 10, 500, 990):           # unaffected by the 0.999 clip
        assert cos.alpha_bar[t] == pytest.approx(f(t) / f(0), rel=1e-10)
    assert cos.betas.max() <= 0.999
    sig = make_schedule("sigmoid", r=3.0)
    # sigmoid: halfway between β_1 and β_T at the midpoint u = 1/2
    mid = closed_form_betas("sigmoid", T=1001, r=3.0)[500]
    assert make_schedule("sigmoid", T=1001, r=3.0).betas[501] == pytest.approx(mid)
    assert mid == pytest.approx((1e-4 + 0.02) / 2)
    assert np.all(np.diff(sig.betas[1:]) > 0)


def test_posterior_variance_and_log_snr():
    s = make_schedule("linear", T=100)
    t = np.arange(2, 101)
    expected = s.betas[t] * (1 - s.alpha_bar[t - 1]) / (1 - s.alpha_bar[t])
    np.testing.assert_allclose(s.posterior_var[t], expected, rtol=1e-12)
    assert s.posterior_var[1] == 0.0          # q(x_0 | x_1, x_0) is a point mass
    np.testing.assert_allclose(s.log_snr[1:], np.log(s.alpha_bar[1:] / (1 - s.alpha_bar[1:])), rtol=1e-10)


def test_q_posterior_is_bayes_rule():
    """Mean/variance of q(x_{t-1}|x_t,x_0) equal Gaussian conditioning of the joint (x_{t-1}, x_t) | x_0."""
    s = make_schedule("cosine", T=50)
    x0, xt = torch.tensor([0.7], dtype=torch.float64), torch.tensor([-0.3], dtype=torch.float64)
    for t in (2, 10, 49):
        a_prev, beta = s.alpha_bar[t - 1], s.betas[t]
        # x_{t-1} ~ N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1}); x_t = √α_t x_{t-1} + √β_t ε
        m1, v1 = math.sqrt(a_prev) * x0.item(), 1 - a_prev
        m2, v2 = math.sqrt(1 - beta) * m1, (1 - beta) * v1 + beta
        cov = math.sqrt(1 - beta) * v1
        mean, var = s.q_posterior(x0, xt, t)
        assert mean.item() == pytest.approx(m1 + cov / v2 * (xt.item() - m2), rel=1e-10)
        assert var == pytest.approx(v1 - cov**2 / v2, rel=1e-10)


@pytest.mark.parametrize("name", SCHEDULES)
def test_closed_form_forward_matches_iterated_steps(name):
    """q(x_t|x_0) in one jump has the mean and variance of t single steps q(x_t|x_{t-1}) (statistically)."""
    s = make_schedule(name, T=200)
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64).repeat(40000, 1)     # (40000, 3)
    x = x0.clone()
    for t in range(1, 121):
        x = s.q_step(x, t, torch.randn(x.shape, generator=g, dtype=torch.float64))
    mean, var = x.mean(0), x.var(0)
    expected_mean = math.sqrt(s.alpha_bar[120]) * x0[0]
    torch.testing.assert_close(mean, expected_mean, atol=0.02, rtol=0)
    torch.testing.assert_close(var, torch.full((3,), 1 - s.alpha_bar[120], dtype=torch.float64), atol=0.02, rtol=0)
    jump = s.q_sample(x0.float(), torch.full((40000,), 120), torch.randn(x0.shape, generator=g))
    torch.testing.assert_close(jump.double().mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(jump.double().var(0), var, atol=0.03, rtol=0)


DIFFUSERS_NAMES = {"linear": "linear", "quadratic": "scaled_linear", "cosine": "squaredcos_cap_v2",
                   "sigmoid": "sigmoid"}


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedules_match_diffusers(name):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name])
    ours = make_schedule(name)
    np.testing.assert_allclose(ours.betas[1:], ref.betas.double().numpy(), rtol=2e-6, atol=1e-9)
    np.testing.assert_allclose(ours.alpha_bar[1:], ref.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-9)


def test_respace_keeps_alpha_bar():
    s = make_schedule("linear")
    taus = [1, 100, 400, 1000]
    r = s.respace(taus)
    assert r.T == 4
    np.testing.assert_allclose(r.alpha_bar[1:], s.alpha_bar[taus], rtol=1e-12)
    assert list(r.model_t) == [0, *taus]
    assert s.T == 1000                      # the original is untouched
    with pytest.raises(TrilemmaError):
        s.respace([5, 3])


def test_schedule_is_immutable_and_validated():
    s = make_schedule("linear")
    with pytest.raises(ValueError):
        s.betas[3] = 0.5
    with pytest.raises(Exception):
        s.betas = None
    with pytest.raises(TrilemmaError, match="schedule"):
        ScheduleConfig(name="exponential")
    with pytest.raises(TrilemmaError):
        ScheduleConfig(beta_1=0.1, beta_T=0.01)
