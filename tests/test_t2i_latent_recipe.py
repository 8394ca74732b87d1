"""`trilemma train t2i --recipe latent`: the autoencoder phase, the recipe's defaults under the user's
options, resume of either phase, and the flat options stored for it (tiny models, a small shapes set)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cli, free_port, one_line_error, run_processes, small_shapes

from trilemma.autoencoder.phase import AE_DIR, phase1_finished
from trilemma.autoencoder.train import train_autoencoder
from trilemma.ddpm.config import DiffusionConfig
from trilemma.diffusion.schedule import ScheduleConfig
from trilemma.options import build, flat_options
from trilemma.registry import load_run
from trilemma.t2i import recipe as recipes
from trilemma.t2i import train as t2i
from trilemma.utils.io import write_json

TINY = ("--preset", "tiny", "--batch-size", 8, "--T", 100, "--quiet")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with small_shapes(96, 32, 2, cache=tmp_path_factory.mktemp("cache")):
        yield tmp_path_factory.mktemp("runs")


def read(path):
    return json.loads(path.read_text())


def step(path):
    return read(path / "state" / "trainer.json")["step"]


@pytest.fixture(scope="module")
def latent_run(env):
    """A recipe run of 3 steps per phase, made through the CLI."""
    from trilemma.cli.main import main

    out = env / "latent"
    assert main(["train", "t2i", "--recipe", "latent", "--data", "shapes", "--steps", "3",
                 *map(str, TINY), "--out", str(out)]) == 0
    return out


def test_the_latent_recipe_trains_its_autoencoder_then_t2i_on_the_latents(latent_run):
    out = latent_run
    assert phase1_finished(out / AE_DIR) and step(out / AE_DIR) == 3 and step(out) == 3
    config = read(out / "config.json")
    assert config["autoencoder"]["factor"] == 4 and config["model"]["in_channels"] == 4   # 4×8×8 latents
    assert config["model"]["num_res_blocks"] == 1                                # the recipe's defaults …
    assert config["diffusion"]["prediction"] == "v" and config["diffusion"]["loss_weight"] == "min-snr"
    assert config["train"]["lr"] == 2e-3 and config["train"]["ema_decay"] == 0.995
    assert config["train"]["batch_size"] == 8 and config["preset"] == "tiny"     # … under the options given
    assert config["diffusion"]["schedule"]["T"] == 100
    assert read(out / "recipe.json")["options"]["steps"] == 3
    images = load_run(out, "cpu").generate(2, seed=0, progress=False)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8


def test_options_typed_win_over_the_recipe_even_abbreviated_or_equal_to_the_family_default(env, capsys):
    out = env / "typed"
    code, _, err = cli(capsys, "train", "t2i", "--recipe", "latent", "--steps", 1, *TINY, "--pred", "eps",
                       "--lr=1e-3", "--num-res-blocks", 2, "--out", out)
    assert code == 0, err
    config = read(out / "config.json")
    assert config["diffusion"]["prediction"] == "eps" and config["train"]["lr"] == 1e-3
    assert config["model"]["num_res_blocks"] == 2 and config["diffusion"]["loss_weight"] == "min-snr"


def test_resume_continues_an_autoencoder_phase_that_was_cut_short(env, capsys):
    out = env / "cut"
    options = recipes.latent_options({"data": "shapes", "steps": 4, "preset": "tiny", "batch_size": 8, "T": 100})
    write_json(out / "recipe.json", {"recipe": "latent", "options": options})
    train_autoencoder(out / AE_DIR, data="shapes", factor=4, preset="tiny", steps=2, batch_size=8, progress=False,
                      evaluate=False)                       # as if Ctrl-C hit phase 1 at step 2
    assert not phase1_finished(out / AE_DIR) and recipes.resume_folder(out) == (out / AE_DIR, "autoencoder")
    code, _, err = cli(capsys, "train", "t2i", "--out", out, "--resume", "--quiet")
    assert code == 0, err
    assert step(out / AE_DIR) == 4 and step(out) == 4 and phase1_finished(out / AE_DIR)
    assert read(out / AE_DIR / "recon.json")["rfid"] is None     # measured as a new recipe's: PSNR, no FID
    assert recipes.resume_folder(out) == (out, "t2i")
    code, _, err = cli(capsys, "train", "t2i", "--out", out, "--resume", "--steps", 6, "--quiet")
    assert code == 0, err
    assert step(out) == 6 and step(out / AE_DIR) == 4         # a finished autoencoder is not trained again
    assert read(out / "recipe.json")["options"]["steps"] == 6


def test_resume_finishes_an_autoencoder_phase_cut_short_after_its_last_step(env, capsys):
    out = env / "cut-late"
    options = recipes.latent_options({"data": "shapes", "steps": 3, "preset": "tiny", "batch_size": 8, "T": 100})
    write_json(out / "recipe.json", {"recipe": "latent", "options": options})
    train_autoencoder(out / AE_DIR, data="shapes", factor=4, preset="tiny", steps=3, batch_size=8, progress=False,
                      evaluate=False)                       # trained to its budget, stopped while encoding
    assert not phase1_finished(out / AE_DIR)
    code, _, err = cli(capsys, "train", "t2i", "--out", out, "--resume", "--quiet")
    assert code == 0, err
    assert phase1_finished(out / AE_DIR) and step(out / AE_DIR) == 3 and step(out) == 3


def test_the_recipe_with_a_given_autoencoder_skips_phase1_and_resumes_bit_exact(env):
    from trilemma.utils.io import load_tensors

    ae = env / "given-ae"
    train_autoencoder(ae, data="shapes", factor=4, preset="tiny", steps=2, batch_size=8, progress=False,
                      recon_fid=False)
    common = dict(recipe="latent", autoencoder=ae, data="shapes", preset="tiny", batch_size=8,
                  schedule=ScheduleConfig(T=100), progress=False)
    a, b = env / "exact-a", env / "exact-b"
    t2i.train_t2i(a, steps=4, **common)
    t2i.train_t2i(b, steps=2, **common)
    t2i.train_t2i(b, steps=4, resume=True, progress=False)
    assert not (a / AE_DIR).exists() and read(a / "config.json")["diffusion"]["prediction"] == "v"
    for name in ("model.safetensors", "ema.safetensors"):
        x, y = load_tensors(a / name), load_tensors(b / name)
        assert all(torch.equal(x[k], y[k]) for k in x), name


def test_resuming_a_recipe_that_never_saved_is_a_one_line_error(env, capsys):
    out = env / "unsaved"
    write_json(out / "recipe.json", {"recipe": "latent", "options": {"data": "shapes", "steps": 2}})
    code, _, err = cli(capsys, "train", "t2i", "--out", out, "--resume")
    assert code == 2
    one_line_error(err, "--resume", "without --resume")


def test_a_new_recipe_refuses_a_folder_that_holds_a_run(latent_run, capsys):
    code, _, err = cli(capsys, "train", "t2i", "--recipe", "latent", "--steps", 1, *TINY, "--out", latent_run)
    assert code == 2
    one_line_error(err, "already holds a run")


def test_flat_options_store_configs_given_in_python_as_their_flags():
    flat = flat_options({"schedule": ScheduleConfig(name="cosine", T=50), "lr": 1e-3, "out": env_path()})
    assert flat["schedule"] == "cosine" and flat["T"] == 50 and flat["lr"] == 1e-3 and flat["out"] == "/x/y"
    json.dumps(flat)
    assert build(DiffusionConfig, flat).schedule == ScheduleConfig(name="cosine", T=50)


def env_path():
    from pathlib import Path

    return Path("/x/y")


def _two_rank_worker(rank: int, out: str, port: int) -> None:
    """One of two gloo processes (torchrun's environment) running the whole recipe."""
    import os
    import traceback
    from pathlib import Path

    from trilemma.data import shapes

    report = Path(out).parent / f"report.{rank}.txt"
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                          LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        torch.set_num_threads(1)
        shapes.TRAIN_SIZE, shapes.TEST_SIZE = 96, 32
        for name in ("PREVIEW_PROMPTS", "PREVIEW_SEEDS", "PREVIEW_STEPS"):
            setattr(t2i, name, 2)
        t2i.train_t2i(out, recipe="latent", data="shapes", steps=2, preset="tiny", batch_size=8, device="cpu",
                      schedule=ScheduleConfig(T=100), progress=False)
        report.write_text("ok")
    except Exception:
        report.write_text(traceback.format_exc())


def test_the_recipe_runs_under_torchrun_with_two_processes(env):
    out = env / "two" / "run"
    out.parent.mkdir()
    run_processes(_two_rank_worker, (str(out), free_port()), 2, seconds=240)
    for rank in range(2):
        assert (out.parent / f"report.{rank}.txt").read_text() == "ok", rank
    assert phase1_finished(out / AE_DIR) and step(out / AE_DIR) == 2 and step(out) == 2
    assert read(out / "recipe.json")["options"]["steps"] == 2
