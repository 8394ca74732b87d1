"""The text-path recipe options of `trilemma train t2i` (--text-features, --text-positions, --text-layers,
--heads): the maths of each step, identity at initialisation, padding ignored, and each option trains,
records itself in config.json, resumes exactly and loads for sampling (tiny U-Net, a few steps)."""

import json

import pytest
import torch
from helpers import cli, one_line_error, small_shapes

from trilemma.config import from_dict
from trilemma.diffusion.schedule import ScheduleConfig
from trilemma.errors import TrilemmaError
from trilemma.nets.unet import UNet, UNetConfig
from trilemma.registry import load_run
from trilemma.run import SampleOptions
from trilemma.t2i import train as t2i
from trilemma.t2i.config import T2IConfig
from trilemma.t2i.networks import (
    TextAdapter,
    TextUNet,
    pooled_tokens,
    t2i_network,
    text_features,
)
from trilemma.utils.io import load_tensors

TINY = dict(preset="tiny", batch_size=8, schedule=ScheduleConfig(T=100), progress=False)
CONFIG = UNetConfig(image_size=8, in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                    attn_resolutions=(4,), num_heads=2, dropout=0.0, context_dim=12)


def context_batch(seed: int = 0, B: int = 3, L: int = 7, D: int = 12):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(B, L, D, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 5:] = False
    return context, mask


def garbage_in_padding(context, mask, seed=9):
    return torch.where(mask[..., None], context, 100 * torch.randn(context.shape, generator=torch.Generator().manual_seed(seed)))


def randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


# ----------------------------------------------------------------------------- the maths of each step
def test_pooled_is_the_mean_of_the_real_tokens_and_ignores_padding():
    context, mask = context_batch()
    pooled = pooled_tokens(context, mask)
    for i, n in enumerate([7, 3, 5]):
        torch.testing.assert_close(pooled[i, 0], context[i, :n].mean(0))
    torch.testing.assert_close(pooled_tokens(garbage_in_padding(context, mask), mask), pooled)
    c, m = text_features(context, mask, "pooled")
    assert c.shape == (3, 1, 12) and m.all()
    c, m = text_features(context, mask, "tokens+pooled")
    assert c.shape == (3, 8, 12) and torch.equal(c[:, 0], pooled[:, 0]) and torch.equal(c[:, 1:], context)
    assert torch.equal(m[:, 1:], mask) and m[:, 0].all()
    c, m = text_features(context, mask, "tokens")
    assert c is context and m is mask


def test_default_recipe_is_the_plain_unet_and_every_adapter_starts_as_the_identity():
    assert type(t2i_network(CONFIG, T2IConfig())) is UNet                          # old runs: same keys
    recipe = T2IConfig(positions=True, layers=2)
    torch.manual_seed(0)
    plain = UNet(CONFIG)
    torch.manual_seed(0)
    adapted = t2i_network(CONFIG, recipe)
    assert isinstance(adapted, TextUNet)
    adapted_sd = adapted.state_dict()
    assert all(torch.equal(v, adapted_sd[k]) for k, v in plain.state_dict().items())   # the same U-Net for a seed
    assert set(adapted_sd) - set(plain.state_dict()) == {k for k in adapted_sd if k.startswith("text.")}
    randomise(plain)
    adapted.load_state_dict({**adapted_sd, **plain.state_dict()})
    context, mask = context_batch()
    x, t = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 30, 90])
    with torch.no_grad():
        torch.testing.assert_close(adapted(x, t, context=context, context_mask=mask),
                                   plain(x, t, context=context, context_mask=mask), rtol=0, atol=1e-6)


def test_text_layers_and_positions_see_only_real_tokens_and_positions_encode_order():
    adapter = randomise(TextAdapter(12, T2IConfig(positions=True, layers=2)))
    context, mask = context_batch()
    with torch.no_grad():
        c, m = adapter(context, mask)
        c2, _ = adapter(garbage_in_padding(context, mask), mask)
    assert torch.equal(m, mask)
    torch.testing.assert_close(c[mask], c2[mask])                                 # padding changes no real token
    # without positions the layers are permutation-equivariant; with them, word order matters
    swap = context[:, [1, 0, *range(2, 7)]]
    no_pos = randomise(TextAdapter(12, T2IConfig(layers=1)))
    with torch.no_grad():
        a, _ = no_pos(context[:1], None)
        b, _ = no_pos(swap[:1], None)
        torch.testing.assert_close(b[:, [1, 0, *range(2, 7)]], a)
        p, _ = adapter(context[:1], None)
        q, _ = adapter(swap[:1], None)
    assert (q[:, [1, 0, *range(2, 7)]] - p).abs().max() > 1e-3


def test_old_text_sections_load_with_the_original_recipe():
    text = from_dict(T2IConfig, {"encoder": "all-MiniLM-L6-v2", "max_length": 64, "patch": 2}, "config.json")
    assert (text.features, text.positions, text.layers, text.heads) == ("tokens", False, 0, None)
    with pytest.raises(TrilemmaError, match="features"):
        from_dict(T2IConfig, {"features": "words"}, "config.json")
    with pytest.raises(TrilemmaError, match="text-layers"):
        T2IConfig(layers=-1)


# ----------------------------------------------------------------------------- each option, end to end
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with small_shapes(64, 16, 1, cache=tmp_path_factory.mktemp("cache")):
        yield tmp_path_factory.mktemp("runs")


RECIPES = {
    "pooled": (dict(text_features="pooled"), {"features": "pooled"}),
    "tokens+pooled": (dict(text_features="tokens+pooled"), {"features": "tokens+pooled"}),
    "positions": (dict(text_positions=True), {"positions": True}),
    "layers": (dict(text_layers=1), {"layers": 1}),
    "heads": (dict(heads=4), {"heads": 4}),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_option_trains_records_itself_resumes_and_samples(env, name):
    options, stored = RECIPES[name]
    out = env / name
    t2i.train_t2i(out, data="shapes", steps=2, **options, **TINY)
    config = json.loads((out / "config.json").read_text())
    assert {k: config["text"][k] for k in stored} == stored
    if name == "heads":
        assert config["model"]["num_heads"] == 4
    t2i.train_t2i(out, steps=3, resume=True, progress=False)
    run = load_run(out, "cpu")
    assert run.step == 3 and run.text == from_dict(T2IConfig, config["text"])
    weights = load_tensors(out / "model.safetensors")
    assert isinstance(run.model, TextUNet) == (name != "heads")
    assert any(k.startswith("text.") for k in weights) == (name in ("positions", "layers"))   # pooling: no weights
    if name in ("positions", "layers"):                       # trained: the zero-initialised parts moved
        moved = [k for k in weights if k.startswith("text.") and weights[k].abs().max() > 0]
        assert moved, "the text recipe's parameters did not train"
    images = run.sample_batch(2, run.generator(0), SampleOptions(sampler="ddim", steps=2, guidance=3.0,
                                                                 prompt="a red circle"))
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


def test_a_recipe_run_resumes_bit_exactly(env):
    recipe = dict(text_features="tokens+pooled", text_positions=True, text_layers=1)
    straight, resumed = env / "straight", env / "resumed"
    t2i.train_t2i(straight, data="shapes", steps=3, **recipe, **TINY)
    t2i.train_t2i(resumed, data="shapes", steps=2, **recipe, **TINY)
    t2i.train_t2i(resumed, steps=3, resume=True, progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_tensors(straight / name), load_tensors(resumed / name)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name


def test_recipe_flags_on_the_command_line(env, capsys, tmp_path):
    code, out, _ = cli(capsys, "train", "t2i", "--help")
    assert code == 0
    for flag in ("--text-features", "--text-positions", "--text-layers", "--heads", "--attn-resolutions"):
        assert flag in out
    run = tmp_path / "cli"
    code, _, err = cli(capsys, "train", "t2i", "--data", "shapes", "--preset", "tiny", "--steps", 1, "--batch-size", 4,
                       "--T", 100, "--text-features", "tokens+pooled", "--text-layers", 1, "--text-positions",
                       "--out", run, "--quiet")
    assert code == 0, err
    text = json.loads((run / "config.json").read_text())["text"]
    assert (text["features"], text["layers"], text["positions"]) == ("tokens+pooled", 1, True)
    code, _, err = cli(capsys, "show", "attention", run, "a red circle", "--steps", 2, "--out", tmp_path / "a.png")
    assert code == 0, err
    assert "<pooled> [CLS] a red circle [SEP]" in err
    for args, word in [(("--text-features", "words"), "--text-features"), (("--text-layers", "-1"), "--text-layers"),
                       (("--heads", "3"), "--heads"), (("--heads", "0"), "--heads")]:
        code, _, err = cli(capsys, "train", "t2i", "--data", "shapes", "--preset", "tiny", "--steps", 1,
                           *args, "--out", tmp_path / "bad")
        assert code == 2, (args, err)
        one_line_error(err, word)
