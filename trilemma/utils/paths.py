"""Where trilemma keeps caches (feature networks, dataset statistics, latents)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$TRILEMMA_CACHE`` (default ``~/.cache/trilemma``) joined with ``parts``, created."""
    root = Path(os.environ.get("TRILEMMA_CACHE") or Path.home() / ".cache" / "trilemma")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(obj, length: int = 16) -> str:
    """A short hex digest of a JSON-serialisable object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
