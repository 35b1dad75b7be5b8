"""Exceptions raised by flatminima.

Every error that a user can cause (bad configuration, missing data, a corrupt checkpoint, an unknown
run) is a subclass of :class:`FlatminimaError`, so that the command-line interface can turn it into a
single line on stderr with exit code 2, and library users can catch one base class.
"""

from __future__ import annotations


class FlatminimaError(Exception):
    """Base class of every error flatminima raises on bad input."""


class ConfigError(FlatminimaError, ValueError):
    """An argument or configuration value is invalid (unknown name, out of range, wrong shape)."""


class DataNotFoundError(FlatminimaError, FileNotFoundError):
    """A real data set is not installed; the message says how to get it."""


class CheckpointError(FlatminimaError):
    """A checkpoint file is missing, truncated or not a flatminima checkpoint."""


class RunNotFoundError(FlatminimaError, KeyError):
    """No run with the given id exists in the run store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it a plain line
        return str(self.args[0]) if self.args else "run not found"


class ConvergenceError(FlatminimaError):
    """An iterative method did not reach its tolerance within its budget."""


class DataFormatError(DataNotFoundError):
    """A data file exists but cannot be used: a bad header, a truncated body, counts that do not match.

    A subclass of :class:`DataNotFoundError`, so code that handles missing data handles unusable data too.
    """


class StoreError(FlatminimaError):
    """The run store cannot be used: its location is not a folder, cannot be created or is not writable."""


class StoreNotFoundError(StoreError):
    """A store opened only for reading does not exist (nothing has been stored there yet)."""


class StoreCorruptError(StoreError):
    """The store's SQLite index is damaged; the message says how to recover (the run folders stay readable)."""
