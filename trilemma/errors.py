"""Errors that reach the user as one clear line.

Anything raised as a :class:`TrilemmaError` is printed by the CLI as
``trilemma: error: <message>`` with exit code 2 and no traceback. Raise it for
bad input (options, paths, files, data); let genuine bugs propagate.
"""


class TrilemmaError(Exception):
    """A problem with the user's input, reported in one line."""


class DataError(TrilemmaError):
    """A dataset cannot be found, read or is empty."""


class RunError(TrilemmaError):
    """A run folder is missing, incomplete or inconsistent."""


class CacheError(TrilemmaError):
    """``$TRILEMMA_CACHE`` (or the default cache folder) cannot hold the cache; optional caches catch it."""
