"""The experiments: the sharpness measure against its closed forms, and both experiment commands end to end
on scikit-learn's 8x8 digits (tiny presets; the digits feature network trained once with a tiny recipe)."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from trilemma.cli.main import main
from trilemma.experiments.sharpness import laplacian_variance, sharpness_summary


# ------------------------------------------------------------------------------------------ sharpness
def test_laplacian_variance_matches_scipy_and_its_closed_forms():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 1, 20, 24), dtype=np.uint8)
    ref = [ndimage.laplace(im[0].astype(np.float64) / 255)[1:-1, 1:-1].var() for im in images]   # interior pixels
    assert np.allclose(laplacian_variance(images).numpy(), ref)
    assert laplacian_variance(np.full((2, 3, 9, 9), 77, dtype=np.uint8)).abs().max() < 1e-30   # flat: no detail
    # i.i.d. pixels of variance s²: Var(∇²x) = (4·1² + 4²) s² = 20 s²
    noise = rng.integers(0, 256, (1, 1, 400, 400), dtype=np.uint8)
    s2 = (noise.astype(np.float64) / 255).var()
    assert laplacian_variance(noise).item() == pytest.approx(20 * s2, rel=0.02)
    # a colour image counts through its grey levels (the channel mean)
    rgb = rng.integers(0, 256, (2, 3, 10, 10), dtype=np.uint8)
    grey = np.round(rgb.astype(np.float64).mean(1, keepdims=True))
    assert np.allclose(laplacian_variance(rgb).numpy(), laplacian_variance(grey.astype(np.uint8)).numpy(), rtol=0.05)


def test_blurring_lowers_the_sharpness():
    from scipy import ndimage

    from trilemma.data import load_dataset

    images = load_dataset("digits", "test").images[:50]                          # (50, 1, 8, 8) uint8
    blurred = torch.from_numpy(np.round(ndimage.gaussian_filter(images.numpy().astype(np.float64),
                                                                sigma=(0, 0, 1, 1))).astype(np.uint8))
    assert torch.all(laplacian_variance(blurred) < laplacian_variance(images))
    s = sharpness_summary(images)
    assert s["n"] == 50 and s["laplacian_var_sem"] > 0
    with pytest.raises(ValueError, match="uint8"):
        laplacian_variance(torch.zeros(2, 1, 8, 8))


# ------------------------------------------------------------------------------------------ gan-gradients
def test_gan_gradients_end_to_end(tmp_path, capsys):
    out = tmp_path / "gg"
    args = ["experiment", "gan-gradients", "--data", "digits", "--preset", "tiny", "--epochs", "0.25", "0.5",
            "--d-iters", "30", "--measure-every", "10", "--batch-size", "32", "--fixed-n", "32", "--d-lr", "1e-3",
            "--out", out, "--quiet"]
    assert main([str(a) for a in args]) == 0
    printed = capsys.readouterr()
    assert "orders of magnitude" in printed.err and "| 0.5 epochs |" in printed.out
    with open(out / "gradients.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 * 4                                                  # iterations 0, 10, 20, 30 per snapshot
    assert set(table[0]) == {"epochs", "d_iter", "grad_norm_minimax", "grad_norm_nonsaturating", "d_accuracy",
                             "d_real", "d_fake", "loss_d"}
    assert all(float(r["grad_norm_minimax"]) > 0 and float(r["grad_norm_nonsaturating"]) > 0 for r in table)
    for name in ("gradients.png", "gradients_minimax.png", "gradients_nonsaturating.png", "summary.md"):
        assert (out / name).stat().st_size > 500
    for snap in ("epoch_0.25", "epoch_0.5"):
        assert {"config.json", "model.safetensors"} <= {p.name for p in (out / snap).iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["snapshots"]) == {"0.25", "0.5"}
    for s in summary["snapshots"].values():                                    # the orders of magnitude, by hand
        mm, ns = s["minimax"], s["nonsaturating"]
        assert mm["log10_change"] == pytest.approx(math.log10(mm["end"] / mm["start"]))
        assert s["log10_minimax_over_nonsaturating_end"] == pytest.approx(math.log10(mm["end"] / ns["end"]))
    from trilemma.experiments.gan_gradients import GanGradientsConfig, read_csv, summarise
    assert summarise(read_csv(out / "gradients.csv"), GanGradientsConfig())["snapshots"] == summary["snapshots"]
    # digits: 1617 training images / 32 = 50.5 iterations per epoch; snapshots at 13 and 25 steps of one run
    assert json.loads((out / "dcgan" / "state" / "trainer.json").read_text())["step"] == 25
    # a second call reuses the snapshots instead of training again
    assert main([str(a) for a in args]) == 0
    assert json.loads((out / "dcgan" / "state" / "trainer.json").read_text())["step"] == 25


def test_gan_gradients_bad_epochs_are_one_line_errors(tmp_path, capsys):
    code = main(["experiment", "gan-gradients", "--data", "digits", "--epochs", "3", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--epochs" in err[0]


# ------------------------------------------------------------------------------------- latent-vs-pixel
def test_latent_vs_pixel_end_to_end_then_a_rerun_reuses_its_phases(cache, tmp_path, capsys):
    out = tmp_path / "lvp"
    args = ["experiment", "latent-vs-pixel", "--data", "digits", "--out", out, "--steps", 4, "--ae-steps", 3,
            "--preset", "tiny", "--factor", 2, "--sweep-factors", 2, "--n", 20, "--recon-n", 20,
            "--ddim-steps", 3, "--speed-sizes", "--quiet"]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert {"pixel DDPM", "latent DDPM (f = 2)"} <= set(rows)
    for name in ("pixel DDPM", "latent DDPM (f = 2)"):
        assert rows[name]["nfe"] == 3 and rows[name]["metrics"]["n"] == 20
        assert rows[name]["metrics"]["quality"]["fid"] is not None
    recon = results["sweep"]["2"]["recon"]
    assert recon["n"] == 20 and recon["psnr_db"] > 0                            # --recon-n reaches the autoencoder
    assert json.loads((out / "ae-f2" / "recon.json").read_text())["n"] == 20
    assert results["phases"]["autoencoder"]["steps"] == 3 and results["phases"]["ldm"]["steps"] == 4
    for name in ("report.md", "samples.png", "sweep.png"):
        assert (out / name).stat().st_size > 200
    capsys.readouterr()
    assert main([str(a) for a in args[:-1]]) == 0                               # again: nothing is trained again
    printed = capsys.readouterr()
    assert "reusing the autoencoder" in printed.out + printed.err
    assert json.loads((out / "ae-f2" / "state" / "trainer.json").read_text())["step"] == 3


# ------------------------------------------------------------------------------------------ vae-vs-gan
def test_vae_vs_gan_end_to_end(cache, tmp_path, capsys):
    out = tmp_path / "vg"
    args = ["experiment", "vae-vs-gan", "--data", "digits", "--preset", "tiny", "--steps", "5", "--n", "60",
            "--sharpness-n", "40", "--ddim-steps", "3", "--batch-size", "30", "--out", out, "--quiet"]
    assert main([str(a) for a in args]) == 0
    printed = capsys.readouterr().out
    assert "GAN samples are sharper than VAE samples" in printed and "cover the modes" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"real", "vae", "gan", "ddpm"}
    for key in ("vae", "gan", "ddpm"):
        r = results["results"][key]
        assert r["budget"]["steps"] == 5 and r["sharpness"]["n"] == 40
        assert r["metrics"]["n"] == 60 and r["metrics"]["quality"]["fid"] is not None
        assert (out / key / "eval.json").is_file() and (out / f"samples_{key}.png").is_file()
    assert results["results"]["ddpm"]["metrics"]["speed"]["nfe"] == 3
    assert results["results"]["gan"]["metrics"]["speed"]["nfe"] == 1
    real = results["results"]["real"]["sharpness"]
    assert real["laplacian_var_mean"] > 0 and real["n"] == 40
    for name in ("report.md", "samples.png", "trilemma.png"):
        assert (out / name).stat().st_size > 500
    # given runs are taken, not retrained; a run of the wrong kind is a one-line error
    code = main([str(a) for a in args[:-3]] + ["--vae", str(out / "gan"), "--out", str(tmp_path / "vg2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--vae" in err[-1] and "not vae" in err[-1]


def test_vae_vs_gan_continues_an_interrupted_run_instead_of_reusing_it(cache, tmp_path):
    from trilemma.experiments import run_state
    from trilemma.experiments.vae_vs_gan import VaeVsGanConfig, train_missing

    run = tmp_path / "vg" / "vae"
    train_missing("vae", run, VaeVsGanConfig(data="digits", preset="tiny", steps=2), progress=False)
    config = json.loads((run / "config.json").read_text())
    config["train"]["steps"] = 4                       # a checkpoint short of its budget, as Ctrl-C leaves one
    (run / "config.json").write_text(json.dumps(config))
    assert run_state(run) == "interrupted"
    train_missing("vae", run, VaeVsGanConfig(data="digits", preset="tiny", steps=4), progress=False)
    assert json.loads((run / "state" / "trainer.json").read_text())["step"] == 4 and run_state(run) == "finished"
