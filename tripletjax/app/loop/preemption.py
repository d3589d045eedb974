"""SIGTERM and SIGINT as a request to stop cleanly after the current training step.

Clusters preempt jobs with SIGTERM, people with Ctrl-C. Inside `StopSignals()` the first such
signal only sets `requested`; the trainer then finishes its step, writes a checkpoint of that
exact step and raises `Interrupted`. A second Ctrl-C interrupts at once, as usual.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
  """Training stopped on a signal after writing a checkpoint; `exit_status` is 128 + signal."""

  def __init__(self, message: str, signal_number: int):
    super().__init__(message)
    self.exit_status = 128 + signal_number


class StopSignals:
  """Context manager: records SIGTERM / SIGINT instead of dying (main thread only)."""

  def __init__(self):
    self.signal_number: int | None = None
    self._previous = {}

  def _handle(self, signal_number, frame):
    del frame
    self.signal_number = signal_number
    if signal_number == signal.SIGINT:  # A second Ctrl-C interrupts immediately.
      signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for signal_number in HANDLED:
        self._previous[signal_number] = signal.signal(signal_number, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signal_number, handler in self._previous.items():
      signal.signal(signal_number, handler)

  def requested(self) -> int | None:
    """The signal to stop on, agreed by every process (any process's signal stops all)."""
    number = self.signal_number or 0
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      number = int(np.max(multihost_utils.process_allgather(np.int32(number))))
    return number or None
