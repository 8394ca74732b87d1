"""The `trilemma` command line end to end, with the tiny preset, and its one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, one_line_error, subcommands
from PIL import Image

from trilemma.cli.main import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "ddpm", "--data", "digits", "--preset", "tiny", "--steps", "3", "--batch-size", "8",
                 "--out", str(out), "--quiet", "--T", "100"])
    assert code == 0
    return out


def test_train_writes_a_complete_run_folder(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "model.safetensors", "ema.safetensors", "metrics.jsonl", "loss.png", "state",
            "samples"} <= names


def test_train_resume_extends_the_budget(run_dir, capsys, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    code, _, err = cli(capsys, "train", "ddpm", "--out", copy, "--resume", "--steps", "5", "--quiet")
    assert code == 0, err
    assert "trained 5 steps" in err


def test_sample_ddpm_and_ddim_grids_and_npz(run_dir, capsys, tmp_path):
    code, _, err = cli(capsys, "sample", run_dir, "--n", 6, "--sampler", "ddpm", "--out", tmp_path / "a.png",
                       "--npz", tmp_path / "a.npz", "--quiet")
    assert code == 0, err
    images = np.load(tmp_path / "a.npz")["images"]
    assert images.dtype == np.uint8 and images.shape == (6, 8, 8, 1)
    assert Image.open(tmp_path / "a.png").size[0] > 8
    code, _, err = cli(capsys, "sample", run_dir, "--n", 4, "--sampler", "ddim", "--steps", 5, "--eta", 0.5,
                       "--spacing", "linspace", "--out", tmp_path / "b.png", "--npz", tmp_path / "b.npz",
                       "--seed", 1, "--quiet")
    assert code == 0, err
    assert "5 network evaluations" in err
    code, _, _ = cli(capsys, "sample", run_dir, "--n", 4, "--sampler", "ddim", "--steps", 5, "--eta", 0.5,
                     "--spacing", "linspace", "--out", tmp_path / "c.png", "--npz", tmp_path / "c.npz",
                     "--seed", 1, "--quiet")
    assert np.array_equal(np.load(tmp_path / "b.npz")["images"], np.load(tmp_path / "c.npz")["images"])


def test_show_commands(run_dir, capsys, tmp_path):
    for args in (["show", "schedules", "--out", tmp_path / "s.png"],
                 ["show", "forward", "--data", "digits", "--out", tmp_path / "f.png", "--T", 100],
                 ["show", "trajectory", run_dir, "--out", tmp_path / "t.png", "--steps", 10, "--n", 2]):
        code, _, err = cli(capsys, *args)
        assert code == 0, err
        assert Path(args[args.index("--out") + 1]).stat().st_size > 1000


def test_demo_end_to_end_with_a_tiny_budget(capsys, tmp_path):
    code, out, err = cli(capsys, "demo", "--out", tmp_path / "demo", "--data", "digits", "--preset", "tiny",
                         "--steps", 2, "--ddpm-n", 2, "--ddim-n", 4)
    assert code == 0, err
    assert out.strip() == str(tmp_path / "demo")             # prints where the run folder is
    assert (tmp_path / "demo" / "samples" / "ddpm_1000.png").exists()
    assert (tmp_path / "demo" / "samples" / "ddim_50.png").exists()
    assert (tmp_path / "demo" / "samples" / "ddim_50_eta1.png").exists()
    assert (tmp_path / "demo" / "loss.png").exists()


@pytest.mark.parametrize("args,words", [
    (["train", "ddpm", "--out", "x", "--steps", "-3"], ["--steps"]),
    (["train", "ddpm", "--out", "x", "--steps", "abc"], ["--steps", "abc"]),
    (["train", "ddpm", "--out", "x", "--schedule", "exp", "--steps", "2"], ["--schedule"]),
    (["sample", "RUN", "--eta", "2"], ["--eta"]),
    (["sample", "RUN", "--sampler", "plms"], ["--sampler"]),
    (["show", "nothing"], ["nothing"]),
    (["train", "ddpm", "--out", "x", "--steps", "1", "--minutes", "2"], ["--minutes"]),
])
def test_bad_options_are_one_line_errors(args, words, capsys, run_dir):
    args = [str(run_dir) if a == "RUN" else a for a in args]
    code, _, err = cli(capsys, *args)
    assert code == 2
    one_line_error(err, *words)


def test_bad_paths_and_data_are_one_line_errors(capsys, tmp_path, monkeypatch, run_dir):
    code, _, err = cli(capsys, "sample", tmp_path / "missing")
    assert code == 2
    one_line_error(err, "missing")
    code, _, err = cli(capsys, "train", "ddpm", "--data", "no-such-data", "--out", tmp_path / "r", "--steps", 1)
    assert code == 2
    one_line_error(err, "no-such-data")
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "train", "ddpm", "--data", tmp_path / "empty", "--out", tmp_path / "r", "--steps", 1)
    assert code == 2
    one_line_error(err, "no images")
    monkeypatch.setenv("TRILEMMA_FASHION_MNIST_DIR", str(tmp_path / "empty"))
    code, _, err = cli(capsys, "train", "ddpm", "--out", tmp_path / "r", "--steps", 1)
    assert code == 2
    one_line_error(err, "apt-get install -y dataset-fashion-mnist")
    code, _, err = cli(capsys, "train", "ddpm", "--data", "digits", "--out", run_dir, "--steps", 1)
    assert code == 2
    one_line_error(err, "--resume")
    code, _, err = cli(capsys, "train", "ddpm", "--data", "digits", "--out", tmp_path / "r")
    assert code == 2
    one_line_error(err, "--steps")
    assert not (tmp_path / "r").exists()                      # nothing half-created on bad input


def test_corrupt_images_are_skipped_with_one_warning(capsys, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    proc = subprocess.run([sys.executable, "-m", "trilemma", "train", "ddpm", "--data", str(folder),
                           "--image-size", "16", "--preset", "tiny", "--steps", "1", "--batch-size", "4",
                           "--out", str(tmp_path / "r"), "--quiet"], capture_output=True, text=True,
                          env={**os.environ, "TRILEMMA_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "skipped 1" in warnings[0], err


def test_help_for_every_command(capsys):
    for args in (["--help"], ["train", "--help"], ["train", "ddpm", "--help"], ["sample", "--help"],
                 ["show", "--help"], ["show", "schedules", "--help"], ["show", "forward", "--help"],
                 ["show", "trajectory", "--help"], ["demo", "--help"]):
        code, out, _ = cli(capsys, *args)
        assert code == 0 and "usage" in out


def test_help_never_prints_an_empty_default(capsys):
    """Every subcommand's --help: a default is shown where there is one, never "(default: None)"."""
    from trilemma.cli.main import build_parser

    def commands(parser, path=()):
        yield path
        for name, sub in subcommands(parser).items():
            yield from commands(sub, path + (name,))

    paths = list(commands(build_parser()))
    assert ("experiment", "steps") in paths and ("train", "ddgan") in paths
    for path in paths:
        code, out, _ = cli(capsys, *path, "--help")
        flat = " ".join(out.split())
        assert code == 0 and "(default: None)" not in flat and "(default: False)" not in flat, path
    code, out, _ = cli(capsys, "sample", "--help")
    assert "(default: auto)" in " ".join(out.split())


def test_subprocess_error_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "trilemma", "sample", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "nope")
