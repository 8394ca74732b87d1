"""`trilemma train ddgan` on the shared loop, the DDGAN run class, exact resume, and the CLI (docs/methods.md §11)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli, one_line_error

from trilemma.cli.main import main
from trilemma.ddgan import DDGANConfig, DDGANDiscriminator, ddgan_schedule, preset
from trilemma.ddgan.networks import DDGANGenerator
from trilemma.ddgan.run import DDGANRun
from trilemma.ddgan.losses import discriminator_terms, generator_terms
from trilemma.ddgan.train import ddgan_iteration, train_ddgan
from trilemma.gan.train import train_gan
from trilemma.registry import load_run
from trilemma.run import SampleOptions
from trilemma.utils.io import load_tensors, tensors_metadata


def rows(run):
    return [{k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "elapsed_s")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def tiny(out, steps, **kw):
    return train_ddgan(out, data="digits", preset="tiny", steps=steps, batch_size=16, progress=False,
                       **{"log_every": 1, "checkpoint_every": 3, "device": "cpu", **kw})


def assert_same_run(a, b):
    """Two run folders logged the same rows and hold bit-equal G, D and EMA weights."""
    assert rows(a) == rows(b)
    for name in ("model", "disc", "ema"):
        wa, wb = load_tensors(a / f"{name}.safetensors"), load_tensors(b / f"{name}.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[key], wb[key]) for key in wa)


def resumed_like_straight(tmp_path, **kw) -> dict:
    """4 tiny steps in one go ("straight") and 2 + 2 with a resume ("split") under options ``kw``: the two
    runs must be bit-equal; returns the split run's config.json."""
    tiny(tmp_path / "straight", 4, **kw)
    tiny(tmp_path / "split", 2, **kw)
    train_ddgan(tmp_path / "split", steps=4, resume=True, progress=False)
    assert_same_run(tmp_path / "split", tmp_path / "straight")
    return json.loads((tmp_path / "split" / "config.json").read_text())


def optimizer_groups(run):
    meta = json.loads(tensors_metadata(run / "state" / "optim.safetensors")["meta"])
    return {name: m["param_groups"][0] for name, m in meta.items()}


def fresh_game(cfg):
    """The tiny G (read as ``cfg.prediction`` says) and D at 8×8, seeded, with Adam at lr 1e-3 and cfg's betas."""
    from trilemma.ddgan import make_generator

    net = preset("tiny", 8, 1)
    torch.manual_seed(0)
    G, D = make_generator(net, cfg.z_dim, cfg), DDGANDiscriminator(net)
    return (G, D, torch.optim.Adam(G.parameters(), lr=1e-3, betas=(cfg.beta1, cfg.beta2)),
            torch.optim.Adam(D.parameters(), lr=1e-3, betas=(cfg.beta1, cfg.beta2)))


# ------------------------------------------------------------------------------------------ one iteration
def test_one_iteration_updates_D_then_G_with_D_frozen():
    torch.manual_seed(0)
    cfg = DDGANConfig(T=4, z_dim=8, r1_gamma=0.5)
    net = preset("tiny", 8, 1)
    G, D, schedule = DDGANGenerator(net, cfg.z_dim), DDGANDiscriminator(net), ddgan_schedule(cfg)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(cfg.beta1, cfg.beta2))
    g0 = [p.detach().clone() for p in G.parameters()]
    d0 = [p.detach().clone() for p in D.parameters()]
    seen = {}

    real_step = opt_d.step

    def d_step(*a, **k):                                   # G's weights when D steps: not yet changed
        seen["g_unchanged_at_d_step"] = all(torch.equal(a_, b_) for a_, b_ in zip(g0, G.parameters()))
        out = real_step(*a, **k)
        seen["d_after"] = [p.detach().clone() for p in D.parameters()]
        return out

    opt_d.step = d_step
    x_0 = torch.rand(6, 1, 8, 8) * 2 - 1
    terms = ddgan_iteration(G, D, opt_g, opt_d, schedule, x_0, cfg, torch.Generator().manual_seed(1))
    assert seen["g_unchanged_at_d_step"]
    # D moved in its step and not again in G's (frozen), and its requires_grad is restored
    assert any(not torch.equal(a, b) for a, b in zip(d0, seen["d_after"]))
    assert all(torch.equal(a, b) for a, b in zip(seen["d_after"], D.parameters()))
    assert all(p.requires_grad for p in D.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    assert terms["r1"] > 0 and 0 < terms["d_real"] < 1 and 0 < terms["d_fake"] < 1
    # the loss is −log D(fake) at the G step: softplus(−logit) ≥ 0; D's non-saturating loss near 2·log 2 at init
    assert terms["loss_g"] > 0 and abs(float(terms["loss_d"]) - 2 * torch.log(torch.tensor(2.0))) < 0.5


def test_d_steps_makes_that_many_D_updates_on_fresh_pairs_then_one_G_update():
    """--d-steps 2: bit-equal to two hand-made D updates (R1 by the lazy schedule) and then one G update
    (whose reconstruction weight is --rec-weight faded to the budget spent, ``progress``, and whose
    diversity term is --div-weight's)."""
    cfg = DDGANConfig(T=4, z_dim=8, r1_gamma=0.5, lazy_reg=2, d_steps=2, rec_weight=0.4, div_weight=0.5, div_cap=0.3)
    schedule, x_0 = ddgan_schedule(cfg), torch.rand(6, 1, 8, 8) * 2 - 1
    fresh = lambda: fresh_game(cfg)
    G, D, opt_g, opt_d = fresh()
    terms = ddgan_iteration(G, D, opt_g, opt_d, schedule, x_0, cfg, torch.Generator().manual_seed(1), progress=0.3)

    G2, D2, opt_g2, opt_d2 = fresh()
    noise = torch.Generator().manual_seed(1)
    d_real = []
    for gamma in (0.5, 0.0):                               # lazy_reg 2: R1 on the first D update only
        d_terms = discriminator_terms(G2, D2, schedule, x_0, cfg.z_dim, gamma, noise)
        opt_d2.zero_grad(set_to_none=True)
        d_terms["loss"].mean().backward()
        opt_d2.step()
        d_real.append(d_terms["d_real"].mean())
    D2.requires_grad_(False)
    g_terms = generator_terms(G2, D2, schedule, x_0, cfg.z_dim, noise, rec_weight=cfg.rec_weight_at(0.3),
                              div_weight=0.5, div_cap=0.3)
    opt_g2.zero_grad(set_to_none=True)
    g_terms["loss"].mean().backward()
    opt_g2.step()

    assert all(torch.equal(a, b) for a, b in zip(D.parameters(), D2.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(G.parameters(), G2.parameters()))
    assert opt_d.state[next(iter(D.parameters()))]["step"] == 2 and float(terms["r1"]) == 0.0   # last update's
    assert torch.equal(terms["d_real"], d_real[1]) and not torch.equal(d_real[0], d_real[1])
    assert torch.equal(terms["rec"], g_terms["rec"].mean()) and 0.3 < cfg.rec_weight_at(0.3) < 0.4
    assert torch.equal(terms["div"], g_terms["div"].mean())    # 0 here: G's zero-initialised output ignores z


# ------------------------------------------------------------------------------------------ training
def test_run_folder_samples_with_T_network_calls_and_is_loaded_by_load_run(tmp_path):
    tiny(tmp_path / "dd", 3, T=2, sample_every=3)
    run = tmp_path / "dd"
    for name in ("config.json", "model.safetensors", "disc.safetensors", "ema.safetensors", "metrics.jsonl",
                 "loss.png", "samples/step_0000003.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "ddgan" and config["ddgan"]["T"] == 2 and "ema_decay" not in config["ddgan"]
    assert config["train"]["ema_decay"] == 0.999 and config["train"]["lr"] == 1.6e-4
    assert config["train"]["warmup_steps"] == 0 and config["train"]["grad_clip"] == 0.0
    r = load_run(run, device="cpu")
    assert isinstance(r, DDGANRun) and r.reports_steps
    options = SampleOptions(sampler="dpmpp-2m", steps=10)          # sampler options are ignored
    assert r.nfe(options) == 2 and r.nfe(SampleOptions()) == 2 and r.describe(options) == "DDGAN 2 steps"
    # the EMA weights are the ones loaded
    ema = load_tensors(run / "ema.safetensors")
    assert all(torch.equal(ema[k], v) for k, v in r.G.state_dict().items())
    calls = []
    a = r.generate(5, seed=3, progress=False)
    b = r.sample_batch(5, r.generator(3), SampleOptions(), callback=lambda t, x, x0: calls.append(t))
    assert a.dtype == torch.uint8 and a.shape == (5, 1, 8, 8)
    assert torch.equal(a, r.generate(5, seed=3, progress=False)) and calls == [2, 1]
    x_0, traj = r.sample_batch(5, r.generator(3), SampleOptions(), return_trajectory=True)
    assert torch.equal(x_0, b) and traj["t"] == [2, 1] and len(traj["x_t"]) == 3 and len(traj["x0_hat"]) == 2
    assert torch.equal(traj["x_t"][-1], x_0) and torch.equal(traj["x0_hat"][-1], x_0)   # t = 1: x_0 = x̂₀
    assert isinstance(r.discriminator(), DDGANDiscriminator)


def bench(script: str, *args) -> subprocess.CompletedProcess:
    """Run ``bench/SCRIPT`` with ``args`` in a fresh interpreter, capturing its output."""
    path = Path(__file__).resolve().parents[1] / "bench" / script
    return subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_bench_fresh_discriminator_scores_the_runs_D_and_a_fresh_one_per_t(tmp_path):
    """bench/ddgan_fresh_d.py: a fresh D trained against a barely trained G tells its t = 1 pairs apart."""
    tiny(tmp_path / "dd", 2, T=2)
    done = bench("ddgan_fresh_d.py", tmp_path / "dd", "--updates", "60", "--batch-size", "16", "--eval-batches", "4",
                 "--json", tmp_path / "fresh.json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "fresh.json").read_text())
    assert set(result["trained"]) == set(result["fresh"]) == {"1", "2"} and result["updates"] == 60
    assert all(0 <= v <= 1 for d in (result["trained"], result["fresh"]) for v in d.values())
    assert result["fresh"]["1"] > 0.75 and "| fresh, 60 updates |" in done.stdout
    # the spread of x̂₀ over z at fixed x_t: a freshly trained G still uses z; every variance is finite
    assert set(result["z_spread"]) == {"1", "2"} and result["data_var"] > 0
    assert all(v["over_z"] > 0 and v["over_x_t"] > 0 for v in result["z_spread"].values())
    assert "| over z (16 draws), fixed x_t |" in done.stdout


def test_bench_recall_sources_splits_evals_recall(tmp_path):
    """bench/recall_sources.py: eval's precision and recall per run, the recall split into parts that add up."""
    tiny(tmp_path / "dd", 2, T=2)
    done = bench("recall_sources.py", tmp_path / "dd", "--n", "64", "--batch-size", "32", "--floor", "--per-class",
                 "--json", tmp_path / "rs.json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "rs.json").read_text())["rows"]
    assert list(rows) == [str(tmp_path / "dd"), "64 training images", "64 training images, last two classes dropped"]
    for r in rows.values():
        assert r["recall_from_inliers"] + r["recall_from_outliers_only"] == pytest.approx(r["recall"])
        assert r["outlier_share"] == pytest.approx(1 - r["precision"])
    floor, dropped = rows["64 training images"], rows["64 training images, last two classes dropped"]
    assert floor["recall"] > rows[str(tmp_path / "dd")]["recall"] + 0.5       # 2 steps: collapsed, recall ≈ 0
    assert dropped["recall"] < floor["recall"]                                # two modes fewer
    # per class: no samples of the dropped classes 8 and 9, so no recall on their test images past chance
    assert len(dropped["per_class"]["sample_share"]) == 10
    assert sum(floor["per_class"]["sample_share"]) == pytest.approx(1)
    assert dropped["per_class"]["sample_share"][8] < 0.05 and dropped["per_class"]["recall"][8] < 0.2
    assert "| recall on its test images |" in done.stdout
    assert "| row | precision ↑ | recall ↑ |" in done.stdout
    # the runs must share a dataset: a one-line error, no traceback
    other = tmp_path / "other"
    train_ddgan(other, data="mnist-5k", preset="tiny", steps=1, batch_size=4, T=2, progress=False, device="cpu")
    bad = bench("recall_sources.py", tmp_path / "dd", other, "--n", "8")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith(f"recall_sources: {other}: trained on mnist-5k")

def test_bench_ddgan_steps_scores_the_chain_from_each_real_x_k_and_the_spread_ratio(tmp_path):
    """bench/ddgan_steps.py: x₀ itself scores as the floor, every chain start is scored, r_t per step; a
    non-DDGAN run is a one-line error."""
    tiny(tmp_path / "dd", 2, T=2)
    done = bench("ddgan_steps.py", tmp_path / "dd", "--n", "64", "--batch-size", "32", "--json", tmp_path / "st.json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "st.json").read_text())
    assert list(result["rows"]) == ["x₀ itself", "from real x_2", "from real x_1"]
    floor = result["rows"]["x₀ itself"]
    assert floor["fid"] < min(r["fid"] for name, r in result["rows"].items() if name != "x₀ itself")
    assert floor["recall"] > 0.5 and set(result["spread_ratio"]) == {"1", "2"}
    assert all(0 <= v < 10 for v in result["spread_ratio"].values())
    assert "| from real x_1 |" in done.stdout and "t = 2" in done.stdout
    train_gan(tmp_path / "gan", data="digits", preset="tiny", steps=1, batch_size=4, progress=False, device="cpu")
    bad = bench("ddgan_steps.py", tmp_path / "gan", "--n", "16")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == f"ddgan_steps: {tmp_path / 'gan'}: a gan run, not a DDGAN run"


def test_d_learning_rate_follows_the_schedule_at_its_own_ratio(tmp_path):
    tiny(tmp_path / "dd", 2, warmup_steps=4, lr=2e-4, lr_d=1e-4)
    groups = optimizer_groups(tmp_path / "dd")
    # the last step (index 1) ran at 2/4 of the warm-up: G 2e-4 · 0.5, D 1e-4 · 0.5
    assert groups["opt_g"]["lr"] == pytest.approx(1e-4) and groups["opt_d"]["lr"] == pytest.approx(5e-5)
    assert groups["opt_d"]["lr_scale"] == pytest.approx(0.5) and groups["opt_d"]["betas"] == [0.5, 0.9]
    assert [row["lr"] for row in rows(tmp_path / "dd")] == pytest.approx([5e-5, 1e-4])   # logged: G's


def test_resume_is_exact_and_lazy_r1_stays_in_phase(tmp_path):
    kw = {"lazy_reg": 2, "warmup_steps": 2, "r1_gamma": 1.0}
    tiny(tmp_path / "straight", 6, **kw)
    tiny(tmp_path / "split", 3, **kw)
    train_ddgan(tmp_path / "split", steps=6, resume=True, progress=False)
    assert_same_run(tmp_path / "split", tmp_path / "straight")
    r1 = [row["r1"] for row in rows(tmp_path / "split")]
    assert all(v > 0 for v in r1[0::2]) and all(v == 0 for v in r1[1::2])     # R1 on D steps 0, 2, 4 only
    optim = load_tensors(tmp_path / "split" / "state" / "optim.safetensors")
    assert {int(v) for k, v in optim.items() if k.endswith(".step")} == {6}   # one D and one G update a step
    assert {"loss_d", "loss_g", "r1", "d_real", "d_fake"} <= set(rows(tmp_path / "split")[-1])


def test_relativistic_pairing_run_resumes_exactly_and_is_recorded(tmp_path):
    assert resumed_like_straight(tmp_path, loss="rp", d_steps=2)["ddgan"]["loss"] == "rp"
    tiny(tmp_path / "ns", 4, d_steps=2)                        # the paper's costs give another run
    assert rows(tmp_path / "ns") != rows(tmp_path / "straight")


def test_diversity_term_run_resumes_exactly_logs_its_ratio_and_is_recorded(tmp_path):
    kw = {"div_weight": 1.0, "div_cap": 0.2}
    ddgan = resumed_like_straight(tmp_path, **kw)["ddgan"]
    assert (ddgan["div_weight"], ddgan["div_cap"]) == (1.0, 0.2)
    assert all(row["div"] > 0 for row in rows(tmp_path / "straight")[1:])   # once G's output has left 0
    tiny(tmp_path / "plain", 4)                                # off (the paper's): ratio not computed, logged as 0
    assert all(row["div"] == 0 for row in rows(tmp_path / "plain"))


def test_energy_score_run_resumes_exactly_logs_its_score_and_is_recorded(tmp_path):
    assert resumed_like_straight(tmp_path, es_weight=0.5)["ddgan"]["es_weight"] == 0.5
    assert all(row["es"] > 0 for row in rows(tmp_path / "straight"))
    tiny(tmp_path / "plain", 2)                                # off (the paper's): not computed, logged as 0
    assert all(row["es"] == 0 for row in rows(tmp_path / "plain"))


def test_t_weights_run_resumes_exactly_and_is_recorded(tmp_path):
    assert resumed_like_straight(tmp_path, t_weights=(3.0, 2.0, 2.0, 1.0))["ddgan"]["t_weights"] == [3.0, 2.0, 2.0, 1.0]
    tiny(tmp_path / "uniform", 4)                              # the paper's uniform draw gives another run
    assert rows(tmp_path / "uniform") != rows(tmp_path / "straight")


def test_map_of_w_run_resumes_exactly_is_recorded_and_samples(tmp_path):
    assert resumed_like_straight(tmp_path, z_spatial=True)["model"]["z_spatial"] is True
    r = load_run(tmp_path / "split", device="cpu")
    assert r.G.z_spatial is not None
    a, b = (r.generate(4, seed=s) for s in (0, 0))
    assert torch.equal(a, b) and a.shape[0] == 4


def test_spatial_noise_maps_run_resumes_exactly_is_recorded_and_samples(tmp_path):
    assert resumed_like_straight(tmp_path, z_maps=1)["model"]["z_maps"] == 1
    r = load_run(tmp_path / "split", device="cpu")
    assert r.G.z_numel == r.ddgan.z_dim + r.net_config.image_size ** 2
    a, b = (r.generate(4, seed=s) for s in (0, 0))
    assert torch.equal(a, b) and a.shape[0] == 4                                      # reproducible by the seed
    tiny(tmp_path / "plain", 4)                                                       # off: another run
    assert rows(tmp_path / "plain") != rows(tmp_path / "straight")


def test_d_uncond_run_resumes_exactly_and_is_recorded(tmp_path):
    assert resumed_like_straight(tmp_path, d_uncond=0.5)["ddgan"]["d_uncond"] == 0.5
    tiny(tmp_path / "plain", 4)                                                       # off: another run
    assert rows(tmp_path / "plain") != rows(tmp_path / "straight")


def test_d_updates_are_counted_on_the_host_and_old_runs_resume_in_phase(tmp_path):
    """D's update count lives in its parameter group (no read of Adam's step tensor, which a GPU would wait
    for); a run saved before that key (here: the key removed) takes it from Adam's counter once, in phase."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    kw = {"lazy_reg": 4, "r1_gamma": 1.0, "d_steps": 2}                    # the resume starts mid-phase (6 % 4)
    tiny(tmp_path / "straight", 6, **kw)
    tiny(tmp_path / "old", 3, **kw)
    assert optimizer_groups(tmp_path / "old")["opt_d"]["d_updates"] == 6      # 3 iterations × 2 D updates
    path = tmp_path / "old" / "state" / "optim.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    meta = json.loads(metadata["meta"])
    del meta["opt_d"]["param_groups"][0]["d_updates"]
    save_file(tensors, str(path), metadata={**metadata, "meta": json.dumps(meta)})
    train_ddgan(tmp_path / "old", steps=6, resume=True, progress=False)
    assert_same_run(tmp_path / "old", tmp_path / "straight")
    assert optimizer_groups(tmp_path / "old")["opt_d"]["d_updates"] == 12


def test_dcgan_sized_networks_train_resume_exactly_and_load_for_sampling(tmp_path, capsys):
    """--arch dcgan: the DCGAN-sized G and D in the same game, recorded in config.json, exact resume, sampling."""
    from trilemma.ddgan import DCGANDiscriminator, DCGANGenerator

    tiny(tmp_path / "straight", 4, arch="dcgan", d_steps=2)
    tiny(tmp_path / "split", 2, arch="dcgan", d_steps=2)
    train_ddgan(tmp_path / "split", steps=4, resume=True, progress=False)
    assert_same_run(tmp_path / "split", tmp_path / "straight")
    config = json.loads((tmp_path / "split" / "config.json").read_text())
    assert config["model"]["arch"] == "dcgan"
    r = load_run(tmp_path / "split", device="cpu")
    assert isinstance(r.G, DCGANGenerator) and isinstance(r.discriminator(), DCGANDiscriminator)
    assert r.generate(3, seed=0, progress=False).shape == (3, 1, 8, 8)
    # a size the DCGAN geometry cannot build is refused before a folder is made
    code, _, err = cli(capsys, "train", "ddgan", "--data", "digits", "--image-size", "18", "--arch", "dcgan",
                       "--steps", "1", "--out", tmp_path / "bad")
    assert code == 2 and not (tmp_path / "bad").exists()
    one_line_error(err, "--arch dcgan", "18×18")


# ------------------------------------------------------------- v-prediction and the regression pretraining
@pytest.mark.parametrize("arch", ["unet", "dcgan"])
def test_v_prediction_turns_the_output_into_x0_on_the_schedule(arch):
    """--prediction v: x̂₀ = √ᾱ_t x_t − √(1 − ᾱ_t) v̂, so the true v = √ᾱ ε − √(1 − ᾱ) x₀ gives x̂₀ = x₀
    exactly; the (√ᾱ, √(1 − ᾱ)) table is not part of the weights."""
    from trilemma.ddgan import make_generator
    from trilemma.ddgan.diffusion import _at

    cfg = DDGANConfig(T=4, z_dim=8, prediction="v")
    net = preset("tiny", 8, 1, arch=arch)
    schedule = ddgan_schedule(cfg)
    torch.manual_seed(0)
    G = make_generator(net, cfg.z_dim, cfg)
    assert "v_coefficients" not in G.state_dict()
    x_0, eps, t = torch.rand(5, 1, 8, 8) * 2 - 1, torch.randn(5, 1, 8, 8), torch.tensor([1, 2, 3, 4, 2])
    a, s = _at(schedule, "sqrt_alpha_bar", t, x_0), _at(schedule, "sqrt_one_minus_alpha_bar", t, x_0)
    x_t, v = a * x_0 + s * eps, a * eps - s * x_0
    torch.testing.assert_close(G.x0_from_output(v, x_t, t), x_0, atol=1e-5, rtol=0)
    # an untrained output of 0 answers √ᾱ_t x_t; and the whole network follows the formula on its own output
    torch.testing.assert_close(G.x0_from_output(torch.zeros_like(x_t), x_t, t), a * x_t)
    z = torch.randn(5, 8)
    plain = make_generator(net, cfg.z_dim)                    # the same weights read as x̂₀ (tanh: pixels)
    plain.load_state_dict(G.state_dict())
    raw = torch.atanh(plain(x_t, z, t).clamp(-1 + 1e-6, 1 - 1e-6).double()).float()
    torch.testing.assert_close(G(x_t, z, t), a * x_t - s * raw, atol=1e-4, rtol=1e-4)


def test_pretrain_regresses_G_alone_then_plays_the_game(tmp_path, monkeypatch):
    """--pretrain p: while the budget spent is below p, a step is one G update on mean (x̂₀ − x₀)² (D idle,
    bit-equal to the hand-made update); after it, the game. Resume across the switch is exact."""
    from trilemma.ddgan.diffusion import q_sample_pairs, randn, sample_t
    from trilemma.ddgan.losses import regression_terms

    cfg = DDGANConfig(T=4, z_dim=8, pretrain=0.5, prediction="v")
    schedule, x_0 = ddgan_schedule(cfg), torch.rand(6, 1, 8, 8) * 2 - 1
    fresh = lambda: fresh_game(cfg)
    G, D, opt_g, opt_d = fresh()
    assert G.v_coefficients is not None
    d0 = [p.detach().clone() for p in D.parameters()]
    terms = ddgan_iteration(G, D, opt_g, opt_d, schedule, x_0, cfg, torch.Generator().manual_seed(1), progress=0.4)
    assert all(torch.equal(a, b) for a, b in zip(d0, D.parameters())) and not opt_d.state
    assert float(terms["loss_d"]) == 0.0 and float(terms["d_real"]) == 0.0
    G2, _, opt_g2, _ = fresh()
    noise = torch.Generator().manual_seed(1)
    ref = regression_terms(G2, schedule, x_0, cfg.z_dim, noise)
    opt_g2.zero_grad()
    ref["loss"].mean().backward()
    opt_g2.step()
    assert all(torch.equal(a, b) for a, b in zip(G.parameters(), G2.parameters()))
    assert torch.equal(terms["loss_g"], ref["loss"].mean().detach()) and ref["t"].shape == (6,)
    # the loss is the mean squared error of x̂₀ (recomputed with the same draws)
    noise = torch.Generator().manual_seed(1)
    G3, _, _, _ = fresh()
    again = regression_terms(G3, schedule, x_0, cfg.z_dim, noise)
    noise = torch.Generator().manual_seed(1)
    t = sample_t(6, 4, "cpu", noise)
    _, x_t = q_sample_pairs(schedule, x_0, t, noise)
    x0_hat = G3(x_t, randn((6, 8), x_0, noise), t)
    torch.testing.assert_close(again["loss"], (x0_hat - x_0).square().flatten(1).mean(1))
    # past the switch, the game: D moves
    ddgan_iteration(G, D, opt_g, opt_d, schedule, x_0, cfg, torch.Generator().manual_seed(2), progress=0.5)
    assert any(not torch.equal(a, b) for a, b in zip(d0, D.parameters()))

    kw = {"pretrain": 0.5, "prediction": "v"}               # 6 steps: 3 of regression, then 3 of the game
    tiny(tmp_path / "straight", 6, **kw)
    import os
    import signal

    import trilemma.ddgan.train as module

    calls, real = {"n": 0}, module.ddgan_iteration

    def ctrl_c_in_step_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "ddgan_iteration", ctrl_c_in_step_2)
    assert tiny(tmp_path / "split", 6, **kw).step == 2      # stopped inside the pretraining …
    monkeypatch.setattr(module, "ddgan_iteration", real)
    train_ddgan(tmp_path / "split", steps=6, resume=True, progress=False)   # … and resumed across the switch
    assert_same_run(tmp_path / "split", tmp_path / "straight")
    d_loss = [row["loss_d"] for row in rows(tmp_path / "straight")]
    assert d_loss[:3] == [0.0] * 3 and all(v > 0 for v in d_loss[3:])
    config = json.loads((tmp_path / "split" / "config.json").read_text())
    assert config["ddgan"]["pretrain"] == 0.5 and config["ddgan"]["prediction"] == "v"
    r = load_run(tmp_path / "split", device="cpu")
    assert r.G.v_coefficients is not None and r.generate(2, seed=0, progress=False).shape == (2, 1, 8, 8)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_train_sample_eval_and_compare(cache, tmp_path, capsys):
    run = tmp_path / "dd"
    assert main(["train", "ddgan", "--data", "digits", "--preset", "tiny", "--steps", "3", "--out", str(run),
                 "--device", "cpu", "--T", "2", "--batch-size", "16", "--quiet"]) == 0
    assert "trained 3 steps" in capsys.readouterr().err
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "x.png"), "--quiet"]) == 0
    assert (tmp_path / "x.png").stat().st_size > 100 and "2 network evaluations" in capsys.readouterr().err
    assert main(["eval", str(run), "--n", "12", "--batch-size", "6", "--quiet"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["source"]["run_kind"] == "ddgan" and result["speed"]["nfe"] == 2
    assert result["speed"]["images_per_s"] > 0 and result["quality"]["fid"] is not None
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert "| G, T = 2 passes |" in (tmp_path / "cmp" / "compare.md").read_text()
    capsys.readouterr()
    code, _, err = cli(capsys, "train", "ddgan", "--data", "digits", "--steps", "1", "--T", "9", "--out", tmp_path / "b")
    assert code == 2 and not (tmp_path / "b").exists()
    one_line_error(err, "--T", "between 1 and 8")


# ------------------------------------------------------------------------------------------ latent space
def test_latent_preset_keeps_levels_of_at_least_4_and_drops_tanh():
    from trilemma.ddgan.config import latent_preset
    from trilemma.errors import TrilemmaError

    c = latent_preset("small", 7, 4)
    assert (c.image_size, c.channels, c.channel_mults, c.tanh) == (7, 4, (1, 2), False)      # 7 → 4, not 2
    assert latent_preset("small", 16, 4).channel_mults == (1, 2, 2)                          # 16 → 8 → 4
    assert latent_preset("tiny", 4, 3, base_channels=8).base_channels == 8
    x = torch.randn(2, 4, 7, 7)
    out = DDGANGenerator(c, 100)(x, torch.randn(2, 100), torch.tensor([1, 4]))
    assert out.shape == x.shape
    assert DDGANDiscriminator(c)(x, x, torch.tensor([1, 4])).shape == (2,)
    with pytest.raises(TrilemmaError, match="2×2 are too small.*--factor"):
        latent_preset("small", 2, 4)


@pytest.fixture(scope="module")
def latent_ae(cache, tmp_path_factory):
    from trilemma.autoencoder.train import train_autoencoder

    out = tmp_path_factory.mktemp("lddgan") / "ae"
    train_autoencoder(out, data="digits", preset="tiny", factor=2, steps=4, batch_size=16, lr=2e-3, progress=False,
                      device="cpu", log_every=1, checkpoint_every=100)
    return out


def test_latent_ddgan_trains_on_scaled_latents_and_samples_decoded_images(latent_ae, tmp_path):
    from trilemma.autoencoder.run import load_autoencoder
    from trilemma.ddgan.diffusion import ddgan_sample

    out = tmp_path / "lddgan"
    tiny(out, 2, autoencoder=latent_ae)
    config = json.loads((out / "config.json").read_text())
    ae = load_autoencoder(latent_ae, device="cpu")
    assert config["autoencoder"]["digest"] == ae.weights_digest() and (out / "autoencoder" / "config.json").is_file()
    assert (config["model"]["channels"], config["model"]["image_size"], config["model"]["tanh"]) == (4, 4, False)
    assert load_autoencoder(out, device="cpu").weights_digest() == ae.weights_digest()      # its copy, by SHA-256
    run = load_run(out, device="cpu")
    assert isinstance(run, DDGANRun) and run.x_shape == ae.latent_shape == (4, 4, 4)
    assert run.nfe(SampleOptions()) == 4 and "on 4×4×4 latents" in run.describe(SampleOptions())
    images = run.sample_batch(3, torch.Generator().manual_seed(5), SampleOptions())
    # the same draw by hand: x_T in latent space, T steps of G, then the decoder D(z / s)
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn((3, 4, 4, 4), generator=g)
    expected = ae.decode(ddgan_sample(run.G, x_T, run.schedule, run.ddgan.z_dim, generator=g))
    assert images.shape == (3, 1, 8, 8) and torch.allclose(images, expected)
    _, traj = run.sample_batch(2, torch.Generator().manual_seed(1), SampleOptions(), return_trajectory=True)
    assert [x.shape[1:] for x in traj["x_t"]] == [(4, 4, 4)] * 5 and run.decode(traj["x_t"][-1]).shape[1:] == (1, 8, 8)


def test_latent_ddgan_resumes_exactly_and_refuses_a_changed_autoencoder(latent_ae, tmp_path):
    from trilemma.errors import RunError

    tiny(tmp_path / "straight", 4, autoencoder=latent_ae)
    tiny(tmp_path / "split", 2, autoencoder=latent_ae)
    train_ddgan(tmp_path / "split", steps=4, resume=True, progress=False)
    assert rows(tmp_path / "split") == rows(tmp_path / "straight")
    weights = next((tmp_path / "split" / "autoencoder").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")                         # one byte changed
    with pytest.raises(RunError, match="SHA-256"):
        load_run(tmp_path / "split", device="cpu")
    with pytest.raises(RunError, match="SHA-256"):
        train_ddgan(tmp_path / "split", steps=5, resume=True, progress=False)


def test_cli_latent_ddgan_and_its_one_line_errors(latent_ae, tmp_path, capsys):
    from trilemma.autoencoder.train import train_autoencoder

    run = tmp_path / "dd"
    code, _, err = cli(capsys, "train", "ddgan", "--autoencoder", latent_ae, "--preset", "tiny", "--steps", "2",
                       "--T", "2", "--batch-size", "16", "--device", "cpu", "--out", run, "--quiet")
    assert code == 0, err
    code, _, err = cli(capsys, "sample", run, "--n", "4", "--out", tmp_path / "x.png", "--quiet")
    assert code == 0 and "2 network evaluations" in err and (tmp_path / "x.png").is_file()
    code, _, err = cli(capsys, "train", "ddgan", "--steps", "1", "--out", tmp_path / "none")
    assert code == 2 and not (tmp_path / "none").exists()
    one_line_error(err, "--data", "--autoencoder")
    big = tmp_path / "ae4"                                              # f = 4 on 8×8 digits: 2×2 latents
    train_autoencoder(big, data="digits", preset="tiny", factor=4, steps=1, batch_size=16, progress=False,
                      device="cpu", checkpoint_every=100)
    capsys.readouterr()
    code, _, err = cli(capsys, "train", "ddgan", "--autoencoder", big, "--steps", "1", "--out", tmp_path / "small")
    assert code == 2 and not (tmp_path / "small").exists()
    one_line_error(err, "2×2", "--factor")
