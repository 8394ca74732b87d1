"""Run folders under hostile conditions: damaged config.json, stuck set-ups, killed writes, pickles, caches.

The reader (:func:`trilemma.run.read_run_config`, :func:`trilemma.config.from_dict`) must turn any
config.json into a run or into one :class:`~trilemma.errors.TrilemmaError` line naming the file and
the field; training must never leave a folder that neither a rerun nor ``--resume`` accepts.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers import clone, trained_run
from safetensors.torch import save_file

import trilemma
from trilemma.cli.main import main
from trilemma.config import from_dict
from trilemma.errors import RunError, TrilemmaError
from trilemma.registry import load_run
from trilemma.run import load_weights, read_run_config
from trilemma.train.rundir import check_run_dir, is_unstarted
from trilemma.utils.io import atomic_path, remove_stale_temps

FUZZ = settings(max_examples=80, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
TRAIN = ["train", "ddpm", "--data", "digits", "--preset", "tiny", "--batch-size", "8", "--T", "100", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache):
    return trained_run(tmp_path_factory, [*TRAIN, "--steps", "2"], "run")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- config.json: anything in, a run or one clean line out -------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=3), max_leaves=12)


def assert_clean(error: BaseException) -> None:
    assert isinstance(error, TrilemmaError), repr(error)
    message = str(error)
    assert message and "\n" not in message, message


def try_load(folder: Path) -> None:
    try:
        load_run(folder, device="cpu")
    except Exception as e:  # noqa: BLE001 - the property: only TrilemmaError escapes
        assert_clean(e)


@FUZZ
@given(blob=st.binary(max_size=64))
def test_random_bytes_as_config_json_are_a_run_error(blob, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bytes")
    (folder / "config.json").write_bytes(blob)
    with pytest.raises(RunError) as info:
        read_run_config(folder)
    assert "config.json" in str(info.value)
    assert_clean(info.value)


@FUZZ
@given(value=JSON)
def test_random_json_as_config_json_is_a_clean_error(value, tmp_path_factory):
    folder = tmp_path_factory.mktemp("json")
    (folder / "config.json").write_text(json.dumps(value))
    try_load(folder)


# Values of every JSON type, and ints and floats that no check should let through unseen
ODD = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(-3, 3), max_size=3),
                st.dictionaries(st.sampled_from(["a", "T"]), st.integers(-2, 2), max_size=2),
                st.sampled_from([-1, 0, 2**70, -(2**70), 1e308, 0.5, -0.5, float("nan"), float("inf")]))


def _paths(config, prefix=()):
    for key, value in config.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


# U-Net fields without a declared check in trilemma/nets/unet.py (num_heads 0 divides by zero, in_channels -1 is
# a torch error): reported to its owner; drop from this set once UNetConfig declares their checks.
UNCHECKED = {("model", name) for name in ("image_size", "in_channels", "out_channels", "channel_mults", "num_heads",
                                          "num_classes", "context_dim", "attn_resolutions")}


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_field_of_any_type_is_a_run_or_a_clean_error(run, tmp_path_factory, data):
    config = json.loads((run / "config.json").read_text())
    path = data.draw(st.sampled_from(sorted(set(_paths(config)) - UNCHECKED)))
    value = data.draw(ODD)
    changed = copy.deepcopy(config)
    node = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    folder = tmp_path_factory.mktemp("field")
    for name in ("ema.safetensors", "model.safetensors"):
        os.link(run / name, folder / name)
    (folder / "config.json").write_text(json.dumps(changed))
    try:
        load_run(folder, device="cpu")
    except Exception as e:  # noqa: BLE001
        assert_clean(e)
        assert "config.json" in str(e) or "safetensors" in str(e), str(e)


def test_config_errors_name_the_file_and_field_not_a_flag(run, tmp_path):
    folder = clone(run, tmp_path / "r")
    config = json.loads((folder / "config.json").read_text())
    config["diffusion"]["schedule"]["T"] = -5
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TrilemmaError) as info:
        load_run(folder, device="cpu")
    message = str(info.value)
    assert "config.json" in message and "diffusion.schedule.T" in message and "--T" not in message, message
    config["diffusion"]["schedule"]["T"] = "many"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TrilemmaError, match=r"config\.json: diffusion\.schedule\.T: expected an integer"):
        load_run(folder, device="cpu")


def test_missing_section_and_unknown_top_level_key(run, tmp_path):
    folder = clone(run, tmp_path / "r")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "extra": {}}))
    with pytest.raises(RunError, match="unknown top-level key.*'extra'"):
        read_run_config(folder)
    del config["diffusion"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match=r"config\.json: no 'diffusion' section"):
        load_run(folder, device="cpu")


def test_from_dict_checks_types_and_names_fields():
    from trilemma.diffusion.schedule import ScheduleConfig

    with pytest.raises(TrilemmaError, match=r"f\.json: beta_1: expected a number, got 'x'"):
        from_dict(ScheduleConfig, {"beta_1": "x"}, "f.json")
    with pytest.raises(TrilemmaError, match=r"f\.json: T: expected an integer, got True"):
        from_dict(ScheduleConfig, {"T": True}, "f.json")
    with pytest.raises(TrilemmaError, match=r"f\.json: T: must be an integer"):
        from_dict(ScheduleConfig, {"T": 1}, "f.json")
    assert from_dict(ScheduleConfig, {"T": 10}, "f.json").T == 10


def test_weights_of_another_shape_or_kind_are_one_line(run, tmp_path):
    from trilemma.nets.unet import UNet, UNetConfig

    config = json.loads((run / "config.json").read_text())
    net = UNet(from_dict(UNetConfig, config["model"]))
    shapes = tmp_path / "shapes.safetensors"
    save_file({k: torch.zeros(1) for k in net.state_dict()}, str(shapes), metadata={"step": "1"})
    with pytest.raises(RunError, match=r"shapes\.safetensors: weights do not match"):
        load_weights(shapes, net)
    other = tmp_path / "other.safetensors"
    save_file({"generator.0.weight": torch.zeros(2)}, str(other), metadata={"step": "1"})
    with pytest.raises(RunError, match=r"other\.safetensors: weights do not match.*another kind of run"):
        load_weights(other, net)


# --- stuck and finished runs ----------------------------------------------------------------------

def test_a_folder_whose_set_up_failed_is_redone_by_a_plain_rerun(run, tmp_path, capsys):
    stuck = tmp_path / "stuck"
    stuck.mkdir()
    shutil.copy(run / "config.json", stuck)
    assert is_unstarted(stuck)
    assert main([*TRAIN, "--steps", "1", "--out", str(stuck), "--resume"]) == 2
    assert "without --resume" in capsys.readouterr().err
    assert main([*TRAIN, "--steps", "1", "--out", str(stuck)]) == 0
    assert (stuck / "state" / "trainer.json").is_file() and not is_unstarted(stuck)
    assert main([*TRAIN, "--steps", "1", "--out", str(stuck)]) == 2     # now a real run: not overwritten
    assert "--resume" in capsys.readouterr().err


def test_resume_to_fewer_steps_is_refused_without_writing(run, tmp_path, capsys):
    folder = clone(run, tmp_path / "r")
    before = snapshot(folder)
    assert main(["train", "ddpm", "--out", str(folder), "--resume", "--steps", "1", "--quiet"]) == 2
    assert "already at step 2" in capsys.readouterr().err
    assert main(["train", "ddpm", "--out", str(folder), "--resume", "--steps", "2", "--quiet"]) == 2
    assert snapshot(folder) == before
    assert main(["train", "ddpm", "--out", str(folder), "--resume", "--steps", "3", "--quiet"]) == 0
    assert json.loads((folder / "state" / "trainer.json").read_text())["step"] == 3


@pytest.mark.parametrize("damage,words", [
    (lambda f: (f / "state" / "optim.safetensors").write_bytes(
        (f / "state" / "optim.safetensors").read_bytes()[:100]), ["optim.safetensors"]),
    (lambda f: (f / "state" / "trainer.json").write_text("{"), ["trainer.json"]),
    (lambda f: (f / "state" / "trainer.json").write_text('{"step": -1}'), ["trainer.json", "step"]),
    (lambda f: (f / "state" / "rng.safetensors").write_bytes(b"junk"), ["rng.safetensors"]),
    (lambda f: save_file({"x": torch.zeros(1)}, str(f / "state" / "optim.safetensors"),
                         metadata={"step": "2", "meta": "{}"}), ["optim.safetensors"]),
])
def test_a_damaged_checkpoint_is_one_line_before_anything_is_written(run, tmp_path, damage, words):
    folder = clone(run, tmp_path / "r")
    damage(folder)
    before = snapshot(folder)
    with pytest.raises(RunError) as info:
        check_run_dir(folder, resume=True, steps=5)
    for word in words:
        assert word in str(info.value)
    assert "interrupted" not in str(info.value) and "\n" not in str(info.value)
    assert snapshot(folder) == before


def test_temporary_files_of_killed_writes_are_removed_on_the_next_start(run, tmp_path):
    folder = clone(run, tmp_path / "r")
    dead = 2**22 + 12345                                     # above pid_max's default: no such process
    stale = [folder / f".loss.png.{dead}-abcd1234.tmp", folder / "state" / f".optim.safetensors.{dead}-x_1.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    live = folder / f".config.json.{os.getpid()}-zz.tmp"      # a write of a running process: kept
    live.write_bytes(b"busy")
    assert main(["train", "ddpm", "--out", str(folder), "--resume", "--steps", "3", "--quiet"]) == 0
    assert not any(p.exists() for p in stale)
    assert live.exists()
    assert not [p for p in folder.rglob("*.tmp") if p != live]


def test_atomic_writes_name_their_process_and_clean_up(tmp_path):
    target = tmp_path / "x.json"
    with atomic_path(target) as tmp:
        assert re.fullmatch(rf"\.x\.json\.{os.getpid()}-\w+\.tmp", tmp.name)
        tmp.write_text("{}")
    assert target.read_text() == "{}" and os.listdir(tmp_path) == ["x.json"]
    assert remove_stale_temps(tmp_path) == []


# --- caches -----------------------------------------------------------------------------------------

def test_incomplete_feature_net_cache_entries_count_as_absent(tmp_path):
    from trilemma.metrics import features

    recipe = features.resolve_recipe({"width": 4, "feature_dim": 8})
    entry = tmp_path / "digits-abc"
    entry.mkdir()                                            # what a killed eval used to leave
    assert features._load_cached_network(entry, recipe, 1, 10, "cpu") is None
    net = features.build_net(recipe, 1, 10)
    from trilemma.utils.io import save_tensors, write_json

    save_tensors(entry / "model.safetensors", net.state_dict())
    assert features._load_cached_network(entry, recipe, 1, 10, "cpu") is None      # no info.json yet
    write_json(entry / "info.json", {"sha256": features.file_sha256(entry / "model.safetensors")})
    assert features._load_cached_network(entry, recipe, 1, 10, "cpu") is not None
    (entry / "model.safetensors").write_bytes(b"\x00" * 16)                     # damaged weights
    assert features._load_cached_network(entry, recipe, 1, 10, "cpu") is None
    (entry / "info.json").write_bytes(b"\xff\xfe")                              # damaged info
    assert features._load_cached_network(entry, recipe, 1, 10, "cpu") is None


# --- pickles ------------------------------------------------------------------------------------------

def test_a_pickle_text_encoder_is_refused_by_name(tmp_path, monkeypatch):
    from trilemma.t2i import encoder

    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")             # a pickle
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(TrilemmaError, match=r"pytorch_model\.bin is a pickle checkpoint"):
        encoder.resolve_encoder(str(folder))
    with pytest.raises(TrilemmaError, match=r"pytorch_model\.bin"):
        encoder.check_safetensors_only(folder)


def test_the_package_never_unpickles():
    """No torch.load, pickle or allow_pickle=True anywhere in trilemma/ (safetensors and plain arrays only)."""
    root = Path(trilemma.__file__).parent
    pattern = re.compile(r"torch\.load\(|\bimport pickle\b|\bpickle\.load|allow_pickle\s*=\s*True|joblib\.load|"
                         r"weights_only\s*=\s*False|cloudpickle|\bdill\b")
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
