"""Text-to-image end to end: caption dropout, classifier-free guidance, training and exact resume,
SDEdit, prompt accuracy and the CLI (tiny U-Net, a small shapes dataset, a few steps)."""

import json

import numpy as np
import pytest
import torch
from helpers import cli, one_line_error, small_shapes

from trilemma.data import shapes
from trilemma.diffusion.denoiser import Denoiser
from trilemma.diffusion.schedule import ScheduleConfig
from trilemma.errors import TrilemmaError
from trilemma.registry import load_run
from trilemma.run import SampleOptions
from trilemma.t2i import train as t2i
from trilemma.t2i.edit import edit_images, edit_timesteps
from trilemma.t2i.run import TextDiffusionRun
from trilemma.utils.io import load_tensors

TINY = dict(preset="tiny", batch_size=8, schedule=ScheduleConfig(T=100), progress=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private cache, a 96-image shapes training set and tiny preview grids for the whole module."""
    with small_shapes(96, 32, 2, cache=tmp_path_factory.mktemp("cache")):
        yield tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def run_dir(env):
    out = env / "shapes"
    t2i.train_t2i(out, data="shapes", steps=4, **TINY)
    return out


def randomised(run: TextDiffusionRun) -> TextDiffusionRun:
    """The run with random weights: after 4 steps its zero-initialised output layer still hides the context."""
    g = torch.Generator().manual_seed(0)
    for p in run.model.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return run


# ----------------------------------------------------------------------------- training
def test_training_writes_a_t2i_run_folder(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "model.safetensors", "ema.safetensors", "metrics.jsonl", "state", "samples"} <= names
    config = json.loads((run_dir / "config.json").read_text())
    assert config["kind"] == "t2i" and config["text"]["encoder"] == "all-MiniLM-L6-v2"
    assert config["model"]["context_dim"] == 384 and config["model"]["in_channels"] == 12   # 3 × 2² patches
    assert config["diffusion"]["cond_drop"] == 0.1 and config["data"]["name"] == "shapes"
    run = load_run(run_dir, "cpu")
    assert isinstance(run, TextDiffusionRun) and run.image_shape == (3, 32, 32)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)


def test_resume_is_bit_exact(env, run_dir):
    out = env / "resumed"
    t2i.train_t2i(out, data="shapes", steps=2, **TINY)
    t2i.train_t2i(out, steps=4, resume=True, progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_tensors(run_dir / name), load_tensors(out / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


class StubEncoder:
    """Stands in for MiniLM: one (words + 2, 4) tensor per prompt."""

    def embed(self, prompts, progress=False):
        return [torch.full((len(p.split()) + 2, 4), float(len(p))) for p in prompts]


def test_caption_dropout_replaces_the_measured_share_by_the_empty_prompt():
    captions = [f"caption {i % 50}" for i in range(1000)]
    table = t2i.CaptionTable(StubEncoder(), captions, torch.device("cpu"))
    assert table.unique[0] == "" and len(table) == 51
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(1000, (200_000,), generator=g)
    rows = t2i.caption_rows(table, idx, 0.1, g)
    dropped = (rows == 0).float().mean().item()
    assert abs(dropped - 0.1) < 4 * np.sqrt(0.1 * 0.9 / len(idx))       # within 4 standard errors
    kept = rows != 0
    assert torch.equal(rows[kept], table.index[idx][kept])             # the others keep their own caption
    assert (t2i.caption_rows(table, idx, 0.0, g) != 0).all()
    batch = table.lookup(rows[:5])
    assert batch["context"].shape == (5, table.context.shape[1], 4) and batch["context_mask"].dtype == torch.bool


# ----------------------------------------------------------------------------- guidance
def test_guidance_formula_and_w1_is_the_conditional_prediction(run_dir):
    run = randomised(load_run(run_dir, "cpu"))
    cond, uncond = run.conditioning(3, SampleOptions(prompt="a red circle to the left of a blue square"))
    x, t = torch.randn(3, 12, 16, 16), torch.tensor([10, 50, 90])
    with torch.no_grad():
        eps_c, eps_u = run.model(x, t, **cond), run.model(x, t, **uncond)
        assert not torch.allclose(eps_c, eps_u, atol=1e-4)               # the prompt matters
        for w in (0.0, 3.0, 7.5):
            guided = Denoiser(run.model, guidance=w, uncond=uncond).raw(x, t, cond)
            torch.testing.assert_close(guided, eps_u + w * (eps_c - eps_u), atol=1e-5, rtol=1e-5)
        calls = []

        def counting(*args, **kwargs):
            calls.append(args[0].shape[0])
            return run.model(*args, **kwargs)

        plain = Denoiser(counting, guidance=1.0, uncond=uncond).raw(x, t, cond)
        assert torch.equal(plain, eps_c) and calls == [3]               # w = 1: one conditional pass, no ∅
        calls.clear()
        Denoiser(counting, guidance=4.0, uncond=uncond).raw(x, t, cond)
        assert calls == [6]                                              # cond and ∅ halves in one batch


def test_negative_prompt_replaces_the_empty_prompt(run_dir):
    run = load_run(run_dir, "cpu")
    _, uncond = run.conditioning(2, SampleOptions(prompt="a red circle"))
    _, negative = run.conditioning(2, SampleOptions(prompt="a red circle", negative="two green triangles"))
    empty, empty_mask = run.encoder.encode([""])
    neg, neg_mask = run.encoder.encode(["two green triangles"])
    assert torch.equal(uncond["context_mask"][0, :empty_mask.shape[1]], empty_mask[0])
    torch.testing.assert_close(uncond["context"][0, :2], empty[0, :2])
    torch.testing.assert_close(negative["context"][1, :neg.shape[1]], neg[0])


def test_sampling_is_seeded_and_follows_the_prompt_argument(run_dir):
    run = load_run(run_dir, "cpu")
    opts = SampleOptions(steps=3, guidance=3.0, prompt="two blue squares")
    a = run.generate(2, seed=1, options=opts, progress=False)
    b = run.generate(2, seed=1, options=opts, progress=False)
    assert torch.equal(a, b) and a.shape == (2, 3, 32, 32) and a.dtype == torch.uint8
    per_image = run.sample_batch(2, run.generator(0), SampleOptions(steps=2, prompt=("a red circle", "a cyan square")))
    assert per_image.shape == (2, 3, 32, 32)
    with pytest.raises(TrilemmaError, match="prompts for a batch"):
        run.sample_batch(3, run.generator(0), SampleOptions(steps=2, prompt=("a red circle",)))
    assert run.nfe(SampleOptions(steps=10, guidance=4.0)) == 20 and run.nfe(SampleOptions(steps=10)) == 10


# ----------------------------------------------------------------------------- SDEdit
def test_edit_timesteps_end_at_t0():
    taus = edit_timesteps(1000, 0.6, "ddim", 50)
    assert taus[-1] == 600 and len(taus) == 30 and all(b > a for a, b in zip(taus, taus[1:]))
    assert edit_timesteps(1000, 0.6, "ddpm", None) == list(range(1, 601))
    assert edit_timesteps(1000, 1.0, "ddim", 10)[-1] == 1000 and edit_timesteps(1000, 0.0, "ddim", 50) == []
    for bad in (-0.1, 1.5):
        with pytest.raises(TrilemmaError, match="--strength"):
            edit_timesteps(1000, bad, "ddim", 50)


def test_edit_with_strength_zero_returns_the_input(run_dir):
    from trilemma.data import load_dataset, to_float

    run = load_run(run_dir, "cpu")
    x = to_float(load_dataset("shapes", "test").images[:3])
    assert torch.equal(edit_images(run, x, "a red circle", 0.0), x)
    opts = SampleOptions(steps=4, guidance=2.0)
    y1 = edit_images(run, x, "a red circle", 0.5, opts, run.generator(0))
    y2 = edit_images(run, x, "a red circle", 0.5, opts, run.generator(0))
    assert torch.equal(y1, y2) and not torch.equal(y1, x) and y1.shape == x.shape
    ddpm = edit_images(run, x, "a red circle", 0.05, SampleOptions(sampler="ddpm"), run.generator(0))
    assert ddpm.shape == x.shape


def test_latent_space_run_and_edit_up_to_the_autoencoder(env):
    from trilemma.autoencoder.train import train_autoencoder
    from trilemma.data import load_dataset, to_float

    ae = env / "ae"
    train_autoencoder(ae, data="shapes", preset="tiny", steps=2, batch_size=8, progress=False,
                      recon_fid=False)
    out = env / "latent"
    t2i.train_t2i(out, data="shapes", autoencoder=ae, steps=2, **TINY)
    run = load_run(out, "cpu")
    assert json.loads((out / "config.json").read_text())["autoencoder"]["digest"]
    x = to_float(load_dataset("shapes", "test").images[:2])
    torch.testing.assert_close(edit_images(run, x, "a red circle", 0.0), run.space.reconstruct(x), atol=1e-5, rtol=0)
    assert run.generate(2, options=SampleOptions(steps=2, prompt="a red circle", guidance=2.0),
                        progress=False).shape == (2, 3, 32, 32)


# ----------------------------------------------------------------------------- prompt accuracy
def test_evaluate_prompts_on_shapes(run_dir):
    from trilemma.t2i import evaluate_prompts, format_prompt_table

    run = load_run(run_dir, "cpu")
    result = evaluate_prompts(run, "shapes", n=8, guidances=(0.0, 2.0), options=SampleOptions(steps=2),
                              progress=False)
    assert list(result["columns"]) == ["data, shuffled", "w=0 (∅)", "w=2"]
    for column in result["columns"].values():
        assert set(column["accuracy"]) == {*shapes.CATEGORIES, "overall"}
        assert all(v is None or 0 <= v <= 1 for v in column["accuracy"].values())
    assert result["columns"]["w=2"]["n"]["position"] == 2                  # every fourth prompt is a relation
    table = format_prompt_table(result)
    assert "binding" in table and "overall" in table and "w=0 (∅)" in table
    with pytest.raises(TrilemmaError, match="unknown benchmark"):
        evaluate_prompts(run, "cats")
    with pytest.raises(TrilemmaError, match="at least one prompt"):
        evaluate_prompts(run, "shapes", n=-1)
    with pytest.raises(TrilemmaError, match="trained on shapes"):
        evaluate_prompts(run, "fashion-mnist-captions")


# ----------------------------------------------------------------------------- the command line
def test_cli_end_to_end(env, capsys, tmp_path):
    from PIL import Image

    run = env / "cli"
    code, _, err = cli(capsys, "train", "t2i", "--data", "shapes", "--preset", "tiny", "--steps", 2, "--batch-size",
                       4, "--T", 100, "--out", run, "--quiet")
    assert code == 0, err
    code, _, err = cli(capsys, "generate", run, "a red circle left of a blue square", "--n", 3, "--guidance", 4,
                       "--steps", 2, "--seed", 0, "--negative", "a green square", "--out", tmp_path / "x.png",
                       "--npz", tmp_path / "x.npz", "--quiet")
    assert code == 0, err
    assert np.load(tmp_path / "x.npz")["images"].shape == (3, 32, 32, 3) and (tmp_path / "x.png").is_file()
    assert "4 network evaluations" in err                                  # 2 steps × (cond + ∅)
    Image.fromarray(np.load(tmp_path / "x.npz")["images"][0]).save(tmp_path / "in.png")
    code, _, err = cli(capsys, "edit", run, tmp_path / "in.png", "a blue square", "--strength", 0.6, "--steps", 3,
                       "--out", tmp_path / "y.png", "--npz", tmp_path / "y.npz", "--quiet")
    assert code == 0, err
    assert np.load(tmp_path / "y.npz")["images"].shape == (1, 32, 32, 3)
    code, _, err = cli(capsys, "edit", run, tmp_path / "in.png", "a blue square", "--strength", 0, "--out",
                       tmp_path / "z.png", "--npz", tmp_path / "z.npz", "--quiet")
    assert code == 0 and np.array_equal(np.load(tmp_path / "z.npz")["images"][0],
                                        np.load(tmp_path / "x.npz")["images"][0])
    code, out, err = cli(capsys, "eval", run, "--prompts", "shapes", "--n", 4, "--steps", 2, "--quiet",
                         "--json", tmp_path / "acc.json")
    assert code == 0, err
    assert "overall" in out and "binding" in out
    assert json.loads((tmp_path / "acc.json").read_text())["benchmark"] == "shapes"
    code, _, err = cli(capsys, "sample", run, "--n", 2, "--steps", 2, "--guidance", 2, "--out", tmp_path / "s.png",
                       "--quiet")
    assert code == 0, err


def test_cli_errors_are_one_line(env, capsys, tmp_path, run_dir):
    other = tmp_path / "ddpm"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"kind": "ddpm"}))
    code, _, err = cli(capsys, "generate", other, "a red circle")
    assert code == 2
    one_line_error(err, "text-to-image")
    code, _, err = cli(capsys, "generate", run_dir, "  ")
    assert code == 2
    one_line_error(err, "PROMPT")
    code, _, err = cli(capsys, "edit", run_dir, tmp_path / "missing.png", "a red circle")
    assert code == 2
    one_line_error(err, "missing.png")
    code, _, err = cli(capsys, "edit", run_dir, tmp_path / "missing.png", "a red circle", "--strength", 1.5)
    assert code == 2
    one_line_error(err, "--strength")
    code, _, err = cli(capsys, "train", "t2i", "--data", "no-such-data", "--steps", 1, "--out", tmp_path / "r")
    assert code == 2
    one_line_error(err, "unknown dataset")
    code, _, err = cli(capsys, "train", "t2i", "--data", "digits", "--steps", 1, "--out", tmp_path / "r")
    assert code == 2
    one_line_error(err, "no captions")
    code, _, err = cli(capsys, "eval", run_dir, "--prompts", "shapes", "--n", 0)
    assert code == 2
    code, _, err = cli(capsys, "eval", other, "--prompts", "shapes")
    assert code == 2


def test_a_folder_with_metadata_jsonl_trains(env, tmp_path):
    from PIL import Image

    images, captions = shapes.make_shapes(12, seed=2)
    lines = []
    for i, (image, caption) in enumerate(zip(images, captions)):
        Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    out = env / "folder"
    t2i.train_t2i(out, data=str(tmp_path), steps=1, **{"test_fraction": 0.25}, **TINY)
    run = load_run(out, "cpu")
    assert set(run.dataset_captions()) <= set(captions)
