"""Hostile input found by driving the CLI as a careless user would, each refused with one line.

A run's own files as outputs, a failed resume that must not leave its options behind, options that
only break deep inside torch (``--compile`` with R1, β reaching 1, devices trilemma does not run
on), config.json edits that contradict the weights, options a run would silently ignore, and the
experiments' ``--out``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import cli, clone, one_line_error, trained_run

from trilemma.cli.main import main
from trilemma.config import from_dict
from trilemma.ddgan.config import DDGANConfig
from trilemma.errors import RunError, TrilemmaError
from trilemma.experiments import check_settings
from trilemma.registry import load_run
from trilemma.run import read_run_config
from trilemma.utils.device import pick_device

DDPM = ["train", "ddpm", "--data", "digits", "--preset", "tiny", "--batch-size", "8", "--T", "100", "--quiet"]
DDGAN = ["train", "ddgan", "--data", "digits", "--preset", "tiny", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache):
    return trained_run(tmp_path_factory, [*DDPM, "--steps", "2"], "ddpm")


@pytest.fixture(scope="module")
def ddgan(tmp_path_factory, cache):
    return trained_run(tmp_path_factory, [*DDGAN, "--steps", "2"], "ddgan")


def edit(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


# --- a run's own files are never an output ------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("eval", "{run}", "--n", "10", "--json", "{run}/config.json"),
    ("eval", "{run}", "--n", "10", "--json", "{run}/state/trainer.json"),
    ("sample", "{run}", "--n", "2", "--out", "{run}/loss.png"),
])
def test_outputs_onto_a_runs_own_files_are_refused(run, tmp_path, capsys, args):
    folder = clone(run, tmp_path / "r")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    code, _, err = cli(capsys, *[a.format(run=folder) for a in args])
    assert code == 2
    one_line_error(err, "of the run folder", "choose another name")
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


# --- a failed resume leaves config.json as it was -------------------------------------------------------

def test_a_resume_that_fails_before_its_first_checkpoint_restores_config_json(run, tmp_path, capsys, monkeypatch):
    import trilemma.train.family as family

    folder = clone(run, tmp_path / "r")
    before = (folder / "config.json").read_bytes()

    def broken_fit(*args, **kwargs):
        raise TrilemmaError("the first step failed")

    monkeypatch.setattr(family, "fit", broken_fit)
    code, _, err = cli(capsys, *DDPM[:2], "--resume", "--out", folder, "--steps", "5", "--checkpoint-every", "1")
    assert code == 2 and "the first step failed" in err
    assert (folder / "config.json").read_bytes() == before         # not the new budget nor the cadence
    monkeypatch.undo()
    code, _, err = cli(capsys, *DDPM[:2], "--resume", "--out", folder, "--steps", "3", "--quiet")
    assert code == 0, err
    assert json.loads((folder / "config.json").read_text())["train"]["steps"] == 3   # a good resume writes it


def test_devices_trilemma_does_not_run_on_are_one_line(run, tmp_path, capsys):
    for name in ("meta", "mps", "xla"):
        with pytest.raises(TrilemmaError, match=f"--device {name}: trilemma runs on cpu and cuda"):
            pick_device(name)
    folder = clone(run, tmp_path / "r")
    before = (folder / "config.json").read_bytes()
    for args in (("sample", folder, "--n", "2", "--device", "meta"), ("eval", folder, "--n", "10", "--device", "mps"),
                 (*DDPM[:2], "--resume", "--out", folder, "--steps", "4", "--device", "meta")):
        code, _, err = cli(capsys, *args)
        assert code == 2
        one_line_error(err, "--device", "cpu and cuda")
    assert (folder / "config.json").read_bytes() == before
    edit(folder, lambda c: c["train"].update(device=5))
    code, _, err = cli(capsys, *DDPM[:2], "--resume", "--out", folder, "--steps", "4")
    one_line_error(err, "config.json: train.device", "got 5")


# --- resume: repeating a stored option is fine, changing it is not --------------------------------------

def test_resume_accepts_fixed_options_with_their_stored_values(run, tmp_path, capsys):
    folder = clone(run, tmp_path / "r")
    code, _, err = cli(capsys, *DDPM, "--resume", "--out", folder, "--steps", "3")   # --data, --T, … as stored
    assert code == 0, err
    code, _, err = cli(capsys, *DDPM[:2], "--resume", "--out", folder, "--steps", "4", "--T", "50")
    one_line_error(err, "--T cannot change when resuming")
    code, _, err = cli(capsys, *DDPM[:2], "--resume", "--out", folder, "--steps", "4", "--data", "mnist-5k")
    one_line_error(err, "--data cannot change when resuming")
    code, _, err = cli(capsys, *DDPM[:2], "--resume", "--out", folder, "--steps", "9", "--minutes", "1")
    one_line_error(err, "--steps/--minutes", "not both")


def test_a_checkpoint_claiming_centuries_of_training_is_refused(run, tmp_path, capsys):
    folder = clone(run, tmp_path / "r")
    info = json.loads((folder / "state" / "trainer.json").read_text())
    (folder / "state" / "trainer.json").write_text(json.dumps({**info, "elapsed_s": 1e308}))
    code, _, err = cli(capsys, *DDPM[:2], "--resume", "--out", folder, "--steps", "4")
    one_line_error(err, "trainer.json", "'elapsed_s'")


# --- config.json edits that contradict the weights ------------------------------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("channels", 3, ("data.channels is 3", "model.in_channels is 1")),
    ("image_size", 16, ("data.image_size is 16", "model.image_size is 8")),
])
def test_data_contradicting_the_model_is_one_line(run, tmp_path, capsys, key, value, words):
    folder = clone(run, tmp_path / "r")
    edit(folder, lambda c: c["data"].update({key: value}))
    with pytest.raises(RunError) as e:
        read_run_config(folder)
    assert all(w in str(e.value) for w in words) and "config.json" in str(e.value)
    for args in (("sample", folder, "--n", "2"), (*DDPM[:2], "--resume", "--out", folder, "--steps", "4")):
        code, _, err = cli(capsys, *args)
        one_line_error(err, *words)


def test_a_latent_scale_factor_that_is_no_positive_number_is_one_line(tmp_path):
    from trilemma.autoencoder.run import read_latent_stats

    assert read_latent_stats(None, "f") is None
    assert read_latent_stats({"scale_factor": 0.5, "std": 2.0}, "f")["scale_factor"] == 0.5
    for bad in ("x", 0, -1.0, float("nan"), float("inf"), True, None):
        with pytest.raises(RunError, match=r"f: latent.scale_factor: expected a finite number > 0"):
            read_latent_stats({"scale_factor": bad}, "f")
    with pytest.raises(RunError, match="latent: expected an object"):
        read_latent_stats([1], "f")


def test_an_empty_autoencoder_path_is_named(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "ldm", "--autoencoder", "", "--steps", "2", "--out", tmp_path / "l")
    one_line_error(err, "--autoencoder", "got ''")


# --- DDGAN: options that broke inside torch -------------------------------------------------------------

def test_a_vp_schedule_whose_beta_reaches_one_is_refused():
    DDGANConfig(beta_max=20.0)
    for kwargs in ({"beta_max": 1000.0}, {"beta_max": 1e308}, {"beta_min": 500.0, "beta_max": 1000.0},
                   {"beta_max": 200.0, "T": 1}):
        with pytest.raises(TrilemmaError, match="--beta-max: .* reaches 1"):
            DDGANConfig(**kwargs)
    with pytest.raises(TrilemmaError, match=r"run/config.json: ddgan.beta_max: .* reaches 1"):
        from_dict(DDGANConfig, {"beta_max": 1000.0}, "run/config.json", _name="ddgan")


def test_ddgan_compile_leaves_the_r1_discriminator_eager(tmp_path, cache, monkeypatch):
    """torch.compile's autograd has no double backward (R1 needs one): with --compile only G is compiled."""
    from trilemma.ddgan.train import train_ddgan

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    train_ddgan(tmp_path / "a", data="digits", preset="tiny", batch_size=8, steps=1, compile=True, progress=False)
    train_ddgan(tmp_path / "b", data="digits", preset="tiny", batch_size=8, steps=1, compile=True, r1_gamma=0.0,
                progress=False)
    generator = compiled[0]
    assert compiled == [generator, generator, compiled[2]] and compiled[2] != generator   # G; then G and D


# --- options a run would ignore -------------------------------------------------------------------------

def test_label_and_guidance_on_runs_without_them_are_refused(ddgan, run, capsys):
    for args, words in ((("sample", ddgan, "--n", "2", "--label", "3"), ("--label", "ddgan run")),
                        (("eval", ddgan, "--n", "10", "--label", "1"), ("--label", "ddgan run")),
                        (("sample", ddgan, "--n", "2", "--guidance", "2"), ("--guidance", "no guidance")),
                        (("sample", run, "--n", "2", "--label", "3"), ("--label", "not class-conditional"))):
        code, _, err = cli(capsys, *args)
        assert code == 2
        one_line_error(err, *words)


def test_results_record_only_the_sampling_options_a_run_uses(ddgan, run):
    from trilemma.run import SampleOptions

    options = SampleOptions(sampler="ddim", steps=10)
    assert load_run(ddgan, device="cpu").sampling_record(options) == {}
    assert load_run(run, device="cpu").sampling_record(options) == options.to_dict()


# --- experiments ----------------------------------------------------------------------------------------

def test_experiment_out_is_checked_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out, words in ((tmp_path / "file", ("--out", "is a file")), ("", ("--out", "expected a path")),
                       ("/proc/x", ("--out", "cannot create files"))):
        code, _, err = cli(capsys, "experiment", "trilemma", "--data", "digits", "--steps", "1", "--out", out)
        assert code == 2
        one_line_error(err, *words)
    code, _, err = cli(capsys, "experiment", "trilemma", "--data", "nope", "--steps", "1", "--out", tmp_path / "new")
    assert code == 2 and not (tmp_path / "new").exists(), err
    for args, words in ((("--n", "5"), ("--n", "at least 10")), (("--minutes", "0.01"), ("--minutes", "at least"))):
        code, _, err = cli(capsys, "experiment", "trilemma", "--data", "digits", *args, "--out", tmp_path / "e")
        one_line_error(err, *words)
    assert not (tmp_path / "e").exists()


def test_an_experiment_folder_is_reused_only_with_the_same_training_settings(tmp_path):
    settings = {"data": "digits", "minutes": 1.0, "preset": "tiny", "seed": 0}
    check_settings(tmp_path, "trilemma", settings)
    check_settings(tmp_path, "trilemma", settings)                                   # the same: reused
    with pytest.raises(TrilemmaError) as e:
        check_settings(tmp_path, "trilemma", {**settings, "preset": "small", "seed": 1})
    assert "preset 'tiny' (now 'small')" in str(e.value) and "seed 0 (now 1)" in str(e.value)
    with pytest.raises(TrilemmaError, match="experiment 'trilemma' \\(now 'vae-vs-gan'\\)"):
        check_settings(tmp_path, "vae-vs-gan", settings)


def test_the_model_shape_check_knows_patches_and_latents():
    from trilemma.data import DataConfig
    from trilemma.run import check_model_shape

    data = DataConfig(name="digits", image_size=16, channels=3)
    check_model_shape({"kind": "t2i", "model": {"in_channels": 12, "image_size": 8}, "text": {"patch": 2}}, data, "f")
    with pytest.raises(RunError, match=r"f: data.channels × text.patch² \(2²\) is 12 but model.in_channels is 3"):
        check_model_shape({"kind": "t2i", "model": {"in_channels": 3, "image_size": 8}, "text": {"patch": 2}},
                          data, "f")
    latent = {"kind": "ldm", "model": {"in_channels": 4, "image_size": 4},
              "autoencoder": {"digest": "x", "latent_shape": [4, 4, 4]}}
    check_model_shape(latent, data, "f")                                  # the latents' shape, not the data's
    latent["autoencoder"]["latent_shape"] = [8, 4, 4]
    with pytest.raises(RunError, match=r"autoencoder.latent_shape\[0\] is 8 but model.in_channels is 4"):
        check_model_shape(latent, data, "f")
    latent["autoencoder"]["latent_shape"] = "4x4"
    with pytest.raises(RunError, match="latent_shape: expected"):
        check_model_shape(latent, data, "f")
    check_model_shape({"kind": "autoencoder", "model": {"channels": 3, "image_size": 16},
                       "autoencoder": {"kl_weight": 1e-6}}, data, "f")    # an autoencoder's own section


def test_an_autoencoders_dataset_that_is_gone_or_contradicted_is_named(tmp_path, cache, capsys):
    ae = tmp_path / "ae"
    assert main(["train", "autoencoder", "--data", "digits", "--preset", "tiny", "--factor", "2", "--steps", "2",
                 "--quiet", "--out", str(ae)]) == 0
    capsys.readouterr()
    edit(ae, lambda c: c["data"].update(name="a-folder-that-was-moved"))
    code, _, err = cli(capsys, "train", "ldm", "--autoencoder", ae, "--steps", "2", "--out", tmp_path / "l")
    one_line_error(err, f"{ae}/config.json: data.name", "'a-folder-that-was-moved'", "pass --data")
    assert not (tmp_path / "l").exists()
    code, _, err = cli(capsys, "train", "ldm", "--autoencoder", ae, "--data", "digits", "--steps", "2", "--quiet",
                       "--batch-size", "8", "--out", tmp_path / "l")
    assert code == 0, err
    edit(ae, lambda c: c["data"].update(name="digits"))
    code, _, err = cli(capsys, "show", "forward", "--data", "mnist-5k", "--autoencoder", ae, "--out", tmp_path / "f.png")
    one_line_error(err, "--data mnist-5k", "trained on digits")
    assert cli(capsys, "show", "forward", "--autoencoder", ae, "--T", "10", "--out", tmp_path / "f.png")[0] == 0


def test_same_as_stored_reads_nested_sections_folders_and_bools(tmp_path, monkeypatch):
    from trilemma.train.family import _same_as_stored

    (tmp_path / "imgs").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({
        "kind": "ddpm", "preset": "tiny", "data": {"name": str(tmp_path / "imgs")},
        "diffusion": {"schedule": {"name": "linear", "T": 100}, "class_cond": False},
        "model": {"channel_mults": [1, 2]}}))
    monkeypatch.chdir(tmp_path)
    assert _same_as_stored(tmp_path, "T", 100) and not _same_as_stored(tmp_path, "T", 50)
    assert _same_as_stored(tmp_path, "data", "./imgs") and not _same_as_stored(tmp_path, "data", "digits")
    assert _same_as_stored(tmp_path, "channel_mults", (1, 2)) and not _same_as_stored(tmp_path, "channel_mults", (1,))
    assert _same_as_stored(tmp_path, "class_cond", False) and not _same_as_stored(tmp_path, "class_cond", 0)
    assert _same_as_stored(tmp_path, "preset", "tiny") and not _same_as_stored(tmp_path, "lr", 1e-3)  # not stored


def test_equivalent_experiment_settings_are_recorded_the_same(tmp_path, monkeypatch):
    from trilemma.experiments.trilemma import TrilemmaConfig

    (tmp_path / "imgs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert TrilemmaConfig().training_settings() == TrilemmaConfig(minutes=8.0).training_settings()
    assert (TrilemmaConfig(data="imgs").training_settings()["data"]
            == TrilemmaConfig(data=str(tmp_path / "imgs")).training_settings()["data"])
    assert TrilemmaConfig(steps=3).training_settings() != TrilemmaConfig().training_settings()


def test_compare_reuses_eval_json_only_for_this_run_at_its_step_and_options(run, tmp_path, capsys):
    folder = clone(run, tmp_path / "r")
    assert cli(capsys, "eval", folder, "--n", "10", "--steps", "2", "--quiet")[0] == 0
    code, _, err = cli(capsys, "compare", folder, "--n", "10", "--steps", "2", "--out", tmp_path / "c1", "--quiet")
    assert code == 0 and "using" in err and "step 2" in err, err
    code, _, err = cli(capsys, "compare", folder, "--n", "12", "--steps", "2", "--out", tmp_path / "c2", "--quiet")
    assert code == 0 and "not reusing" in err and "not --n 12" in err, err
    code, _, err = cli(capsys, "compare", folder, "--steps", "3", "--out", tmp_path / "c3", "--quiet")
    assert code == 0 and "not reusing" in err and "other --steps" in err, err
    assert cli(capsys, *DDPM[:2], "--resume", "--out", folder, "--steps", "3", "--quiet")[0] == 0
    code, _, err = cli(capsys, "compare", folder, "--n", "10", "--out", tmp_path / "c4", "--quiet")
    assert code == 0 and "the run is at step 3" in err, err
    assert json.loads((tmp_path / "c4" / "compare.json").read_text())["r"]["source"]["step"] == 3
    other = clone(folder, tmp_path / "other")                              # an eval.json of another folder
    code, _, err = cli(capsys, "compare", other, "--n", "10", "--out", tmp_path / "c5", "--quiet")
    assert code == 0 and "not this run folder" in err, err
    code, _, err = cli(capsys, "eval", folder, "--n", "10", "--json", folder / "eval.json")
    one_line_error(err, "eval.json of the run folder")


def test_a_damaged_metrics_log_does_not_stop_a_resume(run, tmp_path, capsys):
    folder = clone(run, tmp_path / "r")
    good = (folder / "metrics.jsonl").read_text()
    with open(folder / "metrics.jsonl", "ab") as f:
        f.write(b'garbage{{{\n{"step": "x"}\n[1, 2]\n\xff\xfe\n{"loss": 1}\n{"step": 99, "loss"')   # torn last line
    code, _, err = cli(capsys, *DDPM[:2], "--resume", "--out", folder, "--steps", "3", "--quiet")
    assert code == 0, err
    assert "dropped 6 damaged line(s)" in err
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [json.loads(line)["step"] for line in good.splitlines()] + [3]


def test_a_cache_that_cannot_be_created_is_one_line_or_skipped(run, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("TRILEMMA_CACHE", str(tmp_path / "file"))
    code, _, err = cli(capsys, "eval", run, "--n", "10", "--steps", "2", "--json", tmp_path / "e.json")
    one_line_error(err, f"TRILEMMA_CACHE={tmp_path / 'file'}", "cannot create", "writable folder")
    code, _, err = cli(capsys, *DDPM, "--steps", "1", "--out", tmp_path / "r")     # the optional caches do without
    assert code == 0, err


def test_a_samples_folder_at_another_size_is_scored_with_a_note(tmp_path, cache, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "s").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "s" / f"{i}.png")
    code, _, err = cli(capsys, "eval", "--samples", tmp_path / "s", "--data", "digits", "--quiet")
    assert code == 0, err
    assert "12 of 12 images are not 8×8 and 12 not grey" in err, err


@pytest.mark.parametrize("change, field", [
    (lambda r: r.update(quality=None), "quality"),
    (lambda r: r["quality"].update(fid="abc"), "quality.fid"),
    (lambda r: r["quality"].update(fid=float("nan")), "quality.fid"),
    (lambda r: r.pop("n"), "n"),
    (lambda r: r["speed"].pop("peak_memory_mb"), "speed.peak_memory_mb"),
    (lambda r: r["speed"].update(images_per_s=-5), "speed.images_per_s"),
    (lambda r: r["coverage"].update(modes_hit=1.5), "coverage.modes_hit"),
    (lambda r: r["feature_net"].update(name=None), "feature_net.name"),
])
def test_compare_checks_every_field_it_reads_of_an_eval_json(run, tmp_path, capsys, change, field):
    assert cli(capsys, "eval", run, "--n", "10", "--steps", "2", "--quiet", "--json", tmp_path / "good.json")[0] == 0
    result = json.loads((tmp_path / "good.json").read_text())
    change(result)
    (tmp_path / "bad.json").write_text(json.dumps(result))
    code, _, err = cli(capsys, "compare", tmp_path / "good.json", tmp_path / "bad.json", "--out", tmp_path / "c")
    assert code == 2
    one_line_error(err, "bad.json", f"field '{field}'")
    code, _, err = cli(capsys, "compare", tmp_path / "good.json", tmp_path / "good.json", "--out", tmp_path / "c")
    assert code == 0, err


def test_options_a_sampler_or_trainer_would_ignore_are_refused_up_front(run, tmp_path, capsys):
    code, _, err = cli(capsys, "sample", run, "--n", "2", "--sampler", "unipc", "--variance", "beta")
    assert code == 2 and "sampling" not in err                               # before any network evaluation
    one_line_error(err, "--variance beta", "only the ddpm sampler")
    assert cli(capsys, "sample", run, "--n", "2", "--sampler", "ddpm", "--steps", "4", "--variance", "beta",
               "--quiet", "--out", tmp_path / "ok.png")[0] == 0
    code, _, err = cli(capsys, "train", "gan", "--data", "digits", "--preset", "tiny", "--steps", "1",
                       "--ema-decay", "0.5", "--out", tmp_path / "g")
    one_line_error(err, "--ema-decay", "--ema")
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("args, words", [
    (("train", "gan", "--ema", "1", "--steps", "1", "--out", "{tmp}/g"), ("unrecognized arguments: 1",
                                                                          "see 'trilemma train gan --help'")),
    (("show", "schedules", "--zz"), ("unrecognized arguments: --zz", "see 'trilemma show schedules --help'")),
    (("train", "vae", "--data", "digits", "--steps", "2", "--minutes", "1", "--out", "{tmp}/v"),
     ("--steps/--minutes", "not both")),
    (("train", "ldm", "--autoencoder", "{tmp}/nothing", "--steps", "2", "--out", "{tmp}/l"),
     ("--autoencoder: ", "no such run folder")),
    (("train", "ddpm", "--data", "{tmp}/moved", "--steps", "2", "--out", "{tmp}/d"), ("moved or deleted?",)),
    (("train", "t2i", "--data", "shapes", "--image-size", "8", "--steps", "2", "--out", "{tmp}/t"),
     ("--image-size 8", "at least 32 px")),
])
def test_messages_name_what_the_user_typed(tmp_path, capsys, args, words):
    code, _, err = cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    one_line_error(err, *words)


def test_eval_refuses_too_few_images_by_its_option(tmp_path, capsys):
    code, _, err = cli(capsys, "eval", "--samples", tmp_path, "--data", "digits", "--n", "5")
    one_line_error(err, "--n: the metrics need at least 10 images, got 5")


def test_eval_of_a_run_without_test_images_fails_before_sampling(tmp_path, cache, capsys):
    import numpy as np
    from PIL import Image

    (tmp_path / "one").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "one" / "a.png")
    assert cli(capsys, "train", "ddpm", "--data", tmp_path / "one", "--preset", "tiny", "--steps", "1",
               "--batch-size", "1", "--quiet", "--out", tmp_path / "r")[0] == 0
    code, _, err = cli(capsys, "eval", tmp_path / "r", "--n", "10", "--steps", "2")
    assert "sampling" not in err
    one_line_error(err, "test split", "is empty")


def test_demo_resume_continues_only_a_demo_and_keeps_its_options(run, tmp_path, cache, capsys):
    demo = ["demo", "--data", "digits", "--preset", "tiny", "--ddpm-n", "1", "--ddim-n", "1"]
    assert cli(capsys, *demo, "--steps", "4", "--out", tmp_path / "d")[0] == 0
    assert json.loads((tmp_path / "d" / "demo.json").read_text())["data"] == "digits"
    code, _, err = cli(capsys, "demo", "--resume", "--steps", "6", "--data", "mnist-5k", "--lr", "0.5",
                       "--out", tmp_path / "d")
    one_line_error(err, "--data, --lr cannot change when resuming")
    assert cli(capsys, *demo, "--resume", "--steps", "5", "--out", tmp_path / "d")[0] == 0   # the same options
    folder = clone(run, tmp_path / "plain")                               # a `trilemma train ddpm` run
    before = sorted(p.name for p in folder.iterdir())
    code, _, err = cli(capsys, "demo", "--resume", "--steps", "3", "--out", folder)
    one_line_error(err, "is not a demo folder", "trilemma train KIND --resume")
    assert sorted(p.name for p in folder.iterdir()) == before             # no autoencoder trained into it


def test_the_latent_t2i_recipe_checks_phase_two_options_before_training_phase_one(tmp_path, capsys):
    recipe = ["train", "t2i", "--preset", "tiny", "--recipe", "latent", "--steps", "4", "--quiet"]
    code, _, err = cli(capsys, *recipe, "--data", "shapes", "--patch", "2", "--out", tmp_path / "p")
    one_line_error(err, "--patch 2", "latent")
    code, _, err = cli(capsys, *recipe, "--data", "digits", "--out", tmp_path / "d")
    one_line_error(err, "digits has no captions")
    assert not (tmp_path / "p").exists() and not (tmp_path / "d").exists()   # no autoencoder, no recipe.json


def test_steps_experiment_names_nfe_and_only_rank_zero_reports(run, tmp_path, capsys, monkeypatch):
    code, _, err = cli(capsys, "experiment", "steps", run, "--out", tmp_path / "s", "--nfe", "10000",
                       "--samplers", "ddim", "--n", "20", "--no-reference")
    one_line_error(err, "--nfe 10000: ddim:", "between 1 and T=100")
    assert not (tmp_path / "s").exists()

    from trilemma.cli.train import report
    from trilemma.train.loop import FitResult

    result = FitResult(run_dir=run, step=3, elapsed_s=1.0, interrupted=False, last_loss=0.5)
    monkeypatch.setenv("RANK", "1")
    assert report(result) == 0 and capsys.readouterr().err == ""            # torchrun's other ranks stay quiet
    monkeypatch.setenv("RANK", "0")
    assert report(result) == 0 and "trained 3 steps" in capsys.readouterr().err


def test_ui_refuses_an_address_it_cannot_listen_on_in_one_line(tmp_path):
    import socket

    from trilemma.cli.ui import check_listen

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TrilemmaError, match=f"--port {port}: cannot listen there"):
            check_listen("127.0.0.1", port)
    check_listen("127.0.0.1", port)                                        # free again
    for host in ("999.1.1.1", "example.invalid"):
        with pytest.raises(TrilemmaError, match=f"--host {host}: not an address"):
            check_listen(host, port)


def test_generate_takes_the_seeds_the_command_line_takes(run):
    import numpy as np

    r = load_run(run, device="cpu")
    assert torch.equal(r.generate(2, seed=np.int64(3), progress=False), r.generate(2, seed=3, progress=False))
    for seed in (-1, 2**63, 1.5, True, "3"):
        with pytest.raises(TrilemmaError, match="--seed: must be an integer"):
            r.generate(2, seed=seed, progress=False)


def test_show_trajectory_says_when_fewer_columns_exist_than_asked(run, tmp_path, capsys):
    code, _, err = cli(capsys, "show", "trajectory", run, "--columns", "50", "--steps", "2", "--sampler", "ddim",
                       "--out", tmp_path / "t.png")
    assert code == 0 and "--columns 50: these sampling options pass through only 3 states" in err, err
