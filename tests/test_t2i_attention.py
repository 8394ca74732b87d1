"""Cross-attention maps of text-to-image runs: the recorded weights are the layers' own softmax over the
text tokens, recording changes nothing, the maps follow the prompt, and `trilemma show attention` draws them."""

import json

import pytest
import torch
from helpers import cli, one_line_error, small_shapes

from trilemma.diffusion.schedule import ScheduleConfig
from trilemma.nets.layers import CrossAttention
from trilemma.nets.unet import UNet, UNetConfig
from trilemma.registry import load_run
from trilemma.run import SampleOptions
from trilemma.t2i import train as t2i
from trilemma.t2i.attention import (
    CrossAttentionRecorder,
    cross_attention_output,
    pick_calls,
    prompt_attention,
    token_maps,
)

TINY = dict(preset="tiny", batch_size=8, schedule=ScheduleConfig(T=100), progress=False)


def random_unet(context_dim: int = 8, seed: int = 0) -> UNet:
    """A tiny cross-attention U-Net with every weight random (zero-initialised outputs would hide the context)."""
    torch.manual_seed(seed)
    net = UNet(UNetConfig(image_size=8, in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                          attn_resolutions=(8, 4), num_heads=2, dropout=0.0, context_dim=context_dim)).eval()
    g = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def inputs(B: int = 3, L: int = 6, D: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, 8, 8, generator=g)
    t = torch.tensor([5, 50, 95])[:B]
    context = torch.randn(B, L, D, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 4:] = False                                     # padded prompts
    mask[2, 2:] = False
    return x, t, context, mask


# ----------------------------------------------------------------------------- the recorder
def test_recorded_weights_are_a_softmax_over_the_real_tokens_and_reproduce_each_layer():
    net = random_unet()
    x, t, context, mask = inputs()
    outputs = {}
    handles = [m.register_forward_hook(lambda m, a, o, n=n: outputs.__setitem__(n, (a, o)))
               for n, m in net.named_modules() if isinstance(m, CrossAttention)]
    with torch.no_grad(), CrossAttentionRecorder(net) as rec:
        net(x, t, context=context, context_mask=mask)
    for h in handles:
        h.remove()
    assert len(rec.calls) == 1 and torch.equal(rec.calls[0].t, t)
    layers = rec.calls[0].layers
    # one cross-attention per transformer block: down 8, 4; middle 4; up 8, 8, 4, 4
    assert len(layers) == len(outputs) == 7
    assert sorted(m.size for m in layers) == [(4, 4)] * 4 + [(8, 8)] * 3
    modules = dict(net.named_modules())
    for m in layers:
        w = m.weights
        assert w.shape == (3, 2, m.size[0] * m.size[1], 6)
        assert (w >= 0).all()
        # softmax over the keys = the tokens, per image position and per head, before any averaging
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), rtol=0, atol=1e-6)
        assert (w[1, :, :, 4:] == 0).all() and (w[2, :, :, 2:] == 0).all()     # padding gets nothing
        assert (w[0] > 0).all()
        # the recorded A is the attention the layer used: W_o Σ_l A v_l is its output
        (x_in, ctx, _), out = outputs[m.name]
        torch.testing.assert_close(cross_attention_output(modules[m.name], w, ctx), out, rtol=1e-5, atol=1e-5)


def test_recording_does_not_change_the_output_and_leaves_no_hook():
    net = random_unet()
    x, t, context, mask = inputs()
    with torch.no_grad():
        plain = net(x, t, context=context, context_mask=mask)
        with CrossAttentionRecorder(net) as rec:
            recorded = net(x, t, context=context, context_mask=mask)
            again = net(x, t, context=context, context_mask=mask)
        after = net(x, t, context=context, context_mask=mask)
    assert torch.equal(plain, recorded) and torch.equal(plain, again) and torch.equal(plain, after)
    assert len(rec.calls) == 2                              # one record per forward pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_token_maps_average_heads_and_layers_and_still_sum_to_one_per_pixel():
    net = random_unet()
    x, t, context, mask = inputs()
    with torch.no_grad(), CrossAttentionRecorder(net) as rec:
        net(x, t, context=context, context_mask=mask)
    call = rec.calls[0]
    maps = token_maps(call, (32, 32))
    assert maps.shape == (3, 6, 32, 32) and (maps >= 0).all()
    torch.testing.assert_close(maps.sum(1), torch.ones(3, 32, 32), rtol=0, atol=1e-5)
    assert (maps[2, 2:] == 0).all()
    # one 4×4 layer, nearest to its own size: the mean over heads of its weights
    only4 = token_maps(call, (4, 4), rows=[0], resolution=4)
    layers4 = [m for m in call.layers if m.size == (4, 4)]
    mean4 = torch.stack([m.weights[0].mean(0) for m in layers4]).mean(0)              # (16, L)
    torch.testing.assert_close(only4[0], mean4.T.reshape(6, 4, 4))
    with pytest.raises(ValueError):
        token_maps(call, (8, 8), resolution=2)


def test_pick_calls_spans_noise_to_image():
    assert pick_calls(50, 5) == [0, 12, 24, 37, 49]
    assert pick_calls(3, 5) == [0, 1, 2] and pick_calls(10, 1) == [9] and pick_calls(0, 3) == []


# ----------------------------------------------------------------------------- on a t2i run
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with small_shapes(64, 16, 1, cache=tmp_path_factory.mktemp("cache")):
        yield tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def run_dir(env):
    out = env / "t2i"
    t2i.train_t2i(out, data="shapes", steps=2, **TINY)
    return out


def randomised(run):
    g = torch.Generator().manual_seed(0)
    for p in run.model.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return run


def test_prompt_attention_follows_the_prompt(run_dir):
    run = randomised(load_run(run_dir, "cpu"))
    options = SampleOptions(sampler="ddim", steps=4, guidance=3.0)
    red = prompt_attention(run, "a red circle", options, seed=0, rows=3)
    assert red.labels == ["[CLS]", "a", "red", "circle", "[SEP]"]
    assert red.special == [True, False, False, False, True]
    assert red.t == [100.0, 50.0, 25.0]                     # DDIM 100, 75, 50, 25: the first, middle and last call
    assert red.maps.shape == (3, 5, 32, 32) and red.frames.shape == (3, 3, 32, 32) and red.image.shape == (3, 32, 32)
    torch.testing.assert_close(red.maps.sum(1), torch.ones(3, 32, 32), rtol=0, atol=1e-5)
    torch.testing.assert_close(red.mean_map.sum(0), torch.ones(32, 32), rtol=0, atol=1e-5)
    again = prompt_attention(run, "a red circle", options, seed=0, rows=3)
    assert torch.equal(red.maps, again.maps)                                  # seeded: the same maps
    blue = prompt_attention(run, "a blue circle", options, seed=0, rows=3)
    assert blue.labels[2] == "blue"
    assert (red.maps - blue.maps).abs().max() > 1e-3                          # another prompt, other maps
    # the first call sees the same x_T with either prompt: the "circle" column moves only through the keys
    assert not torch.equal(red.maps[0, 3], blue.maps[0, 3])


def test_show_attention_writes_a_png_and_refuses_bad_input(env, run_dir, capsys, tmp_path):
    from PIL import Image

    out = tmp_path / "att.png"
    code, _, err = cli(capsys, "show", "attention", run_dir, "a red circle left of a blue square", "--out", out,
                       "--steps", 3, "--rows", 2, "--sampler", "ddim", "--seed", 1, "--guidance", 2)
    assert code == 0, err
    assert "[CLS] a red circle left of a blue square [SEP]" in err
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 200
    code, _, err = cli(capsys, "show", "attention", run_dir, "a red circle", "--out", tmp_path / "b.png",
                       "--steps", 2, "--layer", "8")
    assert code == 0, err
    other = tmp_path / "ddpm"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"kind": "ddpm"}))
    for args, words in [((other, "a red circle"), ("text-to-image",)),
                        ((run_dir, " "), ("PROMPT",)),
                        ((run_dir, "a red circle", "--layer", "x"), ("--layer",)),
                        ((run_dir, "a red circle", "--layer", "5", "--steps", 2), ("--layer", "8")),
                        ((run_dir, "a red circle", "--out", tmp_path / "a.txt"), ("--out",))]:
        code, _, err = cli(capsys, "show", "attention", *args)
        assert code == 2, (args, err)
        one_line_error(err, *words)
