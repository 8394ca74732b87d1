"""The GAN: the costs against their formulas, the saturation of the minimax cost, Algorithm 1's k,
the DCGAN shapes, training with exact resume, the run folder, and the CLI."""

import json
import math

import pytest
import torch
from torch import nn

from trilemma.cli.main import main
from trilemma.errors import TrilemmaError
from trilemma.gan import (
    DCGANConfig,
    Discriminator,
    GANConfig,
    Generator,
    algorithm1_iteration,
    discriminator_loss,
    minimax_generator_cost,
    nonsaturating_generator_cost,
    preset,
)
from trilemma.gan.run import slerp
from trilemma.gan.train import discriminator_step, generator_gradient_norms, generator_step, train_gan
from trilemma.registry import load_run
from trilemma.run import SampleOptions
from trilemma.utils.io import load_tensors


# ------------------------------------------------------------------------------------------ the costs
def test_costs_equal_their_formulas_from_probabilities():
    l_real = torch.linspace(-6, 6, 25, dtype=torch.float64)
    l_fake = torch.linspace(5, -7, 25, dtype=torch.float64)
    d_real, d_fake = torch.sigmoid(l_real), torch.sigmoid(l_fake)                # D(x), D(G(z))
    assert torch.allclose(discriminator_loss(l_real, l_fake), -torch.log(d_real) - torch.log(1 - d_fake))
    assert torch.allclose(minimax_generator_cost(l_fake), torch.log(1 - d_fake))
    assert torch.allclose(nonsaturating_generator_cost(l_fake), -torch.log(d_fake))


def test_costs_stay_finite_where_the_probability_formulas_overflow():
    l = torch.tensor([-200.0, -90.0, 90.0, 200.0])                             # σ(l) rounds to 0 or 1 in float32
    assert torch.isinf(-torch.log(torch.sigmoid(l))).any()                      # the naive formula breaks …
    for cost in (minimax_generator_cost(l), nonsaturating_generator_cost(l), discriminator_loss(l, l)):
        assert torch.isfinite(cost).all()                                       # … the softplus forms do not
    assert nonsaturating_generator_cost(torch.tensor([-200.0])).item() == pytest.approx(200.0)   # −log σ(l) ≈ −l


def test_minimax_gradient_vanishes_as_D_rejects_fakes_while_the_nonsaturating_one_stays_near_one():
    l = torch.linspace(-30, -5, 26, requires_grad=True)                         # D(G(z)) = σ(l) from 1e-13 to 7e-3
    (g_mm,) = torch.autograd.grad(minimax_generator_cost(l).sum(), l)
    (g_ns,) = torch.autograd.grad(nonsaturating_generator_cost(l).sum(), l)
    d = torch.sigmoid(l.detach())
    assert torch.allclose(g_mm, -d)                                             # d/dl log(1 − σ(l)) = −σ(l) → 0
    assert torch.allclose(g_ns, -(1 - d))                                       # d/dl −log σ(l) = −(1 − σ(l)) → −1
    assert g_mm.abs().max() < 7e-3 and g_mm.abs()[0] < 1e-12
    assert torch.all(g_ns.abs() > 0.99)


def test_generator_gradient_norms_ratio_is_the_odds_of_a_confident_discriminator():
    torch.manual_seed(0)
    G = Generator(preset("tiny", 8, 1))

    class Confident(nn.Module):             # logit ≈ b for every image: the minimax/non-saturating ratio is e^b
        def forward(self, x):
            return -20.0 + 1e-3 * x.flatten(1).sum(1)

    z = torch.randn(16, G.z_dim)
    norms = generator_gradient_norms(G, Confident(), z, {"minimax": minimax_generator_cost,
                                                         "nonsaturating": nonsaturating_generator_cost})
    ratio = norms["minimax"] / norms["nonsaturating"]
    assert ratio == pytest.approx(math.exp(-20), rel=0.05)
    assert all(p.grad is None for p in G.parameters())                          # measured, not accumulated


# ------------------------------------------------------------------------------------------ Algorithm 1
def test_algorithm1_performs_exactly_k_discriminator_updates_per_generator_update():
    torch.manual_seed(0)
    c = preset("tiny", 8, 1)
    G, D = Generator(c), Discriminator(c)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 2e-4), torch.optim.Adam(D.parameters(), 2e-4)
    calls = {"real": 0}

    def real_batch():
        calls["real"] += 1
        return torch.rand(8, 1, 8, 8) * 2 - 1

    for iteration in range(1, 4):
        algorithm1_iteration(G, D, opt_g, opt_d, real_batch=real_batch, noise=lambda m: torch.randn(m, c.z_dim),
                             k=3, generator_cost=nonsaturating_generator_cost)
        d_steps = {int(s["step"]) for s in opt_d.state.values()}
        g_steps = {int(s["step"]) for s in opt_g.state.values()}
        assert d_steps == {3 * iteration} and g_steps == {iteration}            # k D updates per G update
        assert calls["real"] == 3 * iteration                                   # a fresh real minibatch per D step


def test_each_step_moves_only_its_own_network():
    torch.manual_seed(0)
    c = preset("tiny", 8, 1)
    G, D = Generator(c), Discriminator(c)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-2), torch.optim.Adam(D.parameters(), 1e-2)
    g0 = [p.clone() for p in G.parameters()]
    d0 = [p.clone() for p in D.parameters()]
    discriminator_step(G, D, opt_d, torch.rand(8, 1, 8, 8), torch.randn(8, c.z_dim))
    assert all(torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    d1 = [p.clone() for p in D.parameters()]
    generator_step(G, D, opt_g, torch.randn(8, c.z_dim), minimax_generator_cost)
    assert all(torch.equal(a, b) for a, b in zip(d1, D.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    assert all(p.requires_grad for p in D.parameters())


@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_dcgan_fits_28_32_64_pixels_and_1_or_3_channels(size):
    for channels in (1, 3):
        c = preset("tiny", size, channels)
        x = Generator(c)(torch.randn(2, c.z_dim))
        assert x.shape == (2, channels, size, size) and x.abs().max() <= 1
        assert Discriminator(c)(x).shape == (2,)


def test_bad_options_are_one_line_errors():
    with pytest.raises(TrilemmaError, match="--image-size 30"):
        DCGANConfig(image_size=30)
    with pytest.raises(TrilemmaError, match="--g-loss"):
        GANConfig(g_loss="wasserstein")
    with pytest.raises(TrilemmaError, match="--k"):
        GANConfig(k=0)


def test_slerp_keeps_the_ends_and_the_norm():
    z_a, z_b = torch.randn(64), torch.randn(64)
    z_b = z_b / z_b.norm() * z_a.norm()
    path = slerp(z_a, z_b, torch.linspace(0, 1, 7)[:, None])
    assert torch.allclose(path[0], z_a, atol=1e-5) and torch.allclose(path[-1], z_b, atol=1e-5)
    assert torch.allclose(path.norm(dim=1), z_a.norm().expand(7), rtol=1e-4)


# ------------------------------------------------------------------------------------------ training
def rows(run):
    return [{k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "elapsed_s")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def tiny_gan(out, steps, **kw):
    return train_gan(out, data="digits", preset="tiny", steps=steps, batch_size=16, progress=False,
                     **dict(log_every=1, checkpoint_every=3, device="cpu"), **kw)


def test_resume_is_exact_and_the_optimisers_counted_k_and_1(tmp_path):
    tiny_gan(tmp_path / "straight", 7, k=2, ema=True)
    tiny_gan(tmp_path / "split", 4, k=2, ema=True)
    train_gan(tmp_path / "split", steps=7, resume=True, progress=False)
    assert rows(tmp_path / "split") == rows(tmp_path / "straight")
    for name in ("model", "disc", "ema"):
        a = load_tensors(tmp_path / "straight" / f"{name}.safetensors")
        b = load_tensors(tmp_path / "split" / f"{name}.safetensors")
        assert all(torch.equal(a[key], b[key]) for key in a)
    optim = load_tensors(tmp_path / "split" / "state" / "optim.safetensors")
    assert {int(v) for k, v in optim.items() if k.startswith("opt_d.") and k.endswith(".step")} == {14}
    assert {int(v) for k, v in optim.items() if k.startswith("opt_g.") and k.endswith(".step")} == {7}
    config = json.loads((tmp_path / "split" / "config.json").read_text())
    assert config["kind"] == "gan" and config["gan"]["k"] == 2 and config["train"]["lr"] == 2e-4
    assert {"loss_d", "loss_g", "d_real", "d_fake", "d_accuracy"} <= set(rows(tmp_path / "split")[-1])


def test_run_samples_reproducibly_in_one_network_evaluation(tmp_path):
    tiny_gan(tmp_path / "gan", 3, g_loss="minimax")
    run = load_run(tmp_path / "gan", device="cpu")
    assert run.kind == "gan" and run.nfe(SampleOptions()) == 1 and "minimax" in run.describe(SampleOptions())
    a = run.generate(5, seed=1, progress=False)
    assert a.dtype == torch.uint8 and a.shape == (5, 1, 8, 8) and torch.equal(a, run.generate(5, seed=1, progress=False))
    z = torch.randn(2, run.model_config.z_dim)
    path = run.interpolate(z[0], z[1], 4)
    with torch.no_grad():
        assert torch.allclose(path[[0, -1]], run.G(z), atol=1e-5)
    assert isinstance(run.discriminator(), Discriminator)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_train_sample_interpolate_and_errors(tmp_path, capsys):
    run = tmp_path / "gan"
    assert main(["train", "gan", "--data", "digits", "--preset", "tiny", "--steps", "3", "--batch-size", "16",
                 "--k", "2", "--g-loss", "minimax", "--ema", "--out", str(run), "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["gan"] == {"g_loss": "minimax", "k": 2, "beta1": 0.5, "beta2": 0.999, "ema": True}
    assert config["train"]["warmup_steps"] == 0 and config["train"]["grad_clip"] == 0.0
    assert (run / "ema.safetensors").exists() and (run / "disc.safetensors").exists()
    assert main(["train", "gan", "--out", str(run), "--resume", "--steps", "4", "--quiet"]) == 0
    assert "trained 4 steps" in capsys.readouterr().err
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png"), "--quiet"]) == 0
    assert main(["show", "interpolation", str(run), "--out", str(tmp_path / "i.png"), "--pairs", "2"]) == 0
    capsys.readouterr()
    assert main(["train", "gan", "--data", "digits", "--image-size", "30", "--steps", "1",
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image-size 30" in err[0] and not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        main(["train", "gan", "--out", str(tmp_path / "x"), "--steps", "2", "--g-loss", "wasserstein"])
    assert "--g-loss" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path, monkeypatch):
    import os
    import signal

    import trilemma.gan.train as train_gan_module

    calls = {"n": 0}
    real_iteration = train_gan_module.algorithm1_iteration

    def press_ctrl_c_during_iteration_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_iteration(*args, **kwargs)

    monkeypatch.setattr(train_gan_module, "algorithm1_iteration", press_ctrl_c_during_iteration_3)
    result = tiny_gan(tmp_path / "a", 6)
    assert result.interrupted and result.step == 3                             # the iteration finished, then it stopped
    assert json.loads((tmp_path / "a" / "state" / "trainer.json").read_text())["step"] == 3
    monkeypatch.setattr(train_gan_module, "algorithm1_iteration", real_iteration)
    assert train_gan(tmp_path / "a", steps=6, resume=True, progress=False).step == 6
    tiny_gan(tmp_path / "b", 6)
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
