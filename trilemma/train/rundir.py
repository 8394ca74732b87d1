"""Run folders on the training side: create a new one (never overwriting a run), or read one back to resume.

A folder that holds a ``config.json`` but neither a checkpoint (``state/trainer.json``) nor weights
is a run whose set-up failed before its first save: a plain rerun re-creates it (``--resume`` has
nothing to resume and says so). Everything a resume needs is checked before anything is written:
``config.json`` (through :func:`trilemma.run.read_run_config`), ``state/trainer.json``, the
step-tagged weight and state files, and the new budget (``--steps 2`` on a run at step 5 is
refused, not written into ``config.json``). Temporary files of writes killed mid-way are removed
when a run starts or resumes (:func:`trilemma.utils.io.remove_stale_temps`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from trilemma.errors import RunError
from trilemma.run import read_run_config
from trilemma.utils.io import (
    read_json,
    remove_stale_temps,
    tensors_metadata,
    write_json,
)

WEIGHT_STEMS = ("model", "ema", "disc")
_TENSOR_NAME = re.compile(r"^([^.]+)\.(\d+)\..+$")


def has_checkpoint(out: Path) -> bool:
    return (Path(out) / "state" / "trainer.json").is_file()


def is_unstarted(out: Path) -> bool:
    """A folder with ``config.json`` but no checkpoint and no weights: its set-up failed before the first save."""
    out = Path(out)
    return (out / "config.json").is_file() and not has_checkpoint(out) and not any(out.glob("*.safetensors"))


def _clean(out: Path) -> None:
    for folder in (out, out / "state", out / "samples"):
        remove_stale_temps(folder)


def checkpoint_info(out: Path) -> dict[str, Any]:
    """``state/trainer.json`` of a run, checked: an object whose ``step`` is an integer >= 0."""
    path = Path(out) / "state" / "trainer.json"
    try:
        info = read_json(path)
    except RunError as e:
        raise RunError(f"{e}; the checkpoint's commit mark is damaged, cannot resume from it") from None
    if not isinstance(info, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(info).__name__}; cannot resume from it")
    step = info.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 2**63:
        raise RunError(f"{path}: 'step' must be an integer >= 0, got {step!r}; cannot resume from it")
    elapsed = info.get("elapsed_s", 0.0)
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not math.isfinite(elapsed) \
            or not 0 <= elapsed < 1e9:
        raise RunError(f"{path}: 'elapsed_s' must be a number of seconds in [0, 1e9), got {elapsed!r}; cannot "
                       f"resume from it")
    return info


def _file_step(path: Path) -> int:
    step = tensors_metadata(path).get("step")
    try:
        return int(step)
    except (TypeError, ValueError):
        raise RunError(f"{path}: no step in its metadata (not written by trilemma); cannot resume") from None


def check_checkpoint_files(out: Path, step: int) -> None:
    """The weight and state files of the checkpoint at ``step`` are readable, step-tagged and of this run."""
    from safetensors import safe_open

    out = Path(out)
    for stem in WEIGHT_STEMS:                       # "model" always; "ema", "disc" where the run has them
        path = out / f"{stem}.safetensors"
        if stem == "model" or path.exists():
            saved = _file_step(path)
            if saved != step:
                raise RunError(f"{path} is from step {saved} but the checkpoint is from step {step}: the "
                               f"last save was interrupted; cannot resume safely")
    optim = out / "state" / "optim.safetensors"
    metadata = tensors_metadata(optim)
    saved = _file_step(optim)
    if saved != step:
        raise RunError(f"{optim} is from step {saved} but the checkpoint is from step {step}: the last save was "
                       f"interrupted; cannot resume safely")
    try:
        meta = json.loads(metadata.get("meta", ""))
    except (json.JSONDecodeError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or not all(
            isinstance(m, dict) and isinstance(m.get("param_groups"), list) and m["param_groups"]
            and isinstance(m.get("scalars"), dict) for m in meta.values()):
        raise RunError(f"{optim}: no optimiser description in its metadata (not a trilemma checkpoint); "
                       f"cannot resume")
    try:
        with safe_open(str(optim), framework="pt") as f:
            names = list(f.keys())
    except Exception as e:
        raise RunError(f"{optim}: not a readable safetensors file ({e}); cannot resume") from None
    for name in names:
        match = _TENSOR_NAME.match(name)
        if match is None or match.group(1) not in meta:
            raise RunError(f"{optim}: holds {name!r}, not a state of this run's optimisers "
                           f"({', '.join(meta)}); cannot resume")
    _file_step(out / "state" / "rng.safetensors")


def check_run_dir(out: Path, *, resume: bool, steps: int | None = None, minutes: float | None = None,
                  kind: str | None = None) -> None:
    """Refuse, before any work, a folder that cannot be a new run (``resume=False``) or be resumed.

    Writes nothing. New: no run there yet (an unstarted one, see :func:`is_unstarted`, may be redone).
    Resume: a complete checkpoint (see :func:`check_checkpoint_files`) of a ``kind`` run whose new
    budget lies beyond where it is.
    """
    out = Path(out)
    if not resume:
        if (out / "config.json").exists() and not is_unstarted(out):
            raise RunError(f"--out: {out} already holds a run; pass --resume to continue it or choose another "
                           f"folder")
        return
    if not out.is_dir() or not (out / "config.json").is_file():
        raise RunError(f"--resume: {out} is not a run folder (no config.json)")
    config = read_run_config(out)
    if kind is not None and config["kind"] != kind:
        raise RunError(f"--resume: {out} is a {config['kind']!r} run, not {kind}")
    if not has_checkpoint(out):
        if is_unstarted(out):
            raise RunError(f"--resume: {out} has no checkpoint yet (its set-up stopped before the first save); "
                           f"run the same command without --resume to start it again")
        raise RunError(f"--resume: {out} has no checkpoint to resume from (no state/trainer.json)")
    info = checkpoint_info(out)
    step, elapsed = info["step"], float(info.get("elapsed_s", 0.0))
    if steps is not None and steps <= step:
        raise RunError(f"--steps {steps}: {out} is already at step {step}; give a larger --steps to train further")
    if minutes is not None and minutes * 60 <= elapsed:
        raise RunError(f"--minutes {minutes:g}: {out} has already trained {elapsed / 60:.2f} minutes; give a "
                       f"larger --minutes to train further")
    check_checkpoint_files(out, step)


def prepare_run_dir(out: Path, resume: bool, config: dict[str, Any] | None) -> dict[str, Any]:
    """Create ``out`` for a new run (refusing to overwrite one), or read its config to resume."""
    out = Path(out)
    if resume:
        check_run_dir(out, resume=True)
        _clean(out)
        return read_run_config(out)
    check_run_dir(out, resume=False)
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    write_json(out / "config.json", config)
    return config


def with_budget(train: dict[str, Any], steps: int | None, minutes: float | None) -> dict[str, Any]:
    """A stored train config with the budget replaced (when resuming with a new --steps/--minutes)."""
    if steps is None and minutes is None:
        return train
    return {**train, "steps": steps, "minutes": minutes}


def resume_config(out: Path, kind: str, steps: int | None, minutes: float | None,
                  drop: tuple[str, ...] = (), changes: dict[str, Any] | None = None,
                  write: bool = True) -> dict[str, Any]:
    """The config of the ``kind`` run in ``out``, with a new budget (and ``drop`` keys removed), written back.

    ``changes`` replaces train options that may differ between sessions (device, bf16, cadences).
    Everything is checked (:func:`check_run_dir`) before ``config.json`` is rewritten; with
    ``write=False`` nothing is written (the caller writes it with :func:`write_run_config` once the
    family has read every section back).
    """
    check_run_dir(out, resume=True, steps=steps, minutes=minutes, kind=kind)
    config = prepare_run_dir(out, True, None)
    if not isinstance(config.get("train"), dict):
        raise RunError(f"{Path(out) / 'config.json'}: no 'train' section")
    config["train"] = {**with_budget(config["train"], steps, minutes), **(changes or {})}
    for key in drop:
        config.pop(key, None)
    if write:
        write_run_config(out, config)
    return config


def write_run_config(out: Path, config: dict[str, Any]) -> None:
    write_json(Path(out) / "config.json", config)
