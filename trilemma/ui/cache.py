"""Runs loaded once and kept: keyed by the run folder and the checksum of its weights.

Loading a run (building the networks, reading safetensors, the text encoder) costs more than a
small sampling job, so the page keeps the last few runs in memory. The key includes a SHA-256 of
the run's weight files, so a run that `trilemma train` has just checkpointed again is reloaded
rather than served stale; the checksum itself is recomputed only when a file's size or
modification time changes.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from trilemma.run import GeneratorRun

_CHUNK = 1 << 20


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class WeightsChecksum:
    """SHA-256 over a run folder's ``*.safetensors`` (names and bytes), memoised on (size, mtime)."""

    def __init__(self):
        self._memo: dict[str, tuple[tuple[int, int], str]] = {}
        self._lock = threading.Lock()

    def __call__(self, run_dir: Path) -> str:
        h = hashlib.sha256()
        for f in sorted(Path(run_dir).glob("*.safetensors")):
            st = f.stat()
            sig = (st.st_size, st.st_mtime_ns)
            with self._lock:
                memo = self._memo.get(str(f))
            if memo is None or memo[0] != sig:
                memo = (sig, _file_digest(f))
                with self._lock:
                    self._memo[str(f)] = memo
            h.update(f.name.encode() + b"\0" + memo[1].encode())
        return h.hexdigest()


class RunCache:
    """At most ``capacity`` loaded runs, least recently used dropped first; thread-safe.

    ``loader(path)`` is :func:`trilemma.registry.load_run` with the app's device. ``loads`` and
    ``hits`` count what happened (the tests read them).
    """

    def __init__(self, loader: Callable[[Path], GeneratorRun], capacity: int = 4):
        self.loader = loader
        self.capacity = capacity
        self.checksum = WeightsChecksum()
        self._runs: OrderedDict[tuple[str, str], GeneratorRun] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self.loads = 0
        self.hits = 0

    def key(self, run_dir: Path) -> tuple[str, str]:
        return (str(Path(run_dir).resolve()), self.checksum(run_dir))

    def get(self, run_dir: Path) -> tuple[GeneratorRun, bool]:
        """``(run, was_cached)``."""
        key = self.key(run_dir)
        with self._lock:
            if key in self._runs:
                self._runs.move_to_end(key)
                self.hits += 1
                return self._runs[key], True
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:                                      # two requests for one run load it once
            with self._lock:
                if key in self._runs:
                    self.hits += 1
                    return self._runs[key], True
            run = self.loader(Path(run_dir))
            with self._lock:
                for old in [k for k in self._runs if k[0] == key[0]]:   # older weights of this run
                    del self._runs[old]
                self._runs[key] = run
                self.loads += 1
                while len(self._runs) > self.capacity:
                    self._runs.popitem(last=False)
                self._loading.pop(key, None)
        return run, False
