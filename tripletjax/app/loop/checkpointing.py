"""Orbax checkpoints of the training state, keyed by training step, resumed automatically.

A checkpoint holds the model and optimizer state and a small JSON record of where training
stood (step, epoch, the counts of the dropout streams, the pending metric window), so a run
resumes at the exact step it stopped at, mid-epoch included. Orbax writes into a temporary
directory and renames it when complete, so a run killed mid-save (even with `kill -9`) leaves
the previous checkpoint.

Restoring targets abstract arrays that carry the current mesh's sharding, so a checkpoint
written on N devices resumes on any number of devices. A checkpoint that cannot be read
(deleted or truncated files, a structure that does not match) is moved aside into
`<directory>/unusable/` with a warning and the previous one is used; nothing is deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from tripletjax.app import errors

UNUSABLE_DIR = "unusable"


class StepCheckpoints:
  """Saves and restores `(state, meta)` pairs keyed by the number of completed steps."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._max_to_keep = max_to_keep
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True))

  def steps(self) -> list[int]:
    """The steps of the complete checkpoints on disk, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves the state after `step` training steps; `meta` must be JSON-serialisable."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def delete(self, step: int) -> None:
    """Removes the checkpoint of `step`."""
    self._manager.wait_until_finished()
    self._manager.delete(step)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores the checkpoint of `step` into the structure and shardings of `abstract_state`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_latest_usable(self, abstract_state: Any,
                            check: Callable[[Any, dict], None] | None = None
                            ) -> tuple[int, Any, dict] | None:
    """Restores the newest checkpoint that reads back; None when there is none at all.

    A checkpoint that fails to restore (or that `check(state, meta)` rejects by raising) is
    reported with its path and moved into `<directory>/unusable/`, then the previous one is
    tried. Raises `errors.UserError` when checkpoints exist but none is usable.
    """
    failures = []
    for step in reversed(self.steps()):
      try:
        state, meta = self.restore(step, abstract_state)
        if check is not None:
          check(state, meta)
      except Exception as error:  # Orbax and TensorStore raise many types; all mean unusable.
        reason = _one_line(error)
        failures.append(f"{self.path(step)}: {reason}")
        moved_to = self._set_aside(step)
        logging.warning("Checkpoint %s is unusable (%s); moved to %s, trying the previous one.",
                        self.path(step), reason, moved_to)
        print(f"warning: checkpoint {self.path(step)} is unusable ({reason}); "
              f"moved to {moved_to}", flush=True)
        continue
      return step, state, meta
    if failures:
      raise errors.UserError(
          f"no usable checkpoint in {self.directory} ({'; '.join(failures)})",
          hint="the unreadable checkpoints were moved to "
               f"{os.path.join(self.directory, UNUSABLE_DIR)}; start again with a new "
               "--workdir, or remove that directory's checkpoints/ to train from scratch")
    return None

  def _set_aside(self, step: int) -> str:
    """Moves the checkpoint of `step` into the unusable/ folder (never deletes it)."""
    self._manager.wait_until_finished()
    target = os.path.join(self.directory, UNUSABLE_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      if os.path.exists(self.path(step)):
        shutil.move(self.path(step), target)
    _sync_processes(f"set-aside-{step}")
    self._manager.close()
    self._manager = self._open()  # Re-reads the steps on disk.
    return target

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split()) or type(error).__name__
  return text if len(text) <= 300 else text[:297] + "..."


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
