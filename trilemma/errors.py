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


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a training inside a command that trains several runs (an experiment).

    The trainer saved its checkpoint before returning; the command stops there instead of going on to
    its next run. The CLI prints ``trilemma: <message>`` and exits with 130 (143 for SIGTERM), as
    ``trilemma train`` does. Not a :class:`TrilemmaError`: nothing was wrong with the input.
    """

    def __init__(self, message: str, signal: str | None = None):
        super().__init__(message)
        self.signal = signal
