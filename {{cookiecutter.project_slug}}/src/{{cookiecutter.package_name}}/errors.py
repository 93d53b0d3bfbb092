"""Errors meant for the user. The command line prints any ``UserError`` as one ``ERROR:`` line
and exits with status 2; every other exception is a bug and keeps its traceback.

Each message names what is wrong (the key, the file, the value) and what to do about it.
"""


class UserError(Exception):
    """A mistake the user can fix, explained in one message."""


class ConfigError(UserError, ValueError):
    """A configuration key or value that cannot work."""


class DataError(UserError, ValueError):
    """Data that cannot be used as configured."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss stayed NaN or infinite for too many steps in a row."""


class MissingPackage(UserError, ImportError):
    """An optional package that the chosen setting needs is not installed."""


class Interrupted(Exception):
    """Training stopped by a signal (Ctrl-C, or SIGTERM from SLURM or a closing Colab session)
    after saving last.ckpt. Not a mistake, but not a finished run either: the command line
    prints where it stopped and how to resume, and exits with 128 + the signal's number. With
    several processes all stop alike, and only the first (``report=True``) prints it."""

    def __init__(self, message: str, signal_number: int, report: bool = True):
        super().__init__(message)
        self.exit_code = 128 + signal_number
        self.report = report


class OfflineWeights(UserError):
    """Weights a feature extractor needs are not here and cannot be downloaded."""


def describe(error: Exception, length: int = 100) -> str:
    """An exception quoted in one short line of a user's error: its kind and the first ``length``
    characters of its message's first line."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:length]}" if text else type(error).__name__
