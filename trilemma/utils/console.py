"""Status lines for the user: on stderr, so that stdout stays parseable."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    """Print a status line for the user (stderr, so stdout stays parseable)."""
    print(message, file=sys.stderr, flush=True)
