"""Checks on output paths, done before any work starts.

A command that trains for an hour and then fails to write its PNG has wasted the
hour, so every ``--out``/``--json``/``--npz`` is checked up front:
:func:`output_file` for one file, :func:`output_dir` for a folder (run folders,
``compare --out``). Neither creates anything: they probe, by creating and removing
a temporary file, that the nearest existing folder on the path accepts new files,
and leave the creation to the writer (:func:`trilemma.utils.io.atomic_path`
creates missing parents).

Problems raise :class:`~trilemma.errors.TrilemmaError` (:class:`~trilemma.errors.RunError`
for "already holds a run" / "not a run folder") with one line that names the option
and the path, e.g. ``--out: x.txt: expected a .png file``.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from trilemma.errors import RunError, TrilemmaError

RUN_MARKER = "config.json"  # a folder holding this file holds a run (see trilemma.runs)


def output_file(path: str | os.PathLike, option: str, *, suffixes: Sequence[str] | None = (".png",),
                overwrite: bool = True, run_file: bool = False) -> Path:
    """Check that ``path`` can be written as a new or replaced file; return it as a :class:`Path`.

    - not an existing folder, nor an existing special file (``/dev/null``, a FIFO:
      an atomic write would replace it);
    - not one of the files a run folder keeps (config.json, weights, state/, metrics.jsonl,
      loss.png, eval.json, …: see :func:`run_file_of`), so that ``eval --json RUN/config.json``
      cannot destroy the run it is scoring (``run_file=True``: the command that owns such a file,
      ``trilemma eval RUN`` writing ``RUN/eval.json``, is writing it);
    - its name ends with one of ``suffixes`` (any case; ``None`` accepts any name);
    - with ``overwrite=False``, it does not exist yet;
    - its folder exists or can be created (no file in the way) and accepts new files.
    """
    path = _as_path(path, option)
    label = f"{option}: {path}"
    if _is_dir(path):
        raise TrilemmaError(f"{label}: is a folder; expected {_expected(suffixes)}")
    if suffixes is not None and not any(path.name.lower().endswith(s.lower()) for s in suffixes):
        raise TrilemmaError(f"{label}: expected {_expected(suffixes)}")
    if not run_file:
        _refuse_run_file(path, label)
    info = _stat(path)
    if info is not None:
        if not stat.S_ISREG(info.st_mode):
            raise TrilemmaError(f"{label}: exists and is not a regular file")
        if not overwrite:
            raise TrilemmaError(f"{label}: already exists; choose another name or remove it")
    _check_writable_parent(path, label, path.parent)
    return path


def output_dir(path: str | os.PathLike, option: str, *, must_be_new: bool = False,
               allow_existing_run: bool = True, require_run: bool = False) -> Path:
    """Check that ``path`` can be used as an output folder; return it as a :class:`Path`.

    - not an existing file; inside a folder (no file in the way); writable (an
      existing folder, or the nearest existing one above it, accepts new files);
    - ``must_be_new``: it does not exist or is empty;
    - ``allow_existing_run=False``: it does not hold a run yet (no ``config.json``):
      :class:`RunError` "already holds a run" (train without ``--resume``);
    - ``require_run``: it holds a run: :class:`RunError` "is not a run folder"
      (train ``--resume``).
    """
    path = _as_path(path, option)
    label = f"{option}: {path}"
    info = _stat(path)
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise TrilemmaError(f"{label}: is a file, expected a folder")
    _refuse_run_subfolder(path, label)
    exists = info is not None
    if require_run and not (exists and (path / RUN_MARKER).is_file()):
        raise RunError(f"{label}: is not a run folder (no {RUN_MARKER})")
    if not allow_existing_run and exists and (path / RUN_MARKER).exists():
        raise RunError(f"{label}: already holds a run; pass --resume to continue it or choose another folder")
    if must_be_new and exists and _non_empty(path, label):
        raise TrilemmaError(f"{label}: already exists and is not empty; choose a new folder")
    _check_writable_parent(path, label, path if exists else path.parent)
    return path


# The files a trainer or ``trilemma eval`` writes into a run folder, relative to it (beside every
# ``*.safetensors``, everything under ``state/`` and the training previews ``samples/step_*``).
# Other files there (``samples/ddim.png`` of ``trilemma sample``, a user's own grid) may be written over.
RUN_FILES = frozenset({RUN_MARKER, "metrics.jsonl", "loss.png", "recon.json", "eval_elbo.json", "eval.json",
                       "samples/reconstructions.png", "samples/prompts.txt"})


def enclosing_run(path: str | os.PathLike) -> tuple[Path, Path] | None:
    """``(run folder, path inside it)`` for the nearest folder above ``path`` (links resolved) that
    holds ``config.json``; ``None`` when no folder above it does. A run inside a run (a latent
    run's ``autoencoder/``, a recipe's phase) counts as its own run."""
    real = Path(os.path.realpath(os.fspath(path)))
    for folder in real.parents:
        try:
            if (folder / RUN_MARKER).is_file():
                return folder, real.relative_to(folder)
        except OSError:
            continue
    return None


def run_file_of(path: str | os.PathLike) -> tuple[Path, Path] | None:
    """``(run folder, path inside it)`` when ``path`` is one of the files a run folder keeps, else ``None``."""
    found = enclosing_run(path)
    if found is None:
        return None
    inside = found[1]
    if (inside.as_posix() in RUN_FILES or inside.suffix == ".safetensors"
            or (len(inside.parts) > 1 and inside.parts[0] == "state")
            or (len(inside.parts) == 2 and inside.parts[0] == "samples" and inside.name.startswith("step_"))):
        return found
    return None


# --- internals -------------------------------------------------------------------------------

def _as_path(path: str | os.PathLike, option: str) -> Path:
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise TrilemmaError(f"{option}: expected a path, got {text!r}")
    if "\0" in text:
        raise TrilemmaError(f"{option}: {text!r}: a path cannot contain a NUL character")
    return Path(text).expanduser()


RUN_SUBFOLDERS = ("state", "samples", "autoencoder")   # a run's own subfolders: no output folder goes there


def _refuse_run_subfolder(path: Path, label: str) -> None:
    found = enclosing_run(path)
    if found is not None:
        folder, inside = found
        if inside.parts[0] in RUN_SUBFOLDERS and not (folder / inside / RUN_MARKER).is_file():
            raise TrilemmaError(f"{label}: is inside {inside.parts[0]}/ of the run folder {folder}, which the run "
                                f"keeps for itself; choose a folder outside it")


def _refuse_run_file(path: Path, label: str) -> None:
    found = run_file_of(path)
    if found is not None:
        folder, inside = found
        raise TrilemmaError(f"{label}: is the file {inside} of the run folder {folder}; writing it would "
                            "damage the run, choose another name")


def _expected(suffixes: Sequence[str] | None) -> str:
    if not suffixes:
        return "a file"
    names = [s if s.startswith(".") else f".{s}" for s in suffixes]
    return f"a {' or '.join(names)} file"


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _stat(path: Path) -> os.stat_result | None:
    """``stat`` of what ``path`` points to; ``None`` if nothing is there (or a dangling link)."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENAMETOOLONG):
            return None  # reported by the parent/name checks below
        raise TrilemmaError(f"{path}: cannot inspect ({e.strerror or e})") from None


def _non_empty(path: Path, label: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    except OSError as e:
        raise TrilemmaError(f"{label}: cannot list the folder ({e.strerror or e})") from None


def _check_writable_parent(path: Path, label: str, folder: Path) -> None:
    """``folder`` (or, where missing, its nearest existing ancestor) accepts new files.

    Also checks that no missing component is longer than the file system allows.
    """
    folder = Path(os.path.abspath(folder))
    missing: list[str] = []
    while True:
        info = _stat(folder)
        if info is not None:
            break
        if folder.parent == folder:  # only the root is left (cannot happen on a sane system)
            raise TrilemmaError(f"{label}: no existing folder on the path")
        missing.append(folder.name)
        folder = folder.parent
    if not stat.S_ISDIR(info.st_mode):
        raise TrilemmaError(f"{label}: {folder} is a file, not a folder")
    name_max = _name_max(folder)
    for part in [*missing, path.name]:
        if len(os.fsencode(part)) > name_max:
            raise TrilemmaError(f"{label}: the name {part[:40]!r}... is longer than {name_max} bytes")
    try:
        fd, probe = tempfile.mkstemp(prefix=".trilemma-write-test-", dir=folder)
    except OSError as e:
        raise TrilemmaError(f"{label}: cannot create files in {folder} ({e.strerror or e})") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255
