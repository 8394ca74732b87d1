"""Which files the web page may open: run folders and eval JSON files under the served roots.

Every value that comes from the page (a dropdown, a typed path) is a string an attacker can craft
("../../etc", a symlink out of the runs folder, an absolute path). :meth:`ServedPaths.run` and
:meth:`ServedPaths.eval_file` resolve it to a real path (symlinks followed, ``..`` removed) and
accept it only when that real path lies inside one of the roots given on the command line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from trilemma.errors import RunError

SKIP_DIRS = {"state", "samples", "__pycache__", ".git", "node_modules"}
MAX_DEPTH = 4                       # folders below a root searched for runs
MAX_JSON_BYTES = 5_000_000          # eval JSON files larger than this are not listed (nor read)


@dataclass
class ServedPaths:
    """The roots the page may read: the given run folders and the ``--runs-dir`` folder."""

    roots: list[Path]                                  # real paths
    runs_dir: Path | None = None
    given: list[Path] = field(default_factory=list)    # the RUN_DIRs as typed (listed first)

    @classmethod
    def from_args(cls, run_dirs: list[str], runs_dir: str | None) -> ServedPaths:
        roots, given = [], []
        for item in run_dirs:
            p = Path(item)
            if not p.is_dir():
                raise RunError(f"{item}: no such run folder")
            roots.append(p.resolve())
            given.append(p)
        rd = Path(runs_dir) if runs_dir else None
        if rd is not None and rd.is_dir():
            roots.append(rd.resolve())
        return cls(roots=roots, runs_dir=rd, given=given)

    # ------------------------------------------------------------------ checking page input
    def inside(self, real: Path) -> bool:
        return any(real == root or root in real.parents for root in self.roots)

    def _resolve(self, value: str, what: str) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise RunError(f"choose a {what}")
        if "\x00" in value:
            raise RunError(f"{value!r}: not a valid path")
        try:
            real = Path(value.strip()).resolve()
        except (OSError, RuntimeError, ValueError):
            raise RunError(f"{value!r}: not a valid path") from None
        if not self.inside(real):
            served = ", ".join(str(r) for r in self.roots) or "none"
            raise RunError(f"{value}: outside the folders this app serves ({served})")
        return real

    def run(self, value: str) -> Path:
        """The real path of a run folder chosen on the page (it must have a config.json)."""
        real = self._resolve(value, "run folder")
        if not (real / "config.json").is_file():
            raise RunError(f"{value}: not a run folder (no config.json)")
        return real

    def eval_file(self, value: str) -> Path:
        real = self._resolve(value, "file")
        if not real.is_file():
            raise RunError(f"{value}: no such file")
        return real

    def item(self, value: str) -> Path:
        """A run folder or an eval JSON file (the Compare tab)."""
        real = self._resolve(value, "run folder or eval JSON file")
        if real.is_dir():
            return self.run(value)
        if real.is_file() and real.suffix == ".json":
            return real
        raise RunError(f"{value}: neither a run folder nor a .json file")

    # ------------------------------------------------------------------ discovery
    def runs(self) -> list[str]:
        """Run folders (those with a config.json that names a kind): the given ones, then those found."""
        found: list[str] = []
        for p in self.given:
            if _is_run(p):
                found.append(str(p))
        for root in self._search_roots():
            for d in _walk(root):
                if _is_run(d):
                    found.append(str(d))
        return _unique_real(found)

    def eval_files(self) -> list[str]:
        """Eval results (``trilemma eval --json``, a run's eval.json) under the roots."""
        found: list[str] = []
        for root in self._search_roots() + [p for p in self.given if _is_run(p)]:
            for d in _walk(root, into_runs=True):
                for f in sorted(d.glob("*.json")):
                    if f.name not in ("config.json", "compare.json") and _is_eval(f):
                        found.append(str(f))
        return _unique_real(found)

    def _search_roots(self) -> list[Path]:
        roots = [p for p in self.given if not _is_run(p)]
        if self.runs_dir is not None and self.runs_dir.is_dir():
            roots.append(self.runs_dir)
        return roots


def _is_run(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        if config.stat().st_size > MAX_JSON_BYTES:
            return False
        return "kind" in json.loads(config.read_text())
    except (OSError, ValueError, TypeError):
        return False


def _is_eval(path: Path) -> bool:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return False
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "schema" in data and "quality" in data


def _walk(root: Path, into_runs: bool = False):
    """Folders under ``root`` (itself included), depth-limited, not following symlinks out of it."""
    root_real = root.resolve()
    stack = [(root, 0)]
    while stack:
        d, depth = stack.pop()
        yield d
        if depth >= MAX_DEPTH or (not into_runs and d != root and _is_run(d)):
            continue
        try:
            children = sorted((c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")
                               and c.name not in SKIP_DIRS), reverse=True)
        except OSError:
            continue
        for c in children:
            real = c.resolve()
            if real == root_real or root_real in real.parents:
                stack.append((c, depth + 1))


def _unique_real(paths: list[str]) -> list[str]:
    seen, out = set(), []
    for p in paths:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            out.append(p)
    return out
