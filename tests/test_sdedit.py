"""SDEdit with every sampler (docs/methods.md §8.3, §10): the edit starts at t₀ = strength · T.

The reverse process runs on the schedule truncated to its first t₀ steps, from
z_ts = √ᾱ_ts z₀ + √(1 − ᾱ_ts) ε at its first step t_s. Checked here: the plan's steps and NFE; that
strength 0 returns the input; that strength 1 is plain sampling from the same noise, bit for bit,
for every sampler and spacing; and, with an oracle denoiser (x̂₀ ≡ z₀), that every deterministic
solver stays on the forward-process line √ᾱ_t z₀ + √(1 − ᾱ_t) ε at every step — which fails if the
start is scaled wrongly for the σ-parameterised solvers (x̃ = x/√ᾱ).
"""

from __future__ import annotations

import math

import pytest
import torch

from trilemma.diffusion import Denoiser, make_schedule
from trilemma.diffusion.samplers import (
    SAMPLERS,
    alpha_bar_at,
    default_eta,
    sample_with,
    solver_nfe,
    solver_points,
    solver_timesteps,
)
from trilemma.errors import TrilemmaError
from trilemma.t2i.edit import (
    edit_plan,
    edit_timesteps,
    sdedit_sample,
    truncated_schedule,
)

SCHED = make_schedule("linear", T=200)
SPACINGS = ("trailing", "linspace", "leading", "karras", "logsnr")


def dummy_model(x, t):
    t = t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return 0.6 * torch.tanh(x) + 0.3 * torch.cos(t / 37.0) * torch.sin(3 * x) + 0.05 * t / 200


def denoiser():
    return Denoiser(dummy_model, "eps", clip=None)


def combos():
    for s in SAMPLERS:
        for spacing in SPACINGS:
            if s in ("ddpm", "ddim") and spacing in ("karras", "logsnr"):
                continue
            yield s, spacing


class Oracle:
    """A perfect denoiser for a one-point data distribution: x̂₀ ≡ z₀, ε̂ = (x_t − √ᾱ z₀)/√(1 − ᾱ)."""

    def __init__(self, z0):
        self.z0 = z0

    def __call__(self, x_t, t, alpha_bar, cond=None):
        return (x_t - math.sqrt(alpha_bar) * self.z0) / math.sqrt(1 - alpha_bar), self.z0


def test_truncated_schedule_keeps_the_coefficients():
    sub = truncated_schedule(SCHED, 120)
    assert sub.T == 120 and truncated_schedule(SCHED, 200) is SCHED
    assert (sub.alpha_bar == SCHED.alpha_bar[:121]).all() and (sub.model_t == SCHED.model_t[:121]).all()
    assert (sub.log_snr[1:] == SCHED.log_snr[1:121]).all()


def test_plan_steps_and_network_evaluations():
    plan = edit_plan(SCHED, 0.6, "ddim", 50)                     # t₀ = 120, ⌈0.6 · 50⌉ = 30 steps
    assert plan.t0 == 120 and plan.timesteps[-1] == 120 and plan.points == 30 and plan.nfe == 30
    assert edit_timesteps(1000, 0.6, "ddim", 50)[-1] == 600 and len(edit_timesteps(1000, 0.6, "ddim", 50)) == 30
    heun = edit_plan(SCHED, 0.5, "heun", 20)                     # 10 evaluations: 5 steps, 2·5 − 1 = 9 used
    assert heun.points == 5 and heun.nfe == 9 and heun.start == 100
    for spacing in ("karras", "logsnr"):                         # σ̃_max = σ̃_t₀: the grid tops at t₀ exactly
        p = edit_plan(SCHED, 0.3, "dpmpp-2m", 10, spacing)
        assert p.start == 60 and p.points == 3 and all(1 <= t <= 60 for t in p.timesteps)
    assert edit_plan(SCHED, 0.6, "ddim", 50, "leading").start < 120       # leading never reaches the top
    assert edit_plan(SCHED, 0.02, "unipc", 1000, "trailing").points == 4   # at most t₀ whole steps
    assert edit_plan(SCHED, 0.6, "unipc", 10).spacing == "karras"          # the solvers' default grid
    assert edit_plan(SCHED, 0.6, "ddim", 10).spacing == "trailing"
    assert edit_plan(SCHED, 0.02, "heun", 1000, "trailing").nfe == 7       # t₀ = 4 steps, 2·4 − 1
    assert edit_plan(SCHED, 0.5, "ddpm", None).nfe == 100
    assert edit_plan(SCHED, 0.0, "euler", 50).points == 0
    with pytest.raises(TrilemmaError, match="--strength"):
        edit_plan(SCHED, 1.5, "ddim", 10)
    with pytest.raises(TrilemmaError, match="--spacing"):
        edit_plan(SCHED, 0.5, "ddim", 10, "karras")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_strength_zero_returns_the_input(sampler):
    z0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    plan = edit_plan(SCHED, 0.0, sampler, 10)
    assert torch.equal(sdedit_sample(sampler, denoiser(), z0, torch.randn_like(z0), SCHED, plan), z0)


@pytest.mark.parametrize("sampler, spacing", list(combos()))
def test_strength_one_is_plain_sampling_from_the_same_noise(sampler, spacing):
    z0 = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    steps = 7
    eta = default_eta(sampler)
    g = torch.Generator().manual_seed(5)
    eps = torch.randn(z0.shape, generator=g)
    plan = edit_plan(SCHED, 1.0, sampler, steps, spacing)
    edited = sdedit_sample(sampler, denoiser(), z0, eps, SCHED, plan, eta=eta, generator=g)

    g2 = torch.Generator().manual_seed(5)
    eps2 = torch.randn(z0.shape, generator=g2)
    ab = alpha_bar_at(SCHED, plan.start)
    x_T = math.sqrt(ab) * z0 + math.sqrt(1 - ab) * eps2
    plain = sample_with(sampler, denoiser(), x_T, SCHED, steps=steps, spacing=spacing, eta=eta, generator=g2)
    assert torch.equal(edited, plain)
    if sampler not in ("ddpm", "ddim"):
        assert plan.nfe == solver_nfe(sampler, steps)
        assert list(plan.timesteps) == list(solver_timesteps(SCHED, solver_points(sampler, steps), spacing))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m", "unipc", "heun", "euler"])
@pytest.mark.parametrize("spacing", ["trailing", "karras", "logsnr"])
def test_deterministic_solvers_stay_on_the_forward_line_from_t0(sampler, spacing):
    if sampler == "ddim" and spacing != "trailing":
        pytest.skip("ddim walks whole steps")
    z0 = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    plan = edit_plan(SCHED, 0.45, sampler, 12, spacing)
    x, traj = sdedit_sample(sampler, Oracle(z0), z0, eps, SCHED, plan, return_trajectory=True)
    torch.testing.assert_close(x, z0, rtol=0, atol=1e-9)
    times = sorted(plan.timesteps, reverse=True) + [0]
    assert len(traj["x_t"]) == len(times)
    for t, x_t in zip(times, traj["x_t"]):
        ab = alpha_bar_at(SCHED, t)
        torch.testing.assert_close(x_t, math.sqrt(ab) * z0 + math.sqrt(1 - ab) * eps, rtol=0, atol=1e-9)


def test_a_wrongly_scaled_start_leaves_the_line():
    """The check above has teeth: Euler started from x_ts/√ᾱ (a VE state fed as VP) ends elsewhere."""
    z0 = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    plan = edit_plan(SCHED, 0.45, "euler", 12)
    ab = alpha_bar_at(SCHED, plan.start)
    wrong = (math.sqrt(ab) * z0 + math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    _, traj = sample_with("euler", Oracle(z0), wrong, truncated_schedule(SCHED, plan.t0), steps=plan.steps,
                          return_trajectory=True)
    ab1 = alpha_bar_at(SCHED, sorted(plan.timesteps)[-2])
    assert not torch.allclose(traj["x_t"][1], math.sqrt(ab1) * z0 + math.sqrt(1 - ab1) * eps, atol=1e-3)


# ------------------------------------------------------------------ a t2i run: edit_images and the CLI
@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    from helpers import small_shapes

    from trilemma.diffusion.schedule import ScheduleConfig
    from trilemma.t2i import train as t2i

    with small_shapes(48, 16, 1, cache=tmp_path_factory.mktemp("cache")):
        out = tmp_path_factory.mktemp("runs") / "t2i"
        t2i.train_t2i(out, data="shapes", steps=2, preset="tiny", batch_size=4, schedule=ScheduleConfig(T=50),
                      progress=False)
        yield out


def test_edit_images_and_the_cli_with_every_solver(t2i_run, tmp_path, capsys):
    import numpy as np
    from helpers import cli
    from PIL import Image

    from trilemma.data import load_dataset, to_float
    from trilemma.registry import load_run
    from trilemma.run import SampleOptions

    run = load_run(t2i_run, "cpu")
    x = to_float(load_dataset("shapes", "test").images[:2])
    for sampler in SAMPLERS:
        opts = SampleOptions(sampler=sampler, steps=4, guidance=2.0, eta=default_eta(sampler))
        assert torch.equal(edit_images_(run, x, 0.0, opts), x)                  # strength 0: the input
        y = edit_images_(run, x, 0.5, opts)
        assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(y, x)
    assert run.nfe(SampleOptions(sampler="heun", steps=10, guidance=4.0)) == 18   # (2·5 − 1) × 2

    code, _, err = cli(capsys, "generate", t2i_run, "a red circle", "--n", 2, "--sampler", "heun", "--steps", 4,
                       "--spacing", "karras", "--out", tmp_path / "g.png", "--npz", tmp_path / "g.npz", "--quiet")
    assert code == 0, err
    assert "6 network evaluations" in err                                   # heun 4 → 3, × 2 for guidance
    Image.fromarray(np.load(tmp_path / "g.npz")["images"][0]).save(tmp_path / "in.png")
    code, _, err = cli(capsys, "edit", t2i_run, tmp_path / "in.png", "a blue square", "--strength", 0.6,
                       "--sampler", "dpmpp-2m", "--steps", 10, "--spacing", "logsnr", "--out", tmp_path / "e.png",
                       "--quiet")
    assert code == 0, err
    assert "dpmpp-2m 6 steps, 12 network evaluations each" in err            # 6 steps × 2 for guidance (w = 4)
    code, _, err = cli(capsys, "edit", t2i_run, tmp_path / "in.png", "a blue square", "--sampler", "ddim",
                       "--spacing", "karras", "--out", tmp_path / "e2.png", "--quiet")
    assert code == 2 and "--spacing" in err and "Traceback" not in err


def edit_images_(run, x, strength, opts):
    from trilemma.t2i.edit import edit_images

    return edit_images(run, x, "a red circle", strength, opts, run.generator(0))
