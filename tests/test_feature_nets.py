"""The feature networks shipped for the builtin datasets (trilemma/metrics/feature_nets/).

They make FID & co. comparable across installations: every machine scores with the
same weights instead of a network it retrained itself. What is checked:

- the manifest covers every builtin, with the default recipe, the current code
  version and the canonical data config, and its sha256s and sizes match the files;
- the shipped network's features of the first 16 test images of each builtin match
  the values stored by ``scripts/build_feature_nets.py`` (``expected_features.json``)
  to 1e-5. What is byte-identical on every machine: the weights (sha256-checked at
  load) and the uint8 input images (their sha256 is stored and checked too, so a
  failure says whether the data or the arithmetic moved). What is not: float32
  convolutions and matrix products, whose summation order depends on the CPU's
  kernels (AVX2, AVX-512, NEON, CUDA) and the thread count — they differ in the last
  bits, which is why the comparison is to 1e-5 of the features' scale, not bit-exact.
  Measured against the stored values (largest feature 10-15; the stored values are
  rounded to 1e-7): 5e-8 with torch 2.13's oneDNN kernels on the AMD EPYC (AVX-512) that
  built them, at 1 or 2 threads; 2e-5 with oneDNN disabled there (torch's fallback
  convolution); 3-5e-6 with torch 2.11 on an Intel Xeon at 1, 4 and 16 threads; 3-6e-6
  on an H200 GPU in float32 (1e-3 with TF32, which ``FeatureNetwork.embed`` turns off);
- loading the shipped network trains nothing and writes nothing to the cache, and the
  test accuracy recorded in the manifest is what the network scores here;
- a weights file with one flipped byte (still a valid safetensors file) is refused
  by its checksum with a one-line error;
- every other request (another image size or split, another recipe — as the other
  test modules use — or a copy of the dataset with other images) still trains and
  caches, and the result JSON says which (``feature_net.source``).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from helpers import TINY_RECIPE

from trilemma.data import BUILTIN_DATASETS, DataConfig, load_dataset
from trilemma.errors import TrilemmaError
from trilemma.metrics import features as features_mod
from trilemma.metrics.evaluate import EvalSettings, evaluate_images

MANIFEST = features_mod.shipped_manifest()
EXPECTED = json.loads((features_mod.SHIPPED_DIR / "expected_features.json").read_text())["networks"]
MIN_ACCURACY = {"fashion-mnist": 0.90, "mnist-5k": 0.95, "digits": 0.95}


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A TRILEMMA_CACHE path that does not exist yet: anything written there shows."""
    path = tmp_path / "cache"
    monkeypatch.setenv("TRILEMMA_CACHE", str(path))
    return path


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the shipped feature network should have been loaded, not trained")

    monkeypatch.setattr(features_mod, "train_feature_net", refuse)


def count_training(monkeypatch) -> list:
    calls, real = [], features_mod.train_feature_net
    monkeypatch.setattr(features_mod, "train_feature_net", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def files_under(path) -> list:
    return [p for p in path.rglob("*")] if path.exists() else []


# --- the manifest ------------------------------------------------------------------------------

def test_every_builtin_is_shipped_with_the_default_recipe():
    assert MANIFEST["schema"] == features_mod.SHIPPED_SCHEMA
    assert set(MANIFEST["networks"]) == set(BUILTIN_DATASETS) == set(EXPECTED)
    for name, entry in MANIFEST["networks"].items():
        assert entry["recipe"] == features_mod.DEFAULT_RECIPE, name
        assert entry["code_version"] == features_mod.FEATURE_CODE_VERSION, name
        assert entry["data_config"] == features_mod.canonical_data_config(name).to_dict(), name
        assert entry["objective"] == "classifier" and entry["num_classes"] == 10
        assert entry["test_accuracy"] >= MIN_ACCURACY[name], name
        assert entry["torch_version"] and entry["train_threads"] >= 1


def test_manifest_sha256_matches_the_weights_files():
    from safetensors import safe_open

    for name, entry in MANIFEST["networks"].items():
        path = features_mod.SHIPPED_DIR / entry["file"]
        blob = path.read_bytes()
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"], name
        assert len(blob) == entry["bytes"] < 1_000_000, name  # small enough to ship in the wheel
        with safe_open(str(path), framework="pt") as f:  # safetensors, no pickle
            assert f.metadata()["dataset"] == name


def test_shipped_only_for_the_exact_builtin_request(tmp_path):
    for name in BUILTIN_DATASETS:
        assert features_mod.shipped_entry(name) == MANIFEST["networks"][name]
    # generator-only options and captioned copies hold the same images: same network
    assert features_mod.shipped_entry(DataConfig("digits", hflip=True)) is not None
    assert features_mod.shipped_entry("mnist-5k-captions") == MANIFEST["networks"]["mnist-5k"]
    assert features_mod.shipped_entry("fashion-mnist", {"seed": 0}) is not None  # = the default
    for other in (DataConfig("digits", image_size=16), DataConfig("fashion-mnist", channels=3),
                  DataConfig("mnist-5k", test_fraction=0.2), DataConfig("digits", split_seed=1),
                  DataConfig(str(tmp_path / "digits"))):
        assert features_mod.shipped_entry(other) is None, other
    assert features_mod.shipped_entry("digits", {"seed": 1}) is None
    assert features_mod.shipped_entry("digits", TINY_RECIPE) is None


# --- loading ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_shipped_features_match_the_stored_values(name, empty_cache, no_training):
    entry, expected = MANIFEST["networks"][name], EXPECTED[name]
    fn = features_mod.get_feature_network(name, progress=False)
    assert fn.info["source"] == "shipped" and fn.info["sha256"] == entry["sha256"]
    assert fn.info["hash"] == entry["sha256"][:16] and fn.info["hash"] in fn.info["name"]
    assert fn.info["test_accuracy"] == entry["test_accuracy"] and fn.info["torch_version"]

    images = load_dataset(name, split="test").images[:16]
    assert hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest() == expected["input_sha256"]
    features = fn.features(images)  # (16, 128)
    assert features.shape == (16, entry["feature_dim"])
    reference = np.array(expected["features"])
    # 1e-5 of the features' scale (the largest is 10-15): float32 kernels differ in the last bits
    assert np.abs(features - reference).max() <= 1e-5 * np.abs(reference).max()

    # the accuracy in the manifest is what the network scores here (up to one near-tie image)
    accuracy, test_n = features_mod.test_accuracy(fn, features_mod.canonical_data_config(name), "classifier")
    assert test_n == entry["test_n"] and abs(accuracy - entry["test_accuracy"]) <= 1.5 / test_n
    assert files_under(empty_cache) == []  # nothing trained, nothing cached


def test_tampered_weights_are_refused_in_one_line(tmp_path, monkeypatch, empty_cache, no_training):
    copy = tmp_path / "feature_nets"
    shutil.copytree(features_mod.SHIPPED_DIR, copy)
    path = copy / MANIFEST["networks"]["digits"]["file"]
    blob = bytearray(path.read_bytes())
    blob[len(blob) - 100] ^= 0x01  # one bit of one weight: still a valid safetensors file
    path.write_bytes(bytes(blob))
    features_mod.load_tensors(path)  # loads fine: only the checksum catches it

    monkeypatch.setattr(features_mod, "SHIPPED_DIR", copy)
    with pytest.raises(TrilemmaError) as e:
        features_mod.get_feature_network("digits", progress=False)
    message = str(e.value)
    assert "\n" not in message and "digits" in message and "corrupt" in message and "sha256" in message
    assert "reinstall" in message
    with pytest.raises(TrilemmaError, match="corrupt"):
        features_mod.load_shipped_network("digits", folder=copy)
    path.unlink()
    with pytest.raises(TrilemmaError, match="missing"):
        features_mod.load_shipped_network("digits", folder=copy)


def test_eval_result_records_the_shipped_network(empty_cache, no_training):
    test = load_dataset("digits", split="test").images
    result = evaluate_images(test, "digits", settings=EvalSettings(kid_subsets=10), progress=False)
    fn = result["feature_net"]
    assert fn["source"] == "shipped" and fn["sha256"] == MANIFEST["networks"]["digits"]["sha256"]
    assert fn["recipe"] == features_mod.DEFAULT_RECIPE and fn["objective"] == "classifier"
    assert result["quality"]["fid"] == pytest.approx(0.0, abs=1e-6)  # the test split against itself


# --- everything else still trains ----------------------------------------------------------------

def test_tiny_default_recipe_still_trains_and_caches(empty_cache, monkeypatch):
    """The other test modules patch a tiny recipe into DEFAULT_RECIPE: that is not the shipped recipe."""
    for key, value in TINY_RECIPE.items():
        monkeypatch.setitem(features_mod.DEFAULT_RECIPE, key, value)
    calls = count_training(monkeypatch)
    fn = features_mod.get_feature_network("digits", progress=False)
    assert calls and fn.info["source"] == "trained" and fn.info["recipe"]["steps"] == TINY_RECIPE["steps"]
    folder = empty_cache / "feature-nets" / f"digits-{fn.info['hash']}"
    assert fn.info["sha256"] == features_mod.file_sha256(folder / "model.safetensors")
    assert fn.info["sha256"] != MANIFEST["networks"]["digits"]["sha256"]

    # cached: a second call loads it; an entry cached before `source` existed gets it added
    info = json.loads((folder / "info.json").read_text())
    for key in ("source", "sha256", "torch_version"):
        del info[key]
    (folder / "info.json").write_text(json.dumps(info))
    again = features_mod.get_feature_network("digits", progress=False)
    assert len(calls) == 1 and again.info["source"] == "trained" and again.info["sha256"] == fn.info["sha256"]


@pytest.mark.parametrize("config", [DataConfig("digits", image_size=12), DataConfig("digits", test_fraction=0.3)])
def test_other_configs_still_train(config, empty_cache, monkeypatch):
    calls = count_training(monkeypatch)
    fn = features_mod.get_feature_network(config, recipe=TINY_RECIPE, progress=False)
    assert calls and fn.info["source"] == "trained"
    assert fn.info["data_config"] == config.resolved().to_dict()
    assert files_under(empty_cache / "feature-nets")


def test_other_images_than_shipped_train_their_own(empty_cache, monkeypatch):
    """Shipped weights are only used on the images they were trained on (the fingerprint)."""
    entry = dict(MANIFEST["networks"]["digits"], data_fingerprint="0" * 16)
    manifest = {**MANIFEST, "networks": {**MANIFEST["networks"], "digits": entry}}
    monkeypatch.setattr(features_mod, "shipped_manifest", lambda folder=None: manifest)
    for key, value in TINY_RECIPE.items():  # the shipped recipe, made tiny on both sides to train fast
        monkeypatch.setitem(features_mod.DEFAULT_RECIPE, key, value)
    entry["recipe"] = dict(features_mod.DEFAULT_RECIPE)
    calls, messages = count_training(monkeypatch), []
    fn = features_mod.get_feature_network("digits", progress=False, log=messages.append)
    assert calls and fn.info["source"] == "trained"
    assert any("differ" in m for m in messages)
