"""Errors the user can fix: a config value, a flag, a data file, the workdir.

`python -m tripletjax.main` prints such an error as one line, `error: <message>` (and a
`hint: ...` line when there is advice), and exits with status 2, without a traceback; any other
exception is a bug and keeps its traceback. Each class also derives from the built-in type that
callers of the library catch (ValueError, FileNotFoundError, ...), so raising one instead of
the built-in breaks no `except` clause.
"""

from __future__ import annotations


class UserError(Exception):
  """An error the user can fix; `hint` is optional advice, one line."""

  def __init__(self, message: str, hint: str | None = None):
    super().__init__(message)
    self.hint = hint


class ConfigError(UserError, ValueError):
  """A config value (or a command-line flag) that is not allowed."""


class DataError(UserError, ValueError):
  """Data that cannot be used: an unknown dataset name, a malformed file."""


class DataNotFoundError(UserError, FileNotFoundError):
  """A data file or folder that does not exist."""


class DataUnavailableError(UserError, RuntimeError):
  """Data that exists somewhere but cannot be had here (offline, needs another package)."""


class MissingDependencyError(UserError, ImportError):
  """An optional package that the chosen configuration needs."""


class WorkdirError(UserError, OSError):
  """A workdir that cannot be created or written."""
