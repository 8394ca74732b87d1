"""`trilemma train ddgan` on the shared loop, the DDGAN run class, exact resume, and the CLI (docs/methods.md §11)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cli, one_line_error

from trilemma.cli.main import main
from trilemma.ddgan import DDGANConfig, DDGANDiscriminator, ddgan_schedule, preset
from trilemma.ddgan.networks import DDGANGenerator
from trilemma.ddgan.run import DDGANRun
from trilemma.ddgan.train import ddgan_iteration, train_ddgan
from trilemma.registry import load_run
from trilemma.run import SampleOptions
from trilemma.utils.io import load_tensors, tensors_metadata


def rows(run):
    return [{k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "elapsed_s")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def tiny(out, steps, **kw):
    return train_ddgan(out, data="digits", preset="tiny", steps=steps, batch_size=16, progress=False,
                       **{"log_every": 1, "checkpoint_every": 3, "device": "cpu", **kw})


def optimizer_groups(run):
    meta = json.loads(tensors_metadata(run / "state" / "optim.safetensors")["meta"])
    return {name: m["param_groups"][0] for name, m in meta.items()}


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
    assert rows(tmp_path / "split") == rows(tmp_path / "straight")
    for name in ("model", "disc", "ema"):
        a = load_tensors(tmp_path / "straight" / f"{name}.safetensors")
        b = load_tensors(tmp_path / "split" / f"{name}.safetensors")
        assert all(torch.equal(a[key], b[key]) for key in a)
    r1 = [row["r1"] for row in rows(tmp_path / "split")]
    assert all(v > 0 for v in r1[0::2]) and all(v == 0 for v in r1[1::2])     # R1 on D steps 0, 2, 4 only
    optim = load_tensors(tmp_path / "split" / "state" / "optim.safetensors")
    assert {int(v) for k, v in optim.items() if k.endswith(".step")} == {6}   # one D and one G update a step
    assert {"loss_d", "loss_g", "r1", "d_real", "d_fake"} <= set(rows(tmp_path / "split")[-1])


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
