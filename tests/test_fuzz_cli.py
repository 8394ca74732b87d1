"""Hostile input for every command: a clean one-line error (exit 2), no traceback, nothing changed on disk.

Each case runs ``trilemma.cli.main.main([...])`` in-process inside a workspace that holds a tiny trained
DDPM run and a zoo of broken run folders and odd files (see :func:`template`). A case passes when

- the exit code is 2,
- stderr is exactly one line, starting ``trilemma: error:``, with no "Traceback",
- the line names what is wrong (``must``: words that must appear; ``absent``: words that must not),
- every file and folder of the workspace is unchanged (content hashes of the tree before and after; no
  new files, no temporary files left behind).

Property-based tests (Hypothesis) feed random text to every numeric option: the parser either refuses it in
one line or returns a value inside the option's range.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from trilemma.cli.main import build_parser, main

BIG = str(2**70)                      # beyond int64: torch.manual_seed and friends overflow
FUZZ = settings(max_examples=60, deadline=None, database=None)
CASE_SECONDS = 60                     # a case that starts real work instead of refusing it fails here


class TookTooLong(Exception):
    pass


def _too_long(signum, frame):
    raise TookTooLong(f"still running after {CASE_SECONDS} s: the input was not refused up front")


# --- the workspace ---------------------------------------------------------------------------------

def _train(out: Path, *extra: str) -> None:
    code = main(["train", "ddpm", "--data", "digits", "--preset", "tiny", "--steps", "2", "--batch-size", "8",
                 "--T", "100", "--out", str(out), "--quiet", *extra])
    assert code == 0


def _edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def template(tmp_path_factory, cache):
    """A tiny DDPM run and broken variants of it (built once per module and worker)."""
    root = tmp_path_factory.mktemp("fuzz-template")
    run = root / "run"
    _train(run)

    def variant(name: str, weights: bool = True, state: bool = False) -> Path:
        folder = root / name
        folder.mkdir()
        shutil.copy(run / "config.json", folder)
        if weights:
            for stem in ("model", "ema"):
                shutil.copy(run / f"{stem}.safetensors", folder)
        if state:
            shutil.copytree(run / "state", folder / "state")
        return folder

    _edit_config(variant("nosection", weights=False), lambda c: c.pop("diffusion"))
    (variant("garbage", weights=False) / "config.json").write_bytes(os.urandom(64) + b"\xff\xfe{")
    _edit_config(variant("wrongtype", weights=False), lambda c: c["model"].update(base_channels="wide"))
    _edit_config(variant("wrongtype2", weights=False), lambda c: c["diffusion"].update(schedule=[1, 2]))
    _edit_config(variant("unknownkey", weights=False), lambda c: c.update(foo={"x": 1}))
    _edit_config(variant("badT", weights=False), lambda c: c["diffusion"]["schedule"].update(T=-5))
    _edit_config(variant("notobject", weights=False), lambda c: c.clear())
    (variant("array", weights=False) / "config.json").write_text("[1, 2, 3]")
    _edit_config(variant("nokind", weights=False), lambda c: c.pop("kind"))
    _edit_config(variant("kindint", weights=False), lambda c: c.update(kind=7))
    _edit_config(variant("datastr", weights=False), lambda c: c.update(data="digits"))
    variant("onlyconfig", weights=False)
    foreign = variant("foreign", weights=False)
    for stem in ("model", "ema"):                 # another kind's weights: same file name, other tensors
        save_file({"generator.0.weight": torch.zeros(3, 4)}, str(foreign / f"{stem}.safetensors"),
                  metadata={"step": "2", "format": "trilemma"})
    shapes = variant("shapes", weights=False)     # same names, wrong shapes (a differently sized run)
    from safetensors.torch import load_file
    tensors = {k: torch.zeros(1) for k in load_file(str(run / "model.safetensors"))}
    for stem in ("model", "ema"):
        save_file(tensors, str(shapes / f"{stem}.safetensors"), metadata={"step": "2", "format": "trilemma"})
    (variant("badweights") / "ema.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    trunc = variant("truncoptim", state=True)
    data = (trunc / "state" / "optim.safetensors").read_bytes()
    (trunc / "state" / "optim.safetensors").write_bytes(data[:len(data) // 3])
    foreign_optim = variant("foreignoptim", state=True)
    save_file({"x": torch.zeros(2)}, str(foreign_optim / "state" / "optim.safetensors"),
              metadata={"step": "2", "meta": json.dumps({"opt": {"param_groups": [], "scalars": {}}})})
    (variant("badtrainer", state=True) / "state" / "trainer.json").write_text('{"step": 2, "ela')
    (variant("steptext", state=True) / "state" / "trainer.json").write_text('{"step": "two"}')
    _edit_config(variant("wrongstate", state=True), lambda c: c["model"].update(base_channels="wide"))
    _edit_config(variant("badTstate", state=True), lambda c: c["diffusion"]["schedule"].update(T=-5))
    (root / "afile.txt").write_text("not a folder\n")
    (root / "adir").mkdir()
    (root / "adir" / "keep.txt").write_text("keep\n")
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    np.save(root / "samples.npy", images)
    np.savez(root / "samples.npz", images=images)
    np.savez(root / "floats.npz", images=images.astype(np.float32))
    (root / "eval.json").write_text('{"schema": "nope"}')
    (root / "notjson.json").write_bytes(os.urandom(32))
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    os.mkfifo(root / "pipe.png")                 # special files as outputs (never /dev/null: as root, a
    os.mkfifo(root / "pipe.npz")                 # broken atomic write would replace the system's device)
    return root


def _copy(src: str, dst: str) -> None:
    if stat.S_ISFIFO(os.lstat(src).st_mode):
        os.mkfifo(dst)
    else:
        shutil.copy2(src, dst)


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=_copy)


def tree_state(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a hash of its content (folders: "dir")."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            state[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            path = os.path.join(dirpath, f)
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):               # a FIFO: never opened (it would block)
                state[os.path.relpath(path, root)] = f"special {stat.S_IFMT(info.st_mode)}"
                continue
            with open(path, "rb") as fh:
                state[os.path.relpath(path, root)] = hashlib.blake2b(fh.read(), digest_size=16).hexdigest()
    return state


@pytest.fixture(scope="module")
def workspace(template, tmp_path_factory):
    ws = tmp_path_factory.mktemp("fuzz") / "ws"
    copy_tree(template, ws)
    return {"path": ws, "state": tree_state(ws), "template": template}


# --- the cases -------------------------------------------------------------------------------------

POS_INT = ["0", "-1", "abc", "1.5", "nan", BIG, ""]
NONNEG_INT = ["-1", "abc", "inf", BIG]
SEED = ["-1", BIG, "abc", "1e3"]
UNIT = ["nan", "inf", "-0.5", "2", "abc"]
POS_FLOAT = ["nan", "inf", "0", "-1", "abc"]
GUIDANCE = ["nan", "inf", "-inf", "-2", "abc"]

SAMPLER_OPTIONS = {"--steps": POS_INT, "--eta": UNIT, "--label": NONNEG_INT, "--guidance": GUIDANCE}
# command prefix (RUN = the tiny run) -> its numeric options and their bad values
NUMERIC: dict[tuple[str, ...], dict[str, list[str]]] = {
    ("sample", "RUN"): {"--n": POS_INT, "--seed": SEED, "--batch-size": POS_INT, **SAMPLER_OPTIONS},
    ("generate", "RUN", "a red circle"): {"--n": POS_INT, "--seed": SEED, "--batch-size": POS_INT,
                                         **SAMPLER_OPTIONS},
    ("edit", "RUN", "image.png", "a blue square"): {"--strength": UNIT, "--n": POS_INT, "--seed": SEED,
                                                   "--guidance": GUIDANCE, "--steps": ["0", BIG]},
    ("show", "schedules"): {"--T": POS_INT},
    ("show", "forward", "--data", "digits"): {"--n": POS_INT, "--columns": POS_INT, "--T": ["0", BIG],
                                              "--seed": SEED},
    ("show", "trajectory", "RUN"): {"--n": POS_INT, "--columns": ["0", BIG], "--seed": SEED,
                                    "--guidance": ["nan", "-1"]},
    ("show", "interpolation", "RUN"): {"--pairs": ["0", BIG], "--steps": ["0", BIG], "--seed": SEED},
    ("eval", "RUN"): {"--n": POS_INT, "--seed": SEED, "--batch-size": ["0", BIG], "--guidance": ["nan"]},
    ("compare", "RUN", "--out", "cmp"): {"--n": ["0", BIG], "--seed": SEED, "--batch-size": ["0", "abc"],
                                         "--guidance": ["inf"]},
    ("demo", "--out", "demo"): {"--minutes": POS_FLOAT, "--steps": ["0", BIG], "--batch-size": ["0", BIG],
                                "--ddpm-n": ["0", BIG], "--ddim-n": ["-3"], "--seed": SEED},
    ("experiment", "gan-gradients", "--out", "exp"): {"--epochs": ["nan", "-1"], "--d-iters": ["0"],
                                                      "--d-lr": ["inf"], "--seed": ["-1", BIG]},
    ("experiment", "vae-vs-gan", "--out", "exp"): {"--minutes": ["inf"], "--n": ["0"], "--seed": [BIG]},
    ("experiment", "latent-vs-pixel", "--out", "exp"): {"--minutes": ["nan"], "--ae-minutes": ["-1"],
                                                        "--speed-sizes": ["0"], "--seed": [BIG]},
    ("train", "ddpm", "--data", "digits", "--out", "new", "--steps", "1"): {
        "--seed": ["-1", BIG], "--lr": ["nan", "inf", "0"], "--batch-size": ["0", "100000000"],
        "--T": ["0", BIG], "--image-size": ["0", "4096", BIG]},
    ("train", "ddpm", "--data", "digits", "--out", "new"): {"--minutes": ["inf", "nan", "-1", "0"]},
}


def numeric_cases():
    for prefix, options in NUMERIC.items():
        for option, values in options.items():
            for value in values:
                yield pytest.param([*prefix, option, value], [option], [],
                                   id=f"{' '.join(prefix[:2])} {option} {value[:12]!r}")


# (argv, words the one error line must hold, words it must not hold); RUN: the tiny run, X: the workspace
CASES = [
    # 3. bounds and memory, refused before any work
    (["show", "schedules", "--T", "100000000"], ["--T"], []),
    (["show", "forward", "--data", "digits", "--n", "100000"], ["--n"], []),
    (["show", "forward", "--data", "digits", "--T", "100000000"], ["--T"], []),
    (["sample", "RUN", "--n", "100000000000"], ["--n"], []),
    (["sample", "RUN", "--n", "100000000000", "--batch-size", "4"], ["--n"], []),
    (["sample", "RUN", "--batch-size", "100000000000"], ["--batch-size"], []),
    (["show", "trajectory", "RUN", "--n", "100000000000"], ["--n"], []),
    (["show", "interpolation", "RUN", "--pairs", "100000000000"], ["--pairs"], []),
    (["eval", "RUN", "--n", "100000000000"], ["--n"], []),
    (["train", "ddpm", "--data", "digits", "--out", "new", "--minutes", "inf"], ["--minutes"], []),
    (["train", "ddpm", "--data", "digits", "--out", "new", "--steps", "1", "--batch-size", "100000000"],
     ["--batch-size"], []),
    (["train", "ddpm", "--data", "digits", "--out", "new", "--steps", "1", "--image-size", "4096"],
     ["--image-size"], []),
    (["train", "ddpm", "--data", "digits", "--out", "new", "--steps", BIG], ["--steps"], []),
    (["demo", "--out", "demo", "--minutes", "inf"], ["--minutes"], []),
    # 2. guidance: one rule everywhere
    (["sample", "RUN", "--label", "3", "--guidance", "nan"], ["--guidance"], []),
    (["sample", "RUN", "--guidance", "-2"], ["--guidance"], []),
    (["generate", "RUN", "x", "--guidance", "nan"], ["--guidance"], []),
    (["generate", "RUN", "x", "--guidance", "inf"], ["--guidance"], []),
    (["generate", "RUN", "x", "--guidance", "-2"], ["--guidance"], []),
    # 4. output paths, checked before any work
    (["train", "ddpm", "--data", "digits", "--steps", "1", "--out", "afile.txt"], ["--out", "afile.txt"], []),
    (["train", "ddpm", "--data", "digits", "--steps", "1", "--out", "afile.txt/run"], ["--out"], []),
    (["train", "ddpm", "--data", "digits", "--steps", "1", "--out", "/proc/trilemma-run"], ["--out"], []),
    (["train", "ddpm", "--data", "digits", "--steps", "1", "--out", "RUN"], ["--resume"], []),
    (["train", "ddpm", "--data", "digits", "--steps", "1", "--out", "adir/run", "--T", "0"], ["--T"], []),
    (["compare", "RUN", "--out", "afile.txt"], ["--out", "afile.txt"], []),
    (["compare", "RUN", "--out", "/proc/trilemma-cmp"], ["--out"], []),
    (["sample", "RUN", "--out", "adir"], ["--out", "adir"], []),
    (["sample", "RUN", "--out", "x.txt"], ["--out", ".png"], []),
    (["sample", "RUN", "--out", "/proc/x.png"], ["--out"], []),
    (["sample", "RUN", "--out", "afile.txt/x.png"], ["--out"], []),
    (["sample", "RUN", "--npz", "adir"], ["--npz", "adir"], []),
    (["sample", "RUN", "--npz", "x.png"], ["--npz", ".npz"], []),
    (["sample", "RUN", "--out", "pipe.png"], ["--out", "not a regular file"], []),   # a FIFO: never replaced
    (["sample", "RUN", "--npz", "pipe.npz"], ["--npz", "not a regular file"], []),
    (["sample", "RUN", "--out", ""], ["--out"], []),
    (["generate", "RUN", "x", "--out", "adir"], ["--out"], []),
    (["generate", "RUN", "x", "--npz", "adir"], ["--npz"], []),
    (["edit", "RUN", "image.png", "x", "--out", "adir"], ["--out"], []),
    (["eval", "RUN", "--json", "adir"], ["--json", "adir"], []),
    (["eval", "RUN", "--json", "/proc/x.json"], ["--json"], []),
    (["eval", "--samples", "samples.npz", "--data", "digits", "--json", "adir"], ["--json"], []),
    (["show", "schedules", "--out", "adir"], ["--out"], []),
    (["show", "schedules", "--out", "x.txt"], ["--out", ".png"], []),
    (["show", "schedules", "--out", "/proc/s.png"], ["--out"], []),
    (["show", "forward", "--data", "digits", "--out", "adir"], ["--out"], []),
    (["show", "trajectory", "RUN", "--out", "adir"], ["--out"], []),
    (["show", "interpolation", "RUN", "--out", "adir"], ["--out"], []),
    (["demo", "--out", "afile.txt"], ["--out"], []),
    # 6. run folders
    (["sample", "nosection"], ["config.json", "diffusion"], []),
    (["sample", "garbage"], ["config.json"], []),
    (["sample", "wrongtype"], ["config.json", "base_channels"], []),
    (["sample", "wrongtype2"], ["config.json", "schedule"], []),
    (["sample", "unknownkey"], ["config.json", "foo"], []),
    (["sample", "badT"], ["config.json", "T"], ["--T"]),
    (["sample", "notobject"], ["config.json"], []),
    (["sample", "array"], ["config.json"], []),
    (["sample", "nokind"], ["config.json", "kind"], []),
    (["sample", "kindint"], ["config.json", "kind"], []),
    (["sample", "datastr"], ["config.json", "data"], []),
    (["sample", "foreign"], ["ema.safetensors"], []),
    (["sample", "shapes"], ["ema.safetensors"], []),
    (["sample", "badweights"], ["ema.safetensors"], []),
    (["sample", "onlyconfig"], ["onlyconfig"], []),
    (["sample", "afile.txt"], ["afile.txt"], []),
    (["sample", "missing"], ["missing"], []),
    (["sample", "/dev/null"], ["/dev/null"], ["no such"]),
    (["eval", "garbage"], ["config.json"], []),
    (["eval", "badT"], ["config.json"], ["--T"]),
    (["compare", "garbage", "--out", "cmp"], ["config.json"], []),
    (["show", "trajectory", "wrongtype"], ["base_channels"], []),
    (["show", "interpolation", "nosection"], ["diffusion"], []),
    (["show", "forward", "--autoencoder", "garbage"], ["config.json"], []),
    (["show", "forward", "--autoencoder", "RUN"], ["autoencoder"], []),
    (["generate", "garbage", "x"], ["config.json"], []),
    (["generate", "RUN", "x"], ["t2i"], []),
    (["generate", "RUN", "   "], ["PROMPT"], []),
    (["edit", "RUN", "missing.png", "x"], [], []),
    (["train", "ddpm", "--out", "RUN", "--resume", "--steps", "1"], ["already at step 2"], []),
    (["train", "ddpm", "--out", "truncoptim", "--resume", "--steps", "5"], ["optim.safetensors"], []),
    (["train", "ddpm", "--out", "foreignoptim", "--resume", "--steps", "5"], ["optim.safetensors"], []),
    (["train", "ddpm", "--out", "badtrainer", "--resume", "--steps", "5"], ["trainer.json"], ["interrupted"]),
    (["train", "ddpm", "--out", "steptext", "--resume", "--steps", "5"], ["trainer.json", "step"], ["interrupted"]),
    (["train", "ddpm", "--out", "onlyconfig", "--resume", "--steps", "5"], ["without --resume"], []),
    (["train", "ddpm", "--out", "RUN", "--resume", "--minutes", "0.000001"], ["already"], []),
    (["train", "ddpm", "--out", "garbage", "--resume", "--steps", "5"], ["config.json"], []),
    (["train", "ddpm", "--out", "wrongstate", "--resume", "--steps", "5"], ["config.json", "base_channels"], []),
    (["train", "ddpm", "--out", "badTstate", "--resume", "--steps", "5"], ["config.json", "T"], ["--T"]),
    (["train", "ddpm", "--out", "afile.txt", "--resume", "--steps", "5"], ["--out"], []),
    (["train", "ddpm", "--out", "missing", "--resume", "--steps", "5"], ["missing"], []),
    (["train", "gan", "--out", "RUN", "--resume", "--steps", "5"], ["ddpm"], []),
    (["train", "ddpm", "--out", "RUN", "--resume", "--steps", "5", "--lr", "0.1"], ["--lr"], []),
    (["eval", "--samples", "samples.npy", "--data", "digits"], ["samples.npy", ".npz"], []),
    (["eval", "--samples", "floats.npz", "--data", "digits"], ["uint8"], []),
    (["eval", "--samples", "/dev/null", "--data", "digits"], ["/dev/null"], ["no such"]),
    (["eval", "--samples", "samples.npz"], ["--data"], []),
    (["eval", "--samples", "samples.npz", "--data", "digits", "--n", "17"], ["--n"], []),
    (["eval"], ["RUN", "--samples"], ["not both"]),
    (["eval", "RUN", "--samples", "samples.npz", "--data", "digits"], ["not both"], []),
    (["eval", "RUN", "--data", "digits"], ["--data"], []),
    (["compare", "samples.npz", "--out", "cmp"], ["samples.npz"], []),
    (["compare", "samples.npy", "--out", "cmp"], ["samples.npy"], []),
    (["compare", "eval.json", "--out", "cmp"], ["eval.json"], []),
    (["compare", "notjson.json", "--out", "cmp"], ["notjson.json"], []),
    (["compare", "/dev/null", "--out", "cmp"], ["/dev/null"], ["no such"]),
    (["compare", "missing", "--out", "cmp"], ["missing"], []),
    # 8. misc
    (["sample", "RUN", "--sampler", "plms"], ["--sampler"], []),
    (["show", "nothing"], ["nothing"], []),
    (["nothing"], ["nothing"], []),
]


def case_params():
    for argv, must, absent in CASES:
        yield pytest.param(argv, must, absent, id=" ".join(a[:16] for a in argv[:6]))
    yield from numeric_cases()


ALL_CASES = list(case_params())


def test_the_suite_is_large():
    assert len(ALL_CASES) >= 150


@pytest.mark.parametrize("argv,must,absent", ALL_CASES)
def test_hostile_input_is_one_clean_line(argv, must, absent, workspace, capsys, monkeypatch):
    ws: Path = workspace["path"]
    monkeypatch.chdir(ws)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = [str(ws / "run") if a == "RUN" else a for a in argv]
    previous = signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(CASE_SECONDS)
    try:
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        out = capsys.readouterr()
        err = out.err
        assert code == 2, f"exit {code}\nstderr: {err}"
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        line = lines[0]
        assert line.startswith("trilemma: error: "), line
        for word in must:
            assert word in line, (word, line)
        for word in absent:
            assert word not in line, (word, line)
    finally:
        after = tree_state(ws)
        if after != workspace["state"]:                  # restore for the next cases, then fail this one
            shutil.rmtree(ws)
            copy_tree(workspace["template"], ws)
            changed = sorted(k for k in set(after) | set(workspace["state"])
                             if after.get(k) != workspace["state"].get(k))
            pytest.fail(f"the workspace changed: {changed[:8]}")


# --- option parsing, property-based ------------------------------------------------------------------

# (command prefix, option, (lo, hi)): every value the parser accepts lies in [lo, hi] and is finite
RANGES = [
    (["sample", "r"], "--n", (1, 2**63 - 1)),
    (["sample", "r"], "--seed", (0, 2**63 - 1)),
    (["sample", "r"], "--batch-size", (1, 2**63 - 1)),
    (["sample", "r"], "--steps", (1, 2**63 - 1)),
    (["sample", "r"], "--eta", (0.0, 1.0)),
    (["sample", "r"], "--guidance", (0.0, float("inf"))),
    (["sample", "r"], "--label", (0, 2**63 - 1)),
    (["generate", "r", "p"], "--guidance", (0.0, float("inf"))),
    (["edit", "r", "i", "p"], "--strength", (0.0, 1.0)),
    (["show", "schedules"], "--T", (1, 2**63 - 1)),
    (["show", "forward"], "--columns", (1, 2**63 - 1)),
    (["eval", "r"], "--seed", (0, 2**63 - 1)),
    (["compare", "r", "--out", "o"], "--n", (1, 2**63 - 1)),
    (["demo"], "--minutes", (0.0, float("inf"))),
    (["train", "ddpm", "--out", "o"], "--lr", (0.0, float("inf"))),
    (["train", "ddpm", "--out", "o"], "--seed", (0, 2**63 - 1)),
    (["train", "ddpm", "--out", "o"], "--T", (1, 2**63 - 1)),
]
TEXT = st.one_of(st.text(max_size=12), st.integers().map(str), st.floats().map(str),
                 st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "1_000", " 5 ", "٣", BIG, "-0"]))


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize("prefix,option,bounds", RANGES, ids=[f"{p[0]} {o}" for p, o, _ in RANGES])
@FUZZ
@given(text=TEXT)
def test_numeric_options_parse_to_a_valid_value_or_one_clean_line(prefix, option, bounds, text, parser):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args([*prefix, f"{option}={text}"])
    except SystemExit as e:
        err = stderr.getvalue()
        assert e.code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("trilemma: error: ") and option in lines[0], err
        return
    value = getattr(args, option.lstrip("-").replace("-", "_"))
    lo, hi = bounds
    assert not isinstance(value, bool)
    assert isinstance(value, (int, float)) and not math.isnan(value) and lo <= value <= hi, (text, value)
    if isinstance(lo, float) or isinstance(hi, float) and hi != float("inf"):
        assert abs(value) != float("inf")
