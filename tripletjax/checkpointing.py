"""Orbax checkpoints of the training state, one per epoch, resumed automatically.

A checkpoint holds the model and optimizer state (not the RNG streams: dropout is reseeded from
(seed, epoch) at the start of every epoch, so a resumed run draws the same masks) and a small
JSON record of where training stood. Orbax writes into a temporary directory and renames it
when complete, so a run killed mid-save (even with `kill -9`) leaves the previous checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class EpochCheckpoints:
  """Saves and restores `(state, meta)` pairs keyed by the number of completed epochs."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_epoch(self) -> int | None:
    return self._manager.latest_step()

  def save(self, epoch: int, state: Any, meta: dict) -> None:
    """Saves the state after `epoch` completed epochs; `meta` must be JSON-serialisable."""
    self._manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore(self, epoch: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores the checkpoint of `epoch` into the structure of `abstract_state`."""
    restored = self._manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
