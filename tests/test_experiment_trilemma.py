"""`trilemma experiment trilemma`: six models, one budget, one table and one plot (docs/methods.md §9, §11)."""

from __future__ import annotations

import json

import pytest
from helpers import cli, one_line_error

import trilemma.metrics as metrics_mod
from trilemma.errors import TrilemmaError
from trilemma.experiments.trilemma import ROWS, RUNS, TrilemmaConfig, lddgan_options


def test_budget_is_the_same_per_model_and_the_latent_arm_includes_its_autoencoder():
    cfg = TrilemmaConfig(minutes=9)
    assert cfg.budget("vae") == cfg.budget("ddgan") == {"minutes": 9}
    assert cfg.budget("ae") == {"minutes": pytest.approx(3.0)}
    assert cfg.budget("ldm", ae_minutes=3.2) == {"minutes": pytest.approx(5.8)}     # what the AE really used
    assert cfg.budget("lddgan", ae_minutes=3.2) == {"minutes": pytest.approx(5.8)}  # the other latent arm too
    assert TrilemmaConfig().budget("gan") == {"minutes": 8.0}
    assert TrilemmaConfig(steps=5).budget("ldm", ae_minutes=100.0) == {"steps": 5}
    with pytest.raises(TrilemmaError, match="autoencoder used"):
        cfg.budget("ldm", ae_minutes=9.5)
    with pytest.raises(TrilemmaError, match="at most one"):
        TrilemmaConfig(minutes=1, steps=2)
    fast = TrilemmaConfig().sampling("ddpm-fast")
    assert (fast.sampler, fast.steps, fast.spacing) == ("unipc", 10, "karras")          # "auto" at 10 NFE
    assert TrilemmaConfig().sampling("ddpm-ddim").steps == 50 and TrilemmaConfig().sampling("ddgan").steps is None


def test_the_latent_ddgan_is_half_as_wide_at_the_small_preset():
    from trilemma.ddgan.config import PRESETS, latent_preset
    from trilemma.ddgan.networks import make_discriminator, make_generator
    from trilemma.nets.unet import count_parameters

    small, tiny = lddgan_options("small"), lddgan_options("tiny")
    assert (small["base_channels"], small["d_channels"]) == (PRESETS["small"]["base_channels"] // 2,
                                                             PRESETS["small"]["d_channels"] // 2)
    assert "base_channels" not in tiny and "d_channels" not in tiny and "base_channels" not in lddgan_options("base")
    assert {k: small[k] for k in tiny} == tiny == {"lr": 6.4e-4, "lr_d": 1e-3, "d_steps": 2, "div_weight": 1.0,
                                                   "t_weights": (3.0, 2.0, 2.0, 1.0)}
    widths = {k: small[k] for k in ("base_channels", "d_channels")}
    net, full = latent_preset("small", 7, 4, **widths), latent_preset("small", 7, 4)
    for make, ratio in ((lambda c: make_generator(c, 100), 0.5), (make_discriminator, 0.3)):   # G 0.42M of 1.22M,
        assert count_parameters(make(net)) < ratio * count_parameters(make(full))              # D 0.13M of 0.51M


def test_the_latent_ddgan_draws_t_towards_the_last_step_at_T_4_and_uniformly_at_other_T():
    from trilemma.ddgan.config import DDGANConfig

    for preset in ("tiny", "small"):
        weights = lddgan_options(preset, 60.0)["t_weights"]
        assert DDGANConfig(T=4, t_weights=weights).t_probs == (3 / 8, 2 / 8, 2 / 8, 1 / 8)
        other = lddgan_options(preset, 60.0, T=2)
        assert "t_weights" not in other and other == {k: v for k, v in lddgan_options(preset, 60.0).items()
                                                     if k != "t_weights"}


def test_the_latent_ddgan_decays_its_rates_to_a_floor_only_on_long_budgets():
    for preset in ("tiny", "small"):
        assert "lr_decay" not in lddgan_options(preset) and "lr_decay" not in lddgan_options(preset, 49.9)
        long = lddgan_options(preset, 50.0)
        assert (long["lr_decay"], long["lr_final"]) == ("cosine", 0.25)
        assert {k: v for k, v in long.items() if k not in ("lr_decay", "lr_final")} == lddgan_options(preset)


@pytest.mark.parametrize("minutes, decayed", [(90.0, True), (60.0, False)])
def test_the_experiment_gives_the_latent_ddgan_its_own_minutes_and_the_decay_they_call_for(
        tmp_path, monkeypatch, minutes, decayed):
    import trilemma.ddgan.train as ddgan_train
    from trilemma.experiments.trilemma import train_run
    from trilemma.utils.io import write_json

    out = tmp_path / "tri"
    write_json(out / "ae" / "state" / "trainer.json", {"step": 100, "elapsed_s": 30 * 60.0})   # a 30-minute autoencoder
    seen = {}
    monkeypatch.setattr(ddgan_train, "train_ddgan", lambda path, **options: seen.update(options))
    train_run("lddgan", out, TrilemmaConfig(minutes=minutes, preset="small"), progress=False)
    assert seen["minutes"] == pytest.approx(minutes - 30) and seen["autoencoder"] == out / "ae"
    assert seen["base_channels"] == 16 and seen.get("lr_decay") == ("cosine" if decayed else None)
    assert seen.get("lr_final") == (0.25 if decayed else None)
    assert seen["T"] == 4 and seen["t_weights"] == (3.0, 2.0, 2.0, 1.0)


def test_run_state_tells_a_finished_run_from_an_interrupted_one(tmp_path):
    from trilemma.experiments import run_state
    from trilemma.utils.io import write_json

    run = tmp_path / "gan"
    assert run_state(run) == "none"
    write_json(run / "config.json", {"kind": "gan", "train": {"steps": None, "minutes": 2.0}})
    assert run_state(run) == "started"
    write_json(run / "state" / "trainer.json", {"step": 50, "elapsed_s": 61.0})   # a 10-minute checkpoint, Ctrl-C
    assert run_state(run) == "interrupted"
    write_json(run / "state" / "trainer.json", {"step": 99, "elapsed_s": 120.4})
    assert run_state(run) == "finished"
    write_json(run / "config.json", {"kind": "gan", "train": {"steps": 100, "minutes": None}})
    assert run_state(run) == "interrupted"


def test_an_interrupted_run_is_continued_not_reused(cache, tmp_path):
    import dataclasses

    from trilemma.experiments import run_state
    from trilemma.experiments.trilemma import evaluate, train_run

    out = tmp_path / "tri"
    cfg = TrilemmaConfig(data="digits", preset="tiny", steps=2, n=30, batch_size=15, device="cpu")
    run = out / "gan"
    train_run("gan", out, cfg, progress=False)
    assert evaluate("gan", run, out, cfg, progress=False)["source"]["step"] == 2      # cached in DIR/evals
    # A checkpoint short of its budget, as Ctrl-C leaves one: the same run, with a 4-step budget.
    config = json.loads((run / "config.json").read_text())
    config["train"]["steps"] = 4
    (run / "config.json").write_text(json.dumps(config))
    assert run_state(run) == "interrupted"
    train_run("gan", out, dataclasses.replace(cfg, steps=4), progress=False)
    assert json.loads((run / "state" / "trainer.json").read_text())["step"] == 4 and run_state(run) == "finished"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4
    assert evaluate("gan", run, out, cfg, progress=False)["source"]["step"] == 4      # scored again, not reused


def test_trilemma_end_to_end_then_a_rerun_reuses_runs_and_evaluations(cache, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tri"
    args = ["experiment", "trilemma", "--data", "digits", "--preset", "tiny", "--steps", "2", "--n", "30",
            "--ddim-steps", "3", "--batch-size", "15", "--device", "cpu", "--out", out, "--quiet"]
    code, printed, err = cli(capsys, *args)
    assert code == 0, err
    for name in RUNS:
        assert (out / name / "state" / "trainer.json").is_file(), name
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results) == list(ROWS)
    speed = {k: r["metrics"]["speed"] for k, r in results.items()}
    assert {k: s["nfe"] for k, s in speed.items()} == {"vae": 1, "gan": 1, "ddpm-ddim": 3, "ddpm-fast": 10,
                                                        "ldm": 3, "ddgan": 4, "lddgan": 4}
    for key, r in results.items():
        m = r["metrics"]
        assert m["n"] == 30 and m["quality"]["fid"] is not None and m["coverage"]["recall"] is not None
        assert speed[key]["images_per_s"] > 0 and (out / f"samples_{key}.png").is_file()
        assert all(b["steps"] == 2 for b in r["budget"]) and (out / "evals" / f"{key}.json").is_file()
        assert r["label"] in printed
    assert [b["kind"] for b in results["ldm"]["budget"]] == ["autoencoder", "ldm"]
    assert [b["kind"] for b in results["lddgan"]["budget"]] == ["autoencoder", "ddgan"]
    lddgan = json.loads((out / "lddgan" / "config.json").read_text())
    assert lddgan["autoencoder"]["latent_shape"][0] > 1
    assert (lddgan["train"]["lr"], lddgan["ddgan"]["lr_d"], lddgan["ddgan"]["d_steps"]) == (6.4e-4, 1e-3, 2)
    assert (lddgan["ddgan"]["div_weight"], lddgan["ddgan"]["div_cap"]) == (1.0, 0.5)
    assert (lddgan["train"]["lr_decay"], lddgan["train"]["lr_final"]) == ("constant", 0.0)   # --steps: no decay
    assert (lddgan["model"]["base_channels"], lddgan["model"]["d_channels"]) == (16, 8)   # `tiny` keeps its widths
    ddgan = json.loads((out / "ddgan" / "config.json").read_text())["ddgan"]
    assert (ddgan["d_steps"], ddgan["div_weight"]) == (1, 0.0)                # the paper's
    assert results["ddpm-fast"]["metrics"]["source"]["sampling"]["sampler"] == "unipc"
    table = (out / "trilemma.md").read_text()
    assert table.count("\n| ") == 1 + len(ROWS) and "DDGAN (4 NFE)" in table and "as fast as the DDPM" in table
    assert "latent DDGAN (4 NFE)" in table and table.count("as fast as the DDPM") == 2
    assert (out / "trilemma.png").stat().st_size > 5000

    # a rerun trains nothing and samples nothing for the metrics
    weights = {p: p.stat().st_mtime_ns for p in out.glob("*/*.safetensors")}
    assert len(weights) >= len(RUNS)

    def refuse(*a, **k):
        raise AssertionError("the rerun should reuse DIR/evals/<row>.json")

    monkeypatch.setattr(metrics_mod, "evaluate_run", refuse)
    # sampling options the GAN's row ignores (as after a change of the library's default sampler) keep its cache
    gan_eval = out / "evals" / "gan.json"
    stored = json.loads(gan_eval.read_text())
    stored["source"]["sampling"]["sampler"] = "ddim"
    gan_eval.write_text(json.dumps(stored))
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.safetensors")} == weights
    assert "reusing" in err and "training the" not in err
    assert json.loads((out / "results.json").read_text())["results"]["ddgan"]["metrics"] == results["ddgan"]["metrics"]

    # --repeats 2 re-scores every row on two sample sets (seeds 0, 1) and reports mean ± sd; it trains nothing
    monkeypatch.undo()
    code, printed, err = cli(capsys, *args, "--repeats", "2")
    assert code == 0, err
    assert "training the" not in err and " ± " in printed
    again = json.loads((out / "results.json").read_text())["results"]
    for key, r in again.items():
        assert r["metrics"]["repeats"]["seeds"] == [0, 1], key
        fids = r["metrics"]["repeats"]["values"]["quality.fid"]
        assert r["metrics"]["quality"]["fid"] == pytest.approx(sum(fids) / 2)
    assert again["gan"]["metrics"]["repeats"]["values"]["quality.fid"][0] == pytest.approx(
        results["gan"]["metrics"]["quality"]["fid"])                       # set 1 is the seed-0 score of before
    table = (out / "trilemma.md").read_text()
    assert "2 sets of 30 samples" in table and "twice its standard error" in table


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    code, _, err = cli(capsys, "experiment", "trilemma", "--data", "digits", "--minutes", "1", "--steps", "2",
                       "--out", tmp_path / "x")
    assert code == 2
    one_line_error(err, "--steps")
    code, _, err = cli(capsys, "experiment", "trilemma", "--data", "no-such-data", "--steps", "2",
                       "--out", tmp_path / "y")
    assert code == 2 and "no-such-data" in err
