"""Min-SNR-γ loss weighting: the closed form in x₀ space, and diffusers' implementation of it."""

from __future__ import annotations

import json

import pytest
import torch

from trilemma.ddpm.train import train_ddpm
from trilemma.diffusion import make_schedule
from trilemma.diffusion.losses import diffusion_loss, min_snr_weight


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weight_makes_the_implied_x0_loss_weight_min_snr_gamma(prediction):
    """w_t · ‖pred error‖² equals min(SNR_t, γ) · ‖x̂₀ − x₀‖² for any network output."""
    schedule = make_schedule("linear", T=1000)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 10, 100, 300, 500, 800, 1000])
    x_0 = torch.randn(7, 1, 4, 4, generator=g)
    eps = torch.randn(7, 1, 4, 4, generator=g)
    out = torch.randn(7, 1, 4, 4, generator=g)                    # an arbitrary network output
    ab = schedule.tensor("alpha_bar")[t].double().view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x_0 + (1 - ab).sqrt() * eps
    if prediction == "eps":
        target, x0_hat = eps, (x_t - (1 - ab).sqrt() * out) / ab.sqrt()
    else:
        target, x0_hat = ab.sqrt() * eps - (1 - ab).sqrt() * x_0, ab.sqrt() * x_t - (1 - ab).sqrt() * out
    snr = (ab / (1 - ab)).flatten()
    gamma = 5.0
    lhs = min_snr_weight(t, schedule, prediction, gamma).double() * (out - target).pow(2).flatten(1).mean(1)
    rhs = torch.clamp(snr, max=gamma) * (x0_hat - x_0).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weight_equals_diffusers_training_utils(prediction):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.training_utils import compute_snr

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                        beta_end=0.02)
    schedule = make_schedule("linear", T=1000)
    t = torch.arange(1, 1001)
    snr = compute_snr(scheduler, t - 1)                            # diffusers counts steps from 0
    ref = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    ref = ref / snr if prediction == "eps" else ref / (snr + 1)     # as in diffusers' train_text_to_image
    torch.testing.assert_close(min_snr_weight(t, schedule, prediction, 5.0), ref.float(), rtol=1e-4, atol=1e-6)


def test_min_snr_weighting_scales_the_per_sample_loss():
    schedule = make_schedule("linear", T=100)
    x_0 = torch.randn(8, 1, 4, 4)

    def net(x, t):
        return torch.zeros_like(x)

    plain = diffusion_loss(net, x_0, schedule, generator=torch.Generator().manual_seed(3), prediction="v")
    weighted = diffusion_loss(net, x_0, schedule, generator=torch.Generator().manual_seed(3), prediction="v",
                              weighting="min-snr", snr_gamma=2.0)
    assert torch.equal(plain["t"], weighted["t"])
    torch.testing.assert_close(weighted["loss"], plain["loss"] * min_snr_weight(plain["t"], schedule, "v", 2.0))


def test_train_ddpm_records_and_uses_the_loss_weight(tmp_path):
    train_ddpm(tmp_path / "run", data="digits", preset="tiny", steps=3, batch_size=8, progress=False,
               loss_weight="min-snr", snr_gamma=3.0, prediction="v", device="cpu")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["diffusion"]["loss_weight"] == "min-snr" and config["diffusion"]["snr_gamma"] == 3.0
