"""A training run's progress, read from its folder while `trilemma train` writes it elsewhere.

The training loop (``trilemma/train/loop.py``) appends one JSON line per logged step to
``metrics.jsonl`` (``step``, the losses, ``elapsed_s``), writes preview grids
``samples/step_<step>.png`` and the last checkpoint's step to ``state/trainer.json``; the budget
(``steps`` or ``minutes``) is in ``config.json``'s ``train`` section. Nothing here writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trilemma.utils.io import read_metrics_rows

RUNNING_WITHIN_S = 120.0        # metrics.jsonl written this recently: the run is probably still training


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int | None
    minutes: float | None
    elapsed_s: float | None
    eta_s: float | None
    checkpoint_step: int | None
    preview: Path | None
    last_write_age_s: float | None
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.total_steps is not None and self.step >= self.total_steps

    def text(self) -> str:
        parts = [f"**step {self.step}" + (f" / {self.total_steps}**" if self.total_steps else "**")]
        if self.total_steps:
            parts.append(f"{100 * min(1.0, self.step / self.total_steps):.0f} %")
        if self.minutes:
            parts.append(f"budget {self.minutes:g} min")
        if self.elapsed_s is not None:
            parts.append(f"elapsed {format_seconds(self.elapsed_s)}")
        if self.finished:
            parts.append("finished")
        elif self.eta_s is not None:
            parts.append(f"ETA {format_seconds(self.eta_s)}")
        if self.checkpoint_step is not None:
            parts.append(f"last checkpoint at step {self.checkpoint_step}")
        if self.last_write_age_s is not None:
            state = "training" if self.last_write_age_s < RUNNING_WITHIN_S and not self.finished else "idle"
            parts.append(f"metrics.jsonl written {format_seconds(self.last_write_age_s)} ago ({state})")
        elif not self.rows:
            parts.append("no metrics.jsonl yet")
        return " · ".join(parts)


def format_seconds(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows; a line being written (cut off) or otherwise unreadable is skipped."""
    return read_metrics_rows(path)[0]


def eta(step: int, rows: list[dict[str, Any]], total_steps: int | None, minutes: float | None) -> float | None:
    """Seconds left: a minutes budget minus the elapsed time, or the steps left at the recent pace.

    The pace is the elapsed time per step over the last (up to 10) logged intervals, so a slow
    start (compilation, data loading) does not skew it.
    """
    timed = [r for r in rows if isinstance(r.get("elapsed_s"), (int, float))]
    if minutes:
        elapsed = timed[-1]["elapsed_s"] if timed else 0.0
        return max(0.0, 60.0 * minutes - elapsed)
    if not total_steps or len(timed) < 1:
        return None
    recent = timed[-11:]
    if len(recent) >= 2 and recent[-1]["step"] > recent[0]["step"]:
        per_step = (recent[-1]["elapsed_s"] - recent[0]["elapsed_s"]) / (recent[-1]["step"] - recent[0]["step"])
    elif recent[-1]["step"] > 0:
        per_step = recent[-1]["elapsed_s"] / recent[-1]["step"]
    else:
        return None
    return max(0, total_steps - step) * max(per_step, 0.0)


def progress(run_dir: Path, now: float | None = None) -> Progress:
    """The progress of the run in ``run_dir`` (a folder with config.json)."""
    from trilemma.run import read_run_config

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    train = config.get("train") or {}
    total = train.get("steps") if isinstance(train.get("steps"), int) else None
    minutes = train.get("minutes") if isinstance(train.get("minutes"), (int, float)) else None
    metrics = run_dir / "metrics.jsonl"
    rows = read_rows(metrics)
    checkpoint = None
    try:
        checkpoint = int(json.loads((run_dir / "state" / "trainer.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    step = max([rows[-1]["step"] if rows else 0, checkpoint or 0])
    elapsed = next((r["elapsed_s"] for r in reversed(rows) if isinstance(r.get("elapsed_s"), (int, float))), None)
    previews = sorted((run_dir / "samples").glob("step_*.png"))
    now = time.time() if now is None else now
    age = now - metrics.stat().st_mtime if metrics.is_file() else None
    return Progress(step=step, total_steps=total, minutes=minutes, elapsed_s=elapsed,
                    eta_s=eta(step, rows, total, minutes), checkpoint_step=checkpoint,
                    preview=previews[-1] if previews else None, last_write_age_s=age, rows=rows)


def loss_series(rows: list[dict[str, Any]]) -> list[tuple[int, str, float]]:
    """(step, series, value) for every logged loss term (keys starting with "loss"), finite values only."""
    import math

    out = []
    for r in rows:
        for key, value in r.items():
            if key.startswith("loss") and isinstance(value, (int, float)) and math.isfinite(value):
                out.append((r["step"], key, float(value)))
    return out
