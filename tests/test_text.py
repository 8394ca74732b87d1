"""Text side of text-to-image: the frozen encoder (offline, cached, padding), captions, the shapes
dataset and its exact scorer."""

import socket
from collections import Counter

import numpy as np
import pytest
import torch

from trilemma.data import load_dataset
from trilemma.errors import DataError, TrilemmaError
from trilemma.data import captions as caps
from trilemma.data import shapes
from trilemma.t2i.encoder import TextEncoder, pad_tokens


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """all-MiniLM-L6-v2 loaded once, with HF_HUB_OFFLINE=1 and every socket connection refused."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRILEMMA_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        enc = TextEncoder()
        enc.load()
        yield enc


def test_text_encoder_loads_offline_and_returns_tokens_and_mask(encoder):
    assert encoder.loaded and encoder.width == 384 and encoder.name == "all-MiniLM-L6-v2"
    context, mask = encoder.encode(["", "a red circle to the left of a blue square"])
    assert context.shape[0] == 2 and context.shape[2] == 384 and mask.dtype == torch.bool
    assert mask[0].sum() == 2                          # ∅ = "" is [CLS] [SEP]
    assert mask[1].sum() == context.shape[1]           # the longest prompt fills the length
    assert torch.all(context[0, 2:] == 0)              # padding is zeros
    assert torch.isfinite(context).all()


def test_prompt_embeddings_are_cached_on_disk(encoder, monkeypatch):
    prompts = ["two green triangles", "a blue diamond"]
    first = encoder.embed(prompts)
    fresh = TextEncoder()                              # a new instance: only the disk cache is shared
    monkeypatch.setattr(fresh, "load", lambda: pytest.fail("the encoder network should not be loaded"))
    again = fresh.embed(prompts)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert fresh.key == encoder.key and not fresh.loaded


def test_padding_in_the_encoder_does_not_change_real_tokens(encoder):
    """BERT's attention mask: a prompt's token states are the same alone or padded in a batch."""
    alone = encoder._run(["a red circle"])[0]
    batched = encoder._run(["a red circle", "a yellow square to the right of a cyan triangle"])[0]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)


def test_cross_attention_ignores_padded_tokens(encoder):
    """Changing the padding (its length and its values) changes nothing in the U-Net's output."""
    from dataclasses import replace

    from trilemma.nets.unet import UNet, preset

    torch.manual_seed(0)
    model = UNet(replace(preset("tiny", 8, 4), context_dim=384)).eval()
    for p in model.parameters():                       # zero-initialised output layers would hide everything
        p.data.normal_(0, 0.05)
    prompts = ["a red circle", "two blue squares above a cyan diamond"]
    hidden = encoder.embed(prompts)
    c1, m1 = pad_tokens(hidden)
    c2, m2 = pad_tokens(hidden, length=c1.shape[1] + 7)
    c2[~m2] = torch.randn(int((~m2).sum()), 384) * 5   # garbage in every padded slot
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 20])
    with torch.no_grad():
        a = model(x, t, context=c1, context_mask=m1)
        b = model(x, t, context=c2, context_mask=m2)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        c3 = c2.clone()
        c3[0, 0] += 1.0                                # a real token changes: the output does
        assert not torch.allclose(model(x, t, context=c3, context_mask=m2)[0], a[0], atol=1e-4)


def test_bad_encoder_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(TrilemmaError, match="not a folder"):
        TextEncoder(str(tmp_path / "missing"))
    with pytest.raises(TrilemmaError, match="config.json"):
        TextEncoder(str(tmp_path))


# ----------------------------------------------------------------------------- captions
def test_captioned_builtins_use_seen_templates_deterministically():
    data = load_dataset("mnist-5k-captions", "train")
    assert data.captions is not None and len(data.captions) == len(data)
    seen = {p for p, _ in caps.class_prompts("mnist-5k", "seen")}
    held = {p for p, _ in caps.class_prompts("mnist-5k", "held_out")}
    assert set(data.captions) <= seen and not seen & held
    for caption, label in zip(data.captions[:200], data.labels[:200].tolist()):
        assert caps.DIGIT_WORDS[label] in caption or str(label) in caption
    assert load_dataset("mnist-5k-captions", "train").captions == data.captions
    assert "an eight" in {p for p, c in caps.class_prompts("mnist-5k") if c == 8}
    assert "an ankle boot" in {p for p, c in caps.class_prompts("fashion-mnist") if c == 9}
    assert len(set(data.captions)) == len(caps.DIGIT_TEMPLATES["seen"]) * 10   # every seen template is used


def test_unknown_or_uncaptionable_datasets_fail_in_one_line():
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("no-such-set")
    with pytest.raises(DataError, match="left of"):
        load_dataset("shapes", hflip=True)
    with pytest.raises(DataError, match="RGB"):
        load_dataset("shapes", channels=1)


# ----------------------------------------------------------------------------- shapes
def test_prompts_round_trip_through_the_grammar():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = shapes.random_scene(rng)
        for text in {shapes.caption(scene), shapes.caption(scene, rng)}:
            assert shapes.parse_prompt(text) == scene
    assert shapes.parse_prompt("A red circle left of a blue square.") == shapes.Scene(
        "relation", (shapes.Obj("red", "circle"), shapes.Obj("blue", "square")), "left of")
    with pytest.raises(TrilemmaError, match="grammar"):
        shapes.parse_prompt("a photo of a cat")


def test_shapes_are_deterministic_from_the_seed():
    a, ca = shapes.make_shapes(50, seed=3)
    b, cb = shapes.make_shapes(50, seed=3)
    c, cc = shapes.make_shapes(50, seed=4)
    assert np.array_equal(a, b) and ca == cb
    assert not np.array_equal(a, c)
    assert a.shape == (50, 3, 32, 32) and a.dtype == np.uint8


@pytest.mark.parametrize("size", [32, 64])
def test_scorer_is_exact_on_the_datasets_own_images(size):
    images, captions = shapes.make_shapes(1500 if size == 32 else 300, seed=11, size=size)
    result = shapes.score_images(images, captions)
    assert all(v == 1.0 for v in result["accuracy"].values()), result["accuracy"]
    kinds = Counter(shapes.parse_prompt(c).kind for c in captions)
    assert set(kinds) == set(shapes.KINDS)
    assert result["n"]["position"] == kinds["relation"] > 0
    assert result["n"]["binding"] == kinds["relation"] + kinds["pair"]


def test_scorer_falls_to_chance_on_shuffled_captions():
    """Single-object prompts against other single-object images: object 1/4, colour 1/6, both 1/24."""
    rng = np.random.default_rng(0)
    scenes = [shapes.random_scene(rng, "single") for _ in range(2000)]
    images = np.stack([shapes.render(s, shapes.place(s, rng, 32), 32) for s in scenes])
    prompts = [shapes.caption(s) for s in scenes]
    shuffled = [prompts[i] for i in rng.permutation(len(prompts))]
    acc = shapes.score_images(images, shuffled)["accuracy"]
    se = lambda p: 4 * np.sqrt(p * (1 - p) / len(scenes))                  # noqa: E731  (4 standard errors)
    assert abs(acc["object"] - 1 / 4) < se(1 / 4)
    assert abs(acc["colour"] - 1 / 6) < se(1 / 6)
    assert abs(acc["overall"] - 1 / 24) < se(1 / 24)
    assert acc["count"] == 1.0                                              # every image has one object
    # and over the whole caption distribution, shuffling leaves only chance (far from 100%)
    mixed, captions = shapes.make_shapes(600, seed=5)
    acc = shapes.score_images(mixed, [captions[i] for i in rng.permutation(600)])["accuracy"]
    assert acc["overall"] < 0.05 and acc["binding"] < 0.05 and acc["position"] < 0.1


def test_scorer_reads_each_category():
    scene = shapes.parse_prompt("a red circle to the left of a blue square")
    boxes = [(2, 10, 11), (18, 10, 11)]
    good = shapes.render(scene, boxes, 32)
    assert all(shapes.score_image(good, scene).values())
    swapped = shapes.render(scene, boxes[::-1], 32)                  # blue square left of red circle
    v = shapes.score_image(swapped, scene)
    assert v["object"] and v["colour"] and v["binding"] and v["count"] and not v["position"] and not v["overall"]
    recoloured = shapes.render(shapes.parse_prompt("a blue circle left of a red square"), boxes, 32)
    v = shapes.score_image(recoloured, scene)
    assert v["position"] and v["colour"] and not v["binding"] and not v["overall"]
    v = shapes.score_image(np.zeros((3, 32, 32), np.uint8), "two green triangles")
    assert not any(v.values())
    with pytest.raises(TrilemmaError, match="no prompts"):
        shapes.score_images(np.zeros((0, 3, 32, 32), np.uint8), [])
