"""Errors a user can fix (config, data, workdir, flags): `main` prints them as one line."""

from __future__ import annotations


class UserError(ValueError):
  """A problem in what the user asked for, with an optional hint on how to fix it.

  `main` prints `error: <message>` (and `hint: <hint>`) and exits with status 2, without a
  traceback; library callers can catch it as a `ValueError`.
  """

  def __init__(self, message: str, hint: str | None = None):
    super().__init__(message)
    self.hint = hint
