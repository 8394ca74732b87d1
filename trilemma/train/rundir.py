"""Run folders on the training side: create a new one (never overwriting a run), or read one back to resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trilemma.errors import RunError
from trilemma.utils.io import read_json, write_json


def prepare_run_dir(out: Path, resume: bool, config: dict[str, Any] | None) -> dict[str, Any]:
    """Create ``out`` for a new run (refusing to overwrite one), or read its config to resume."""
    out = Path(out)
    if resume:
        if not (out / "config.json").is_file():
            raise RunError(f"--resume: {out} is not a run folder (no config.json)")
        if not (out / "state" / "trainer.json").is_file():
            raise RunError(f"--resume: {out} has no checkpoint to resume from")
        return read_json(out / "config.json")
    if (out / "config.json").exists():
        raise RunError(f"--out: {out} already holds a run; pass --resume to continue it or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    return config


def with_budget(train: dict[str, Any], steps: int | None, minutes: float | None) -> dict[str, Any]:
    """A stored train config with the budget replaced (when resuming with a new --steps/--minutes)."""
    if steps is None and minutes is None:
        return train
    return {**train, "steps": steps, "minutes": minutes}


def resume_config(out: Path, kind: str, steps: int | None, minutes: float | None,
                  drop: tuple[str, ...] = (), changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config of the ``kind`` run in ``out``, with a new budget (and ``drop`` keys removed), written back.

    ``changes`` replaces train options that may differ between sessions (device, bf16, cadences).
    """
    config = prepare_run_dir(out, True, None)
    if config.get("kind") != kind:
        raise RunError(f"--resume: {out} is a {config.get('kind')!r} run, not {kind}")
    config["train"] = {**with_budget(config["train"], steps, minutes), **(changes or {})}
    for key in drop:
        config.pop(key, None)
    write_json(Path(out) / "config.json", config)
    return config

