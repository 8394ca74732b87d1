"""Latent diffusion: the autoencoder's shapes and objective, the scale factor, the patch discriminator, the latent
cache, the ldm run (decoding, determinism, self-containment), exact resume, and both phases end to end from the CLI
on digits and on a generated RGB image folder.

Reconstruction FIDs need a feature network: it is trained once per dataset with a tiny recipe (about a second) in a
temporary TRILEMMA_CACHE, which also holds the latent caches.
"""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers import cli, one_line_error
from PIL import Image, ImageDraw
from safetensors.torch import load_file

import trilemma.autoencoder.cache as cache_mod
from trilemma.autoencoder import (
    Autoencoder,
    AutoencoderObjective,
    autoencoder_terms,
    latent_moments,
    load_autoencoder,
    preset,
    psnr,
)
from trilemma.autoencoder.cache import cached_latents
from trilemma.autoencoder.config import PatchDiscConfig
from trilemma.autoencoder.losses import hinge_d_loss, hinge_g_loss, nonsaturating_d_loss, nonsaturating_g_loss
from trilemma.autoencoder.networks import PatchDiscriminator
from trilemma.autoencoder.train import train_autoencoder
from trilemma.cli.main import main
from trilemma.data import load_dataset
from trilemma.errors import RunError, TrilemmaError
from trilemma.ldm.config import latent_unet_preset
from trilemma.ldm.train import train_ldm
from trilemma.nets.unet import UNet
from trilemma.registry import load_run
from trilemma.run import SampleOptions
from trilemma.vae import gaussian_kl

CPU = dict(device="cpu", log_every=1, checkpoint_every=100)


def tiny_ae(out, steps=4, **kw):
    kw.setdefault("factor", 2)
    return train_autoencoder(out, data=kw.pop("data", "digits"), preset="tiny", steps=steps, batch_size=16, lr=2e-3,
                             progress=False, **{**CPU, **kw.pop("train", {})}, **kw)


@pytest.fixture(scope="module")
def ae_dir(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("latent") / "ae"
    tiny_ae(out, steps=6, recon_fid=True)
    return out


@pytest.fixture(scope="module")
def ldm_dir(ae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("latent") / "ldm"
    train_ldm(out, autoencoder=ae_dir, preset="tiny", steps=3, batch_size=16, progress=False,
              schedule="linear", **CPU)
    return out


# ------------------------------------------------------------------------------------------ networks and maths
@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_encoder_and_decoder_shapes_for_every_factor(size, factor):
    channels = 1 if size == 28 else 3
    if size % factor:                                     # 28 / 8: a one-line error that says what to do
        with pytest.raises(TrilemmaError, match="not divisible by --factor 8.*--image-size 32"):
            preset("tiny", size, channels, factor=factor)
        return
    config = preset("tiny", size, channels, factor=factor, latent_channels=3)
    model = Autoencoder(config)
    x = torch.rand(2, channels, size, size) * 2 - 1
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (2, 3, size // factor, size // factor) == (2, *config.latent_shape)
    assert model.decode(mu).shape == x.shape
    assert config.levels == int(math.log2(factor))


def test_bad_autoencoder_options_are_one_line_errors():
    for kwargs, words in [(dict(factor=3), "--factor: expected 2, 4 or 8"),
                          (dict(latent_channels=0), "latent_channels"),
                          (dict(channel_mults=(1, 2)), "channel_mults")]:
        with pytest.raises(TrilemmaError, match=words):
            preset("tiny", 32, 1, **kwargs)
    with pytest.raises(TrilemmaError, match="--recon-loss"):
        AutoencoderObjective(recon="l3")
    with pytest.raises(TrilemmaError, match="--kl-weight"):
        AutoencoderObjective(kl_weight=-1)


def test_objective_terms_equal_their_formulas():
    torch.manual_seed(0)
    model = Autoencoder(preset("tiny", 8, 1, factor=2))
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    for recon in ("l1", "l2"):
        objective = AutoencoderObjective(recon=recon, kl_weight=0.3)
        terms = autoencoder_terms(model, x, objective, torch.Generator().manual_seed(1))
        mu, logvar = model.encode(x)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(1))
        x_hat = model.decode(mu + torch.exp(0.5 * logvar) * eps)          # the same z = μ + σε
        assert torch.allclose(terms["x_hat"], x_hat, atol=1e-6)
        err = (x_hat - x).abs() if recon == "l1" else (x_hat - x) ** 2
        kl = 0.5 * (mu ** 2 + logvar.exp() - logvar - 1).flatten(1).sum(1)  # KL(q ‖ N(0, I)) summed over the latent
        assert torch.allclose(terms["kl"], kl, rtol=1e-5)
        assert torch.allclose(terms["kl"], gaussian_kl(mu.flatten(1), logvar.flatten(1)))   # the VAE's KL, reused
        assert torch.allclose(terms["loss"], (err.flatten(1).sum(1) + 0.3 * kl) / 64, rtol=1e-5)
        assert terms["loss"].shape == (3,)                                 # per image
    # PSNR: 10 log10(peak² / MSE); a constant error δ on [−1, 1] gives 10 log10(4 / δ²)
    assert torch.allclose(psnr(x, x + 0.1), torch.full((3,), 10 * math.log10(4 / 0.01)).double())
    a = torch.randint(0, 256, (2, 3, 5, 5))
    mse = (a.double() - (a + 3).double()).pow(2).mean()
    assert torch.allclose(psnr(a, a + 3, peak=255.0), torch.full((2,), 10 * math.log10(255 ** 2 / mse.item())).double())


def test_scale_factor_is_one_over_the_std_and_gives_unit_variance():
    g = torch.Generator().manual_seed(0)
    z = 3.7 * torch.randn(1000, 4, 3, 3, generator=g) + 1.5                # (N, c, h, w)
    m = latent_moments(z, batch=128)                                      # streamed over batches
    assert m["std"] == pytest.approx(z.double().std().item(), rel=1e-10)
    assert m["mean"] == pytest.approx(z.double().mean().item(), abs=1e-10)
    assert (z.double() * m["scale_factor"]).std().item() == pytest.approx(1.0, abs=1e-10)
    with pytest.raises(TrilemmaError, match="constant"):
        latent_moments(torch.ones(10, 1, 2, 2))


def test_stored_scale_factor_gives_unit_variance_latents_on_the_training_data(ae_dir):
    config = json.loads((ae_dir / "config.json").read_text())
    s = config["latent"]["scale_factor"]
    run = load_autoencoder(ae_dir, device="cpu")
    train = load_dataset(run.data_config, "train")
    z = torch.cat([run.encode(train.batch(torch.arange(i, min(i + 500, len(train))))[0])
                   for i in range(0, len(train), 500)])                  # z = s · μ(x), encoded afresh
    assert run.scale_factor == s and z.shape == (len(train), *run.latent_shape)
    assert z.double().std().item() == pytest.approx(1.0, abs=1e-5)
    assert config["latent"]["posterior_std_mean"] > 0
    recon = json.loads((ae_dir / "recon.json").read_text())
    assert recon["split"] == "test" and recon["rfid"] > 0 and recon["scale_factor"] == s
    test = load_dataset(run.data_config, "test")                         # PSNR recomputed from its definition
    x_hat = ((run.reconstruct(test.batch(torch.arange(len(test)))[0]) + 1) * 127.5).round().clamp(0, 255)
    mse = (x_hat.double() - test.images.double()).pow(2).flatten(1).mean(1)
    assert recon["psnr_db"] == pytest.approx((10 * torch.log10(255 ** 2 / mse)).mean().item(), rel=1e-9)


def test_patch_discriminator_and_its_losses():
    for size, channels in [(8, 1), (28, 1), (64, 3)]:
        disc = PatchDiscriminator(PatchDiscConfig(channels=channels))
        logits = disc(torch.randn(2, channels, size, size))
        assert logits.shape == (2, 1, size // 4, size // 4)                # one logit per patch
    real = torch.tensor([[[[2.0, 0.5], [-1.0, 1.0]]]])                     # (1, 1, 2, 2)
    fake = torch.tensor([[[[-3.0, 0.0], [0.5, -0.5]]]])
    # hinge: mean relu(1 − l_r) + mean relu(1 + l_f)
    assert hinge_d_loss(real, fake).item() == pytest.approx((0 + 0.5 + 2 + 0) / 4 + (0 + 1 + 1.5 + 0.5) / 4)
    assert hinge_g_loss(fake).item() == pytest.approx(-(-3 + 0 + 0.5 - 0.5) / 4)
    sp = torch.nn.functional.softplus
    assert nonsaturating_d_loss(real, fake).item() == pytest.approx((sp(-real).mean() + sp(fake).mean()).item())
    assert nonsaturating_g_loss(fake).item() == pytest.approx(sp(-fake).mean().item())   # −log σ(l_f)


def test_latent_unet_preset_drops_levels_below_4_pixels():
    c7 = latent_unet_preset("small", 7, 4)                               # pixel preset: 7 → 4 → 2
    assert c7.resolutions == (7, 4) and c7.attn_resolutions == (4,) and c7.in_channels == 4
    assert latent_unet_preset("small", 14, 4).resolutions == (14, 7, 4)
    assert latent_unet_preset("tiny", 4, 2).resolutions == (4,)
    assert latent_unet_preset("base", 8, 4).resolutions == (8, 4)
    x = torch.randn(2, 4, 7, 7)
    assert UNet(c7)(x, torch.tensor([1, 500])).shape == x.shape
    with pytest.raises(TrilemmaError, match="too small"):
        latent_unet_preset("tiny", 2, 4)


# ------------------------------------------------------------------------------------------ the latent cache
def test_latent_cache_is_reused_and_invalidated_when_the_autoencoder_changes(ae_dir, tmp_path, monkeypatch):
    ae = tmp_path / "ae"
    shutil.copytree(ae_dir, ae)
    run = load_autoencoder(ae, device="cpu")
    train = load_dataset(run.data_config, "train")
    first = cached_latents(run, train, progress=False)
    assert first.reused                                                  # phase 1 already encoded the training set
    assert torch.equal(first.latents, cache_mod.encode_dataset(run, train, progress=False))   # and it is μ(x)

    def refuse(*args, **kwargs):
        raise AssertionError("the latents should come from the cache")

    monkeypatch.setattr(cache_mod, "encode_dataset", refuse)
    again = cached_latents(load_autoencoder(ae, device="cpu"), train, progress=False)
    assert again.reused and again.path == first.path and torch.equal(again.latents, first.latents)
    monkeypatch.undo()

    # new weights (as after more training): a new key, the dataset encoded again, with other latents
    from trilemma.utils.io import load_tensors, save_tensors, tensors_metadata
    weights = run.weights_path
    tensors = load_tensors(weights)
    tensors["encoder.conv_in.bias"] = tensors["encoder.conv_in.bias"] + 0.1
    save_tensors(weights, tensors, metadata=tensors_metadata(weights))
    changed = cached_latents(load_autoencoder(ae, device="cpu"), train, progress=False)
    assert not changed.reused and changed.path != first.path
    assert not torch.allclose(changed.latents, first.latents)
    # other data (the test split, or mirrored images) are separate entries
    test = load_dataset(run.data_config, "test")
    assert cache_mod.cache_path(run, test) != cache_mod.cache_path(run, train)
    assert cache_mod.cache_path(run, train, flipped=True) != cache_mod.cache_path(run, train)


# ------------------------------------------------------------------------------------------ the ldm run
def test_ldm_run_samples_reproducibly_with_ddpm_and_ddim(ldm_dir):
    run = load_run(ldm_dir, device="cpu")
    assert run.kind == "ldm" and run.x_shape == run.autoencoder.latent_shape == (4, 4, 4)
    assert not run.diffusion.clip                                       # no [−1, 1] clamp in latent space
    ddim = SampleOptions(sampler="ddim", steps=5)
    a = run.generate(6, seed=3, options=ddim, progress=False)
    b = load_run(ldm_dir, device="cpu").generate(6, seed=3, options=ddim, progress=False)
    assert a.dtype == torch.uint8 and a.shape == (6, 1, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a, run.generate(6, seed=4, options=ddim, progress=False))
    ddpm = SampleOptions(sampler="ddpm", steps=10)
    assert torch.equal(run.generate(3, seed=1, options=ddpm, progress=False),
                       run.generate(3, seed=1, options=ddpm, progress=False))
    assert run.nfe(ddim) == 5 and run.nfe(ddpm) == 10
    # the decoder turns the sampler's z_0 into the images: decode(x_T) == D(x_T / s)
    z = torch.randn(2, *run.x_shape)
    expected = run.autoencoder.model.decode(z / run.autoencoder.scale_factor).clamp(-1, 1)
    assert torch.allclose(run.decode(z), expected)


def test_ldm_run_is_self_contained_and_detects_a_swapped_autoencoder(ae_dir, tmp_path):
    ae, copy = tmp_path / "ae", tmp_path / "ldm"
    shutil.copytree(ae_dir, ae)
    train_ldm(copy, autoencoder=ae, preset="tiny", steps=1, batch_size=8, progress=False, **CPU)
    shutil.rmtree(ae)                                                    # the original autoencoder may disappear
    assert load_run(copy, device="cpu").generate(2, options=SampleOptions(steps=2), progress=False).shape[0] == 2
    config = json.loads((copy / "config.json").read_text())
    ae_config = json.loads((ae_dir / "config.json").read_text())
    assert config["autoencoder"]["scale_factor"] == ae_config["latent"]["scale_factor"]
    weights = copy / "autoencoder" / config["autoencoder"]["weights"]
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")
    with pytest.raises(RunError, match="SHA-256"):
        load_run(copy, device="cpu")


def test_resume_is_exact_with_and_without_the_discriminator(cache, tmp_path):
    def losses(path):
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("images_per_s", "elapsed_s")} for r in rows]

    for name, kw in [("plain", {}), ("disc", dict(disc_weight=0.5, disc_start=2))]:
        straight, split = tmp_path / f"{name}-straight", tmp_path / f"{name}-split"
        tiny_ae(straight, 5, evaluate=False, **kw)
        tiny_ae(split, 3, evaluate=False, **kw)
        train_autoencoder(split, steps=5, resume=True, progress=False, evaluate=False)
        assert losses(split) == losses(straight)
        stems = ("model", "ema") + (("disc",) if kw else ())
        for stem in stems:
            sa, sb = load_file(straight / f"{stem}.safetensors"), load_file(split / f"{stem}.safetensors")
            assert all(torch.equal(sa[k], sb[k]) for k in sa), (name, stem)
    rows = losses(tmp_path / "disc-straight")
    assert "loss_d" not in rows[1] and "loss_d" in rows[2]              # D joins at --disc-start 2


def test_a_resumed_autoencoder_is_measured_with_its_stored_evaluation_options(cache, tmp_path, capsys):
    out = tmp_path / "ae"
    args = ("train", "autoencoder", "--out", out, "--quiet")
    code, _, err = cli(capsys, *args, "--data", "digits", "--factor", 2, "--preset", "tiny", "--batch-size", 8,
                       "--steps", 2, "--no-recon-fid", "--eval-n", 20)
    assert code == 0, err
    config, recon = (lambda: json.loads((out / "config.json").read_text())), \
        (lambda: json.loads((out / "recon.json").read_text()))
    assert config()["evaluation"] == {"eval_n": 20, "recon_fid": False} and recon()["n"] == 20
    code, _, err = cli(capsys, *args, "--resume", "--steps", 3)                 # as asked when it was made
    assert code == 0, err
    assert recon()["step"] == 3 and recon()["n"] == 20 and recon()["rfid"] is None
    code, _, err = cli(capsys, *args, "--resume", "--steps", 4, "--eval-n", 30)  # given again: replaces it
    assert code == 0, err
    assert recon()["step"] == 4 and recon()["n"] == 30 and config()["evaluation"]["eval_n"] == 30
    edited = config()
    edited["evaluation"]["eval_n"] = "all"
    (out / "config.json").write_text(json.dumps(edited))
    code, _, err = cli(capsys, *args, "--resume", "--steps", 5)
    assert code != 0
    one_line_error(err, "config.json", "eval_n")
    assert json.loads((out / "state" / "trainer.json").read_text())["step"] == 4     # refused before training


# ------------------------------------------------------------------------------------------ CLI, end to end
def test_two_phases_end_to_end_from_the_cli(cache, tmp_path, capsys):
    ae, ldm = tmp_path / "ae", tmp_path / "ldm"
    code, _, err = cli(capsys, "train", "autoencoder", "--data", "digits", "--factor", 2, "--preset", "tiny",
                       "--steps", 3, "--batch-size", 16, "--out", ae, "--quiet")
    assert code == 0, err
    assert "test PSNR" in err and "reconstruction FID" in err and "scale factor" in err
    assert (ae / "recon.json").is_file() and (ae / "samples" / "reconstructions.png").is_file()
    code, _, err = cli(capsys, "train", "ldm", "--autoencoder", ae, "--preset", "tiny", "--steps", 3,
                       "--batch-size", 16, "--T", 100, "--out", ldm, "--quiet")
    assert code == 0, err
    names = {p.name for p in ldm.iterdir()}
    assert {"config.json", "model.safetensors", "ema.safetensors", "autoencoder", "samples"} <= names
    code, _, err = cli(capsys, "train", "ldm", "--out", ldm, "--resume", "--steps", 4, "--quiet")
    assert code == 0 and "trained 4 steps" in err, err
    for sampler in ("ddpm", "ddim"):
        npz = tmp_path / f"{sampler}.npz"
        code, _, err = cli(capsys, "sample", ldm, "--n", 4, "--sampler", sampler, "--steps", 5, "--seed", 2,
                           "--out", tmp_path / f"{sampler}.png", "--npz", npz, "--quiet")
        assert code == 0, err
        assert np.load(npz)["images"].shape == (4, 8, 8, 1)
    cli(capsys, "sample", ldm, "--n", 4, "--sampler", "ddim", "--steps", 5, "--seed", 2,
        "--out", tmp_path / "again.png", "--npz", tmp_path / "again.npz", "--quiet")
    assert np.array_equal(np.load(tmp_path / "again.npz")["images"], np.load(tmp_path / "ddim.npz")["images"])
    code, out, err = cli(capsys, "eval", ldm, "--n", 20, "--steps", 3, "--batch-size", 10, "--json",
                         tmp_path / "eval.json", "--quiet")
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["source"]["run_kind"] == "ldm" and result["quality"]["fid"] is not None
    for args in (["show", "forward", "--autoencoder", ae, "--T", 100, "--out", tmp_path / "f.png"],
                 ["show", "forward", "--autoencoder", ldm, "--T", 100, "--n", 2, "--out", tmp_path / "f2.png"],
                 ["show", "trajectory", ldm, "--steps", 5, "--n", 2, "--out", tmp_path / "t.png"]):
        code, _, err = cli(capsys, *args)
        assert code == 0, err
        assert Image.open(args[-1]).size[0] > 50

    # one-line errors for bad input
    ddpm = tmp_path / "ddpm"
    assert main(["train", "ddpm", "--data", "digits", "--preset", "tiny", "--steps", "1", "--batch-size", "8",
                 "--out", str(ddpm), "--quiet"]) == 0
    capsys.readouterr()
    code, _, err = cli(capsys, "train", "ldm", "--autoencoder", ddpm, "--steps", 1, "--out", tmp_path / "x")
    assert code == 2
    one_line_error(err, "not an autoencoder run")
    code, _, err = cli(capsys, "train", "ldm", "--steps", 1, "--out", tmp_path / "x")
    one_line_error(err, "--autoencoder")
    code, _, err = cli(capsys, "train", "ldm", "--autoencoder", ae, "--data", "digits", "--image-size", 16,
                       "--steps", 1, "--out", tmp_path / "x")
    one_line_error(err, "--image-size 8")
    code, _, err = cli(capsys, "train", "autoencoder", "--data", "digits", "--image-size", 12, "--factor", 8,
                       "--steps", 1, "--out", tmp_path / "y")
    one_line_error(err, "not divisible by --factor 8")
    code, _, err = cli(capsys, "train", "autoencoder", "--factor", 3, "--steps", 1, "--out", tmp_path / "y")
    assert code == 2
    one_line_error(err, "--factor")
    code, _, err = cli(capsys, "train", "ldm", "--autoencoder", ae, "--factor", 4, "--out", tmp_path / "y")
    assert code == 2                                                     # ldm takes no --factor


def shapes_folder(root, n=150, size=20):
    """Coloured rectangles and ellipses on gradient backgrounds, as RGB PNGs."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size] / size
        base = rng.uniform(0, 255, 3)
        img = np.clip(base[None, None] * (0.5 + 0.5 * (xx if i % 2 else yy))[..., None], 0, 255).astype(np.uint8)
        pic = Image.fromarray(img)
        draw = ImageDraw.Draw(pic)
        a, b = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
        box = [int(a[0]), int(b[0]), int(a[1]) + 2, int(b[1]) + 2]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if i % 3 else draw.rectangle)(box, fill=colour)
        pic.save(root / f"{i:03d}.png")
    return root


def test_both_phases_on_an_rgb_image_folder(cache, tmp_path, capsys):
    folder = shapes_folder(tmp_path / "shapes")
    ae, ldm = tmp_path / "ae", tmp_path / "ldm"
    code, _, err = cli(capsys, "train", "autoencoder", "--data", folder, "--image-size", 16, "--channels", 3,
                       "--factor", 4, "--latent-channels", 3, "--preset", "tiny", "--steps", 3, "--batch-size", 8,
                       "--out", ae, "--quiet")
    assert code == 0, err
    assert json.loads((ae / "recon.json").read_text())["rfid"] is not None      # rotation feature network
    code, _, err = cli(capsys, "train", "ldm", "--autoencoder", ae, "--hflip", "--preset", "tiny", "--steps", 2,
                       "--batch-size", 8, "--T", 50, "--out", ldm, "--quiet")
    assert code == 0, err
    code, _, err = cli(capsys, "sample", ldm, "--n", 3, "--steps", 4, "--npz", tmp_path / "s.npz",
                       "--out", tmp_path / "s.png", "--quiet")
    assert code == 0, err
    assert np.load(tmp_path / "s.npz")["images"].shape == (3, 16, 16, 3)
    assert len(list((cache / "latents").glob("shapes-train-flipped-*.safetensors"))) == 1   # --hflip: mirrored latents


def test_training_latents_are_scaled_and_hflip_draws_the_mirrors_latent(ae_dir):
    from trilemma.autoencoder.cache import TrainingLatents

    ae = load_autoencoder(ae_dir, device="cpu")
    dataset = load_dataset(ae.data_config, "train")
    indices = torch.arange(40)
    plain = TrainingLatents(ae, dataset, hflip=False, progress=False)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(plain.batch(indices, g), plain.latents[indices] * ae.scale_factor)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(3).get_state())    # no draw without --hflip
    flipping = TrainingLatents(ae, dataset, hflip=True, progress=False)
    with torch.no_grad():
        mirrored = ae.posterior_mean(dataset.batch(indices)[0].flip(-1)).float()
    assert torch.allclose(flipping.flipped[indices], mirrored, atol=1e-5)
    z = flipping.batch(indices, torch.Generator().manual_seed(3))
    flip = torch.rand(40, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0 < flip.sum() < 40
    expected = torch.where(flip[:, None, None, None], mirrored, plain.latents[indices]) * ae.scale_factor
    assert torch.allclose(z, expected, atol=1e-5)
