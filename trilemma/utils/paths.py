"""Where trilemma keeps caches (feature networks, dataset statistics, latents)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from trilemma.errors import CacheError


def cache_dir(*parts: str) -> Path:
    """``$TRILEMMA_CACHE`` (default ``~/.cache/trilemma``) joined with ``parts``, created.

    A cache that cannot be created there (a file in the way, a read-only or missing place) is a
    one-line :class:`~trilemma.errors.CacheError` naming the variable; the optional caches (decoded
    image folders, the fused kernels) catch it and work without.
    """
    given = os.environ.get("TRILEMMA_CACHE")
    root = Path(given).expanduser() if given else Path.home() / ".cache" / "trilemma"
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = f"TRILEMMA_CACHE={given}" if given else f"the cache folder {root}"
        raise CacheError(f"{where}: cannot create {path} ({e.strerror or e}); point TRILEMMA_CACHE at a "
                         f"writable folder") from None
    return path


def stable_hash(obj, length: int = 16) -> str:
    """A short hex digest of a JSON-serialisable object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
