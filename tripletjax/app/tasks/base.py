"""What the training loop trains on: the interface every task implements (`Task`).

The loop (`loop/train.py`) is the same for every task: steps, metrics, checkpoints, resume,
evaluation and exports. A task supplies what differs, the members of `Task`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import numpy as np


class Task(Protocol):
  """A kind of training data, with its loss, its evaluation and its exports.

  Attributes:
    input_shape: the [H, W, C] of an image.
    steps_per_epoch: train steps in an epoch.
    global_batch_size: the rows of a step's batch, over every process.
    loss_fn: (labels, embeddings) -> (loss, stats), inside the compiled train step.
    mining_scope: how `loss_fn` is computed over the devices (`tripletjax.sharded`).
    single_device_loss_fn: the same loss for a program on one device (the split steps of
      `step.virtual_batch` compute it between their two programs).
    description: what is trained, for the progress bar.
  """
  input_shape: tuple[int, ...]
  steps_per_epoch: int
  global_batch_size: int
  loss_fn: Callable
  mining_scope: str
  single_device_loss_fn: Callable
  description: str

  def batches(self, epoch: int, start_step: int,
              rows: slice | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The host batches (images, labels) of `epoch` from `start_step` on, a pure function of
    (seed, epoch, step), so a resumed run sees the same batches; only rows `rows` of each (a
    process's rows, `devices.mesh.process_rows`)."""

  def evaluate(self, trainer, mesh, final: bool) -> tuple[dict, Any]:
    """(metrics, payload): the payload goes to `after_evaluation` and `write_exports`."""

  @staticmethod
  def eval_line(metrics: dict) -> str:
    """An evaluation's console line."""

  def after_evaluation(self, workdir: str, epoch: int, payload: Any) -> None:
    """Per-evaluation plots."""

  def write_exports(self, workdir: str, final: dict, payload: Any, notes: str = "") -> None:
    """The final exports (`notes`: the mining-health verdict)."""

  @staticmethod
  def summary_line(final: dict) -> str:
    """The final metrics in one line."""

  def close(self) -> None:
    """Releases the task's files and workers."""
