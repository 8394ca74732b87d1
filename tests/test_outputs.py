"""Tests for trilemma.utils.outputs (output paths checked up front) and trilemma.utils.validate."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trilemma.cli.common import Parser
from trilemma.errors import RunError, TrilemmaError
from trilemma.utils import validate
from trilemma.utils.outputs import output_dir, output_file
from trilemma.utils.validate import (
    INT64_MAX,
    FloatRange,
    IntRange,
    check_memory,
    finite_float,
    float_in,
    format_bytes,
    int_in,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    unit_interval,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FUZZ = settings(max_examples=150, deadline=None, database=None)


def one_line(error: BaseException, *parts: str) -> str:
    message = str(error)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


# --- output_file --------------------------------------------------------------------------------------

def test_output_file_accepts_new_and_existing_files(tmp_path):
    assert output_file(tmp_path / "grid.png", "--out") == tmp_path / "grid.png"
    assert output_file(tmp_path / "GRID.PNG", "--out") == tmp_path / "GRID.PNG"  # any case
    (tmp_path / "old.png").write_bytes(b"x")
    assert output_file(tmp_path / "old.png", "--out") == tmp_path / "old.png"  # overwrite by default
    nested = tmp_path / "a" / "b" / "c.npz"
    assert output_file(nested, "--npz", suffixes=(".npz",)) == nested
    assert not (tmp_path / "a").exists()  # checking creates nothing
    assert output_file(str(tmp_path / "any.name"), "--json", suffixes=None) == tmp_path / "any.name"
    assert output_file(tmp_path / "x.tar.gz", "--out", suffixes=("tar.gz",)).name == "x.tar.gz"
    assert list(tmp_path.iterdir()) == [tmp_path / "old.png"]  # the write probe was removed


def test_output_file_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert output_file("~/x.png", "--out") == tmp_path / "x.png"


def test_output_file_wrong_suffix(tmp_path):
    with pytest.raises(TrilemmaError) as e:
        output_file("x.txt", "--out")
    assert str(e.value) == "--out: x.txt: expected a .png file"
    with pytest.raises(TrilemmaError) as e:
        output_file(tmp_path / "x", "--out", suffixes=(".png", "jpg"))
    one_line(e.value, "expected a .png or .jpg file")


def test_output_file_refuses_folders_special_files_and_existing(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(TrilemmaError) as e:
        output_file(tmp_path / "dir.png", "--out")
    one_line(e.value, f"--out: {tmp_path / 'dir.png'}: is a folder; expected a .png file")
    with pytest.raises(TrilemmaError, match="is a folder"):
        output_file(tmp_path, "--json", suffixes=(".json",))
    with pytest.raises(TrilemmaError, match="exists and is not a regular file"):
        output_file("/dev/null", "--json", suffixes=None)  # an atomic write would replace the device
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(TrilemmaError, match="not a regular file"):
        output_file(tmp_path / "pipe.png", "--out")
    (tmp_path / "old.png").write_bytes(b"x")
    with pytest.raises(TrilemmaError) as e:
        output_file(tmp_path / "old.png", "--out", overwrite=False)
    one_line(e.value, "--out:", "already exists")


def test_output_file_refuses_the_files_a_run_keeps(tmp_path):
    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)
    (run / "autoencoder").mkdir()
    for name in ("config.json", "model.safetensors", "loss.png", "metrics.jsonl", "state/trainer.json",
                 "autoencoder/config.json"):
        (run / name).write_text("{}")
    for name, suffixes in (("config.json", (".json",)), ("state/trainer.json", (".json",)),
                           ("state/new.json", (".json",)), ("loss.png", (".png",)),
                           ("metrics.jsonl", None), ("ema.safetensors", None), ("autoencoder/config.json", None),
                           ("autoencoder/model.safetensors", None), ("eval.json", None),
                           ("samples/step_0000500.png", None), ("samples/reconstructions.png", None)):
        with pytest.raises(TrilemmaError) as e:
            output_file(run / name, "--json", suffixes=suffixes)
        one_line(e.value, "--json", "of the run folder", "choose another name")
    (tmp_path / "link.json").symlink_to(run / "config.json")     # a link to a run's file is that file
    with pytest.raises(TrilemmaError, match="config.json of the run folder"):
        output_file(tmp_path / "link.json", "--json", suffixes=(".json",))
    # sample grids of `trilemma sample` and a user's new files beside the run may be written
    for name in ("samples/ddim.png", "grid.png", "autoencoder/grid.png"):
        assert output_file(run / name, "--out", suffixes=None) == run / name
    assert output_file(run / "eval.json", "RUN", suffixes=None, run_file=True)   # by the command that owns it
    assert output_file(tmp_path / "config.json", "--json", suffixes=(".json",))   # not inside a run


def test_output_dir_refuses_a_runs_own_subfolders(tmp_path):
    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)
    (run / "autoencoder").mkdir()
    (run / "config.json").write_text("{}")
    (run / "autoencoder" / "config.json").write_text("{}")
    for inside in ("state", "state/new", "samples/x", "autoencoder/state"):
        with pytest.raises(TrilemmaError) as e:
            output_dir(run / inside, "--out")
        one_line(e.value, "--out", "of the run folder", "choose a folder outside it")
    assert output_dir(run / "ae", "--out") == run / "ae"               # a phase's run inside a recipe's folder
    assert output_dir(run / "autoencoder", "--out") == run / "autoencoder"   # a run folder itself


def test_output_file_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file" / "x.png", tmp_path / "file" / "deeper" / "x.png"):
        with pytest.raises(TrilemmaError) as e:
            output_file(path, "--out")
        one_line(e.value, f"--out: {path}: {tmp_path / 'file'} is a file, not a folder")


def test_output_file_bad_paths(tmp_path):
    for bad in ("", "  "):
        with pytest.raises(TrilemmaError, match="--out: expected a path"):
            output_file(bad, "--out")
    with pytest.raises(TrilemmaError, match="NUL"):
        output_file("a\0b.png", "--out")
    with pytest.raises(TrilemmaError) as e:
        output_file(tmp_path / ("n" * 300 + ".png"), "--out")
    one_line(e.value, "is longer than 255 bytes")
    with pytest.raises(TrilemmaError, match="longer than"):
        output_file(tmp_path / ("d" * 300) / "x.png", "--out")
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)  # a symlink loop: replaced by the atomic write, like any symlink
    assert output_file(loop, "--out") == loop


def test_output_file_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if IS_ROOT:  # root writes anywhere: simulate the refusal where the probe happens
            with pytest.MonkeyPatch.context() as mp:
                def refuse(*args, **kwargs):
                    raise PermissionError(13, "Permission denied")

                mp.setattr("trilemma.utils.outputs.tempfile.mkstemp", refuse)
                with pytest.raises(TrilemmaError) as e:
                    output_file(locked / "new" / "x.png", "--out")
        else:  # pragma: no cover - non-root
            with pytest.raises(TrilemmaError) as e:
                output_file(locked / "new" / "x.png", "--out")
        one_line(e.value, f"--out: {locked / 'new' / 'x.png'}: cannot create files in {locked} "
                          f"(Permission denied)")
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_output_file_read_only_file_system():
    # /proc refuses new files for everyone, root included: a real, unsimulated refusal
    with pytest.raises(TrilemmaError, match="cannot create files in /proc/self"):
        output_file("/proc/self/x.png", "--out")


# --- output_dir ---------------------------------------------------------------------------------------

def test_output_dir_new_existing_and_nested(tmp_path):
    assert output_dir(tmp_path / "run", "--out") == tmp_path / "run"
    assert output_dir(tmp_path / "a" / "b", "--out", must_be_new=True) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists() and not (tmp_path / "run").exists()
    assert output_dir(tmp_path, "--out") == tmp_path  # an existing folder is fine by default
    empty = tmp_path / "empty"
    empty.mkdir()
    assert output_dir(empty, "--out", must_be_new=True) == empty
    (empty / "x").write_text("x")
    with pytest.raises(TrilemmaError) as e:
        output_dir(empty, "--out", must_be_new=True)
    one_line(e.value, f"--out: {empty}: already exists and is not empty")


def test_output_dir_refuses_files(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(TrilemmaError) as e:
        output_dir(tmp_path / "f", "--out")
    one_line(e.value, f"--out: {tmp_path / 'f'}: is a file, expected a folder")
    with pytest.raises(TrilemmaError, match="is a file, not a folder"):
        output_dir(tmp_path / "f" / "run", "--out")


def test_output_dir_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert output_dir(run, "--out", allow_existing_run=False) == run  # empty: not a run yet
    with pytest.raises(RunError, match="is not a run folder"):
        output_dir(run, "--out", require_run=True)
    with pytest.raises(RunError, match="is not a run folder"):
        output_dir(tmp_path / "nope", "--out", require_run=True)
    (run / "config.json").write_text("{}")
    with pytest.raises(RunError) as e:
        output_dir(run, "--out", allow_existing_run=False)
    one_line(e.value, f"--out: {run}: already holds a run; pass --resume")
    assert output_dir(run, "--out", require_run=True) == run
    assert output_dir(run, "--out") == run


def test_output_dir_unwritable(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("trilemma.utils.outputs.tempfile.mkstemp", refuse)
    with pytest.raises(TrilemmaError) as e:
        output_dir(tmp_path, "--out")
    one_line(e.value, f"cannot create files in {tmp_path} (Read-only file system)")


def test_output_dir_unlistable(tmp_path, monkeypatch):
    folder = tmp_path / "secret"
    folder.mkdir()
    (folder / "x").write_text("x")

    def refuse(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("trilemma.utils.outputs.os.scandir", refuse)  # root could list a chmod 0 folder
    with pytest.raises(TrilemmaError) as e:
        output_dir(folder, "--out", must_be_new=True)
    one_line(e.value, f"--out: {folder}: cannot list the folder (Permission denied)")
    assert output_dir(folder, "--out") == folder  # listing is only needed for must_be_new


# --- validators: argparse and config checks ------------------------------------------------------------

def parse(capsys, validator, text: str):
    parser = Parser(prog="trilemma x")
    parser.add_argument("--v", type=validator)
    try:
        return parser.parse_args(["--v", text]).v
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err.strip()


def test_argparse_messages_are_one_line_with_the_option(capsys):
    assert parse(capsys, nonneg_int, "7") == 7
    assert parse(capsys, nonneg_int, str(2**70)).startswith(
        "trilemma: error: argument --v: must be an integer in [0, 2**63-1], got '11805916207174113")
    assert "must be an integer in [0, 2**63-1], got '2**70'" in parse(capsys, nonneg_int, "2**70")
    assert "must be a finite number, got 'nan'" in parse(capsys, finite_float, "nan")
    assert "must be a finite number > 0, got 'inf'" in parse(capsys, positive_float, "inf")
    assert "must be a finite number > 0, got '1e400'" in parse(capsys, positive_float, "1e400")
    assert "must be an integer in [1, 2**63-1], got '0'" in parse(capsys, positive_int, "0")
    assert "must be a number in [0, 1), got '1'" in parse(capsys, probability, "1")
    assert parse(capsys, unit_interval, "1") == 1.0
    assert parse(capsys, float_in(-2, 2), " -2 ") == -2.0


def test_config_checks_name_the_option():
    with pytest.raises(TrilemmaError) as e:
        nonneg_int.check(2**70, "--seed")
    assert str(e.value) == "--seed: must be an integer in [0, 2**63-1], got 1180591620717411303424"
    with pytest.raises(TrilemmaError) as e:
        finite_float.check(math.nan, "--guidance")
    assert str(e.value) == "--guidance: must be a finite number, got nan"
    with pytest.raises(TrilemmaError, match=r"^--minutes: must be a finite number > 0, got inf$"):
        positive_float.check(math.inf, "--minutes")
    with pytest.raises(TrilemmaError, match=r"^--n: must be an integer in \[1, 2\*\*63-1\], got True$"):
        positive_int.check(True, "--n")  # a boolean is not a number
    with pytest.raises(TrilemmaError, match=r"got 3\.0$"):
        positive_int.check(3.0, "--n")  # nor is a float an integer
    with pytest.raises(TrilemmaError, match=r"^--lr: must be a finite number > 0, got 1230231922\d+\.\.\.$"):
        positive_float.check(2**3000, "--lr")  # beyond float range, shortened in the message
    with pytest.raises(TrilemmaError, match=r"^--lr: must be a finite number > 0, got an integer of 20001 bits$"):
        positive_float.check(2**20000, "--lr")  # more digits than str() converts
    assert positive_int.check(np.int64(5), "--n") == 5 and type(positive_int.check(np.int64(5), "--n")) is int
    assert positive_float.check(np.float32(0.5), "--lr") == 0.5
    assert nonneg_float.check(0, "--beta") == 0.0 and isinstance(nonneg_float.check(0, "--beta"), float)
    assert unit_interval.check("0.25", "--eta") == 0.25  # text works too
    with pytest.raises(TrilemmaError, match=r"--x: must be an integer in \[-3, 3\], got None"):
        int_in(-3, 3).check(None, "--x")
    with pytest.raises(TrilemmaError, match=r"--x: must be a number in \(0, 1\], got 0"):
        float_in(0, 1, lo_open=True).check(0, "--x")
    long = "9" * 5000  # more digits than int() accepts: still a clean error, with a short message
    with pytest.raises(TrilemmaError) as e:
        nonneg_int.check(long, "--seed")
    assert len(str(e.value)) < 120


def test_validator_objects_are_hashable_and_argparse_compatible():
    assert {positive_int, nonneg_int, positive_float}  # argparse looks types up in a dict
    assert positive_int == IntRange(1, INT64_MAX)
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int("-1")
    with pytest.raises(ValueError):
        IntRange(5, 1)
    with pytest.raises(ValueError):
        IntRange(0, 2**64)
    with pytest.raises(ValueError):
        FloatRange(math.nan, 1.0)


# Hypothesis: each validator accepts exactly the values of its set, and fails only with its own error.

VALIDATORS = {
    "positive_int": (positive_int, lambda x: 1 <= x <= INT64_MAX, int),
    "nonneg_int": (nonneg_int, lambda x: 0 <= x <= INT64_MAX, int),
    "int_in": (int_in(-5, 5), lambda x: -5 <= x <= 5, int),
    "finite_float": (finite_float, math.isfinite, float),
    "positive_float": (positive_float, lambda x: math.isfinite(x) and x > 0, float),
    "nonneg_float": (nonneg_float, lambda x: math.isfinite(x) and x >= 0, float),
    "unit_interval": (unit_interval, lambda x: 0 <= x <= 1, float),
    "probability": (probability, lambda x: 0 <= x < 1, float),
    "float_in": (float_in(-1.5, 2.5, hi_open=True), lambda x: -1.5 <= x < 2.5, float),
}

anything = st.one_of(
    st.integers(), st.integers(-2**70, 2**70), st.floats(), st.booleans(), st.none(), st.text(max_size=30),
    st.integers(-10**6, 10**6).map(str), st.floats().map(repr), st.lists(st.integers(), max_size=2),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "2**70", " 3 ", "0x10", "1_000", "", "+7", "٣"]),
)


@FUZZ
@given(name=st.sampled_from(sorted(VALIDATORS)), value=anything)
def test_fuzz_validators_accept_exactly_their_set(name, value):
    validator, inside, kind = VALIDATORS[name]
    expected = _reference(value, kind)
    accepted = expected is not None and (math.isfinite(expected) if kind is float else True) and inside(expected)
    try:
        got = validator.check(value, "--opt")
    except TrilemmaError as e:
        assert not accepted, (name, value)
        one_line(e, "--opt: must be ", ", got ")
    else:
        assert accepted, (name, value, got)
        assert type(got) is kind and got == expected
    try:
        via_argparse = validator(value)
    except argparse.ArgumentTypeError as e:
        assert not accepted and not str(e).startswith("--opt")
    else:
        assert accepted and via_argparse == expected


def _reference(value, kind):
    """An independent reading of ``value`` as ``kind`` (or None): what the validators should parse."""
    if isinstance(value, bool) or value is None or isinstance(value, list):
        return None
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return None
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


# --- check_memory -----------------------------------------------------------------------------------------

def test_check_memory_refuses_above_80_percent():
    check_memory(800, "x", "--n", available=1000)
    with pytest.raises(TrilemmaError) as e:
        check_memory(801, "sampling 1 image", "--n", available=1000)
    assert str(e.value) == "--n: sampling 1 image needs about 801 bytes of memory, but only 1000 bytes is available"
    with pytest.raises(TrilemmaError) as e:
        check_memory(100_000_000_000 * 3 * 32 * 32 * 4, "sampling 100000000000 images of 3x32x32", "--n",
                     available=16 * 2**30)
    one_line(e.value, "--n: sampling 100000000000 images", "needs about 1.1 PiB", "only 16.0 GiB is available")
    with pytest.raises(TrilemmaError, match="an unbounded amount"):
        check_memory(math.inf, "x", "--batch-size", available=10)
    with pytest.raises(TrilemmaError):
        check_memory(math.nan, "x", "--batch-size", available=10)

    class Custom(TrilemmaError):
        pass

    with pytest.raises(Custom):
        check_memory(10, "x", "--n", available=1, error=Custom)


def test_check_memory_reads_proc_meminfo_or_skips(monkeypatch):
    available = validate.available_memory()
    if Path("/proc/meminfo").is_file():
        assert available is not None and available > 0
    monkeypatch.setattr(validate, "_meminfo_available", lambda: None)
    monkeypatch.setattr(validate, "_cgroup_available", lambda: None)
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError("no psutil")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    assert validate.available_memory() is None
    check_memory(10**30, "x", "--n")  # unknown memory: no check


def test_check_memory_uses_the_smaller_of_meminfo_and_cgroup(monkeypatch):
    monkeypatch.setattr(validate, "_meminfo_available", lambda: 10 * 2**30)
    monkeypatch.setattr(validate, "_cgroup_available", lambda: 2 * 2**30)
    assert validate.available_memory() == 2 * 2**30
    with pytest.raises(TrilemmaError, match="only 2.0 GiB is available"):
        check_memory(2 * 2**30, "x", "--n")


def test_format_bytes():
    assert format_bytes(0) == "0 bytes" and format_bytes(1023) == "1023 bytes"
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(2**80).endswith("EiB")
