"""`trilemma demo`'s recipes: the latent recipe's two phases, its resume, and the pixel recipe."""

from __future__ import annotations

import json

import torch
from helpers import cli, one_line_error

from trilemma.autoencoder.phase import MIN_PHASE2_MINUTES, phase1_minutes
from trilemma.autoencoder.train import train_autoencoder
from trilemma.experiments.demo import (
    AE_DIR,
    DemoRecipe,
    describe_budget,
    phase1_finished,
    train_demo,
)
from trilemma.registry import load_run

TINY = DemoRecipe(data="digits", preset="tiny", batch_size=16, device="cpu")


def state(path):
    return json.loads((path / "state" / "trainer.json").read_text())


def test_the_latent_recipe_trains_an_autoencoder_then_a_latent_ddpm_into_one_run_folder(tmp_path):
    out = tmp_path / "demo"
    result = train_demo(out, TINY, minutes=None, steps=3, progress=False)
    assert not result.interrupted
    assert phase1_finished(out / AE_DIR)
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "ldm" and config["diffusion"]["prediction"] == "v"
    assert (out / "autoencoder" / "config.json").is_file()                 # the run carries its autoencoder
    assert {k: v["steps"] for k, v in describe_budget(out).items()} == {"autoencoder": 3, "diffusion": 3}
    images = load_run(out, device="cpu").generate(2, seed=0, progress=False)
    assert images.shape == (2, 1, 8, 8) and images.dtype == torch.uint8


def test_the_latent_recipe_resumes_an_autoencoder_phase_that_was_cut_short(tmp_path):
    out = tmp_path / "demo"
    train_autoencoder(out / AE_DIR, data="digits", factor=2, preset="tiny", steps=2, device="cpu", progress=False,
                      evaluate=False)                                  # as if Ctrl-C hit before phase 1's end
    assert not phase1_finished(out / AE_DIR)
    train_demo(out, TINY, minutes=None, steps=4, resume=True, progress=False)
    assert state(out / AE_DIR)["step"] == 4 and state(out)["step"] == 4
    assert phase1_finished(out / AE_DIR)
    recon = json.loads((out / AE_DIR / "recon.json").read_text())
    assert recon["rfid"] is None and recon["n"] <= 1000          # measured as in a new demo (PSNR on ≤ 1000)


def test_a_minutes_budget_leaves_the_diffusion_phase_what_the_autoencoder_did_not_use(tmp_path):
    # 9 s in all: phase 1 trains for a third, then encodes; phase 2 gets what is left of the 9 s (well above
    # its floor of MIN_PHASE2_MINUTES, so the sum is the budget whatever phase 1's encoding cost on a busy machine).
    out, minutes = tmp_path / "demo", 0.15
    train_demo(out, TINY, minutes=minutes, steps=None, progress=False)
    phases, phase1 = describe_budget(out), phase1_minutes(out / AE_DIR)
    assert 0 < phases["autoencoder"]["minutes"] <= phase1 < minutes - MIN_PHASE2_MINUTES
    assert minutes - phase1 - 1e-9 <= phases["diffusion"]["minutes"] < minutes - phase1 + 0.02   # one step's overrun


def test_the_pixel_recipe_is_a_ddpm_run(capsys, tmp_path):
    code, out, err = cli(capsys, "demo", "--out", tmp_path / "demo", "--space", "pixel", "--data", "digits",
                         "--preset", "tiny", "--steps", 2, "--ddpm-n", 2, "--ddim-n", 2, "--loss-weight", "min-snr")
    assert code == 0, err
    config = json.loads((tmp_path / "demo" / "config.json").read_text())
    assert config["kind"] == "ddpm" and config["diffusion"]["loss_weight"] == "min-snr"
    assert not (tmp_path / "demo" / AE_DIR).exists()


def test_demo_resume_without_a_run_is_a_one_line_error(capsys, tmp_path):
    code, _, err = cli(capsys, "demo", "--out", tmp_path / "nothing", "--resume")
    assert code == 2
    one_line_error(err, "--resume")


def test_demo_with_edm_defaults_to_its_own_loss_weight(capsys, tmp_path):
    code, out, err = cli(capsys, "demo", "--out", tmp_path / "demo", "--space", "pixel", "--data", "digits",
                         "--preset", "tiny", "--steps", 2, "--ddpm-n", 2, "--ddim-n", 2, "--prediction", "edm",
                         "--noise-levels", "lognormal")
    assert code == 0, err
    diffusion = json.loads((tmp_path / "demo" / "config.json").read_text())["diffusion"]
    assert (diffusion["prediction"], diffusion["loss_weight"], diffusion["noise_levels"]) == \
        ("edm", "uniform", "lognormal")
    code, _, err = cli(capsys, "demo", "--out", tmp_path / "demo2", "--space", "pixel", "--data", "digits",
                       "--preset", "tiny", "--steps", 2, "--prediction", "edm", "--loss-weight", "min-snr")
    assert code == 2
    one_line_error(err, "--loss-weight")
