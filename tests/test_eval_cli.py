"""`trilemma eval` and `trilemma compare` end to end, on scikit-learn's 8x8 digits.

The digits feature network is trained once, with a tiny recipe patched into
``DEFAULT_RECIPE`` (about a second), in a temporary TRILEMMA_CACHE shared by this
module (one per pytest-xdist worker); every eval below reuses it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import TINY_RECIPE

import trilemma.metrics.features as features_mod
from trilemma.cli.main import main

# The CLI in a fresh interpreter, with the tiny recipe as the default.
CLI_WITH_TINY_RECIPE = (
    "import sys, trilemma.metrics.features as f; f.DEFAULT_RECIPE.update({recipe!r}); "
    "from trilemma.cli.main import main; sys.exit(main(sys.argv[1:]))"
).format(recipe=TINY_RECIPE)


@pytest.fixture(scope="module")
def cache(cache):
    features_mod.get_feature_network("digits", progress=False)  # trained once per test process
    return cache


@pytest.fixture(scope="module")
def samples(cache, tmp_path_factory):
    """An .npz of 150 real digits test images (N, H, W, C), like another library would save."""
    from trilemma.data import load_dataset

    images = load_dataset("digits", split="test").images[:150].permute(0, 2, 3, 1).numpy()
    path = tmp_path_factory.mktemp("samples") / "digits.npz"
    np.savez(path, images=images)
    return path


def test_eval_samples_in_a_subprocess(cache, samples, tmp_path):
    out = tmp_path / "eval.json"
    env = {**os.environ, "TRILEMMA_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", CLI_WITH_TINY_RECIPE, "eval", "--samples", str(samples),
                           "--data", "digits", "--json", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "FID" in proc.stdout and "feature network" in proc.stdout
    result = json.loads(out.read_text())
    assert result["n"] == 150 and result["source"]["kind"] == "samples"
    assert result["feature_net"]["objective"] == "classifier"
    assert result["feature_net"]["test_accuracy"] > 0.6
    assert result["feature_net"]["recipe"]["steps"] == TINY_RECIPE["steps"]


def test_eval_samples_in_process_reuses_the_cache(cache, samples, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("the feature network should come from the cache")

    monkeypatch.setattr(features_mod, "train_feature_net", refuse)
    out = tmp_path / "eval.json"
    assert main(["eval", "--samples", str(samples), "--data", "digits", "--json", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "recall" in printed
    result = json.loads(out.read_text())
    assert result["memorisation"]["exact_copy_fraction"] == 0.0

    # compare: a JSON twice (labels made unique) -> markdown table and plot
    out_dir = tmp_path / "cmp"
    assert main(["compare", str(out), str(out), "--out", str(out_dir)]) == 0
    table = (out_dir / "compare.md").read_text()
    assert "| eval |" in table and "| eval (2) |" in table and "FID" in table
    assert (out_dir / "trilemma.png").stat().st_size > 1000


def test_eval_samples_from_a_folder(cache, tmp_path, capsys):
    from PIL import Image

    from trilemma.data import load_dataset

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(load_dataset("digits", split="test").images[:40, 0].numpy()):
        Image.fromarray(image).save(folder / f"{i}.png")
    out = tmp_path / "eval.json"
    assert main(["eval", "--samples", str(folder), "--data", "digits", "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["n"] == 40


@pytest.mark.parametrize("args, message", [
    (["eval"], "either a RUN folder or --samples"),
    (["eval", "--samples", "nope.npz", "--data", "digits"], "nope.npz: no such file"),
    (["eval", "--samples", "{npz}"], "--samples needs --data"),
    (["eval", "--samples", "{npz}", "--data", "digits", "--steps", "5"], "apply to a RUN"),
    (["eval", "--samples", "{npz}", "--data", "digits", "--sampler", "dpmpp-2m-sde"], "(--sampler) apply to a RUN"),
    (["eval", "--samples", "{npz}", "--data", "digits", "--no-clip", "--spacing", "karras"], "--spacing, --no-clip"),
    (["eval", "{tmp}", "--n", "20"], "no such run folder"),
    (["eval", "--samples", "{bad}", "--data", "digits"], "not a readable .npz"),
    (["eval", "--samples", "{float}", "--data", "digits"], "dtype float32"),
    (["eval", "--samples", "{shape}", "--data", "digits"], "do not match"),
    (["compare", "{bad}", "--out", "{tmp}"], "not valid JSON"),
])
def test_bad_input_is_one_line(cache, samples, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    flt = tmp_path / "float.npz"
    np.savez(flt, images=np.zeros((4, 8, 8, 1), np.float32))
    shape = tmp_path / "shape.npz"
    np.savez(shape, np.zeros((4, 9, 9), np.uint8))
    names = {"npz": samples, "bad": bad, "float": flt, "shape": shape, "tmp": tmp_path / "o"}
    argv = [a.format(**names) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trilemma: error:") and message in err and "\n" not in err


@pytest.fixture(scope="module")
def ddpm_run(cache, tmp_path_factory):
    """A 3-step tiny DDPM on digits (T = 100): a real run folder, quality irrelevant."""
    out = tmp_path_factory.mktemp("runs") / "ddpm"
    assert main(["train", "ddpm", "--data", "digits", "--preset", "tiny", "--steps", "3",
                 "--batch-size", "8", "--out", str(out), "--quiet", "--T", "100"]) == 0
    return out


def test_eval_a_run_then_compare_reuses_its_eval_json(cache, ddpm_run, samples, tmp_path, monkeypatch,
                                                      capsys):
    assert main(["eval", str(ddpm_run), "--n", "40", "--sampler", "ddim", "--steps", "3",
                 "--batch-size", "20", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "from run" in printed and "ddim" in printed
    result = json.loads((ddpm_run / "eval.json").read_text())
    assert result["n"] == 40 and result["source"]["run_kind"] == "ddpm"
    assert result["source"]["sampling"]["sampler"] == "ddim" and result["source"]["sampling"]["steps"] == 3
    speed = result["speed"]
    assert speed["nfe"] == 3 and speed["images_per_s"] > 0 and speed["batch_size"] == 20
    assert speed["timed_batches"] == 1  # the second of two batches; the first warms up
    assert speed["peak_memory_mb"] is None or speed["peak_memory_mb"] > 0

    import trilemma.metrics.evaluate as evaluate_mod

    def refuse(*args, **kwargs):
        raise AssertionError("compare should reuse RUN/eval.json")

    monkeypatch.setattr(evaluate_mod, "evaluate_run", refuse)
    other = tmp_path / "other.json"
    assert main(["eval", "--samples", str(samples), "--data", "digits", "--json", str(other),
                 "--quiet"]) == 0
    out_dir = tmp_path / "cmp"
    assert main(["compare", str(ddpm_run), str(other), "--out", str(out_dir), "--x", "nfe"]) == 0
    table = (out_dir / "compare.md").read_text()
    assert "| ddpm | ddim 3 steps | 40 |" in table
    assert "different sample counts" in table  # 40 vs 150 images: flagged
    assert (out_dir / "trilemma.png").is_file()


def test_compare_names_the_sampler_only_where_one_applies():
    from trilemma.metrics.report import sampling_text

    ddim = {"sampler": "ddim", "steps": 50}
    assert sampling_text({"source": {"kind": "run", "run_kind": "ddpm", "sampling": ddim}}) == "ddim 50 steps"
    assert sampling_text({"source": {"kind": "run", "run_kind": "gan", "sampling": ddim}}) == "G(z), 1 pass"
    assert sampling_text({"source": {"kind": "run", "run_kind": "vae", "sampling": ddim}}) == "decoder, 1 pass"
    assert sampling_text({"source": {"kind": "images"}}) == "images"


def test_compare_labels_a_json_of_a_run_by_the_run(tmp_path):
    from trilemma.cli.compare import label_for

    f = tmp_path / "ddim50.json"
    f.write_text("{}")
    assert label_for(str(f), {"source": {"kind": "run", "path": "runs/demo"}}) == "demo"
    assert label_for(str(f), {"source": {"kind": "images", "path": "x.npz"}}) == "ddim50"
    assert label_for(str(tmp_path)) == tmp_path.name


def test_eval_repeats_prints_mean_and_sd_and_compare_shows_them(cache, ddpm_run, tmp_path, capsys):
    """`eval RUN --repeats 2`: two sample sets (seeds 3, 4), mean ± sd printed and saved; compare reuses it."""
    one = tmp_path / "seed4.json"
    assert main(["eval", str(ddpm_run), "--n", "30", "--sampler", "ddim", "--steps", "2", "--batch-size", "30",
                 "--seed", "4", "--json", str(one), "--quiet"]) == 0
    both = tmp_path / "both.json"
    assert main(["eval", str(ddpm_run), "--n", "30", "--sampler", "ddim", "--steps", "2", "--batch-size", "30",
                 "--seed", "3", "--repeats", "2", "--json", str(both), "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(both.read_text())
    fids = result["repeats"]["values"]["quality.fid"]
    assert result["repeats"]["seeds"] == [3, 4] and result["n"] == 30
    assert fids[1] == pytest.approx(json.loads(one.read_text())["quality"]["fid"], rel=1e-9)   # set 2 is seed 4's
    assert result["quality"]["fid"] == pytest.approx(sum(fids) / 2)
    assert "2 sets of 30 samples" in printed and f"{result['quality']['fid']:.2f} ± " in printed
    assert "FID per sampling seed (3, 4)" in printed
    assert json.loads((ddpm_run / "eval.json").read_text())["repeats"]["seeds"] == [3, 4]

    out_dir = tmp_path / "cmp"
    assert main(["compare", str(ddpm_run), "--out", str(out_dir), "--quiet"]) == 0
    table = (out_dir / "compare.md").read_text()
    assert "| 30 × 2 |" in table and f"{result['quality']['fid']:.2f} ± " in table and "n × K" in table
    assert main(["compare", str(ddpm_run), "--out", str(out_dir), "--repeats", "3", "--n", "30", "--quiet",
                 "--sampler", "ddim", "--steps", "2", "--batch-size", "30"]) == 0
    err = capsys.readouterr().err
    assert "not --repeats 3" in err
    assert json.loads((ddpm_run / "eval.json").read_text())["repeats"]["seeds"] == [0, 1, 2]


def test_repeats_bad_input_is_one_line(cache, samples, ddpm_run, capsys):
    assert main(["eval", "--samples", str(samples), "--data", "digits", "--repeats", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trilemma: error:") and "(--repeats) apply to a RUN" in err and "\n" not in err
    with pytest.raises(SystemExit):
        main(["eval", str(ddpm_run), "--repeats", "0"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("trilemma: error: argument --repeats:") and "\n" not in err
