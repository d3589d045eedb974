"""Where a run is (`RunState`, saved and restored whole with each checkpoint), and the guard
that stops it at a non-finite step (`NonFiniteGuard`)."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from tripletjax.app import errors


def _to_floats(record: dict) -> dict:
  return {key: float(np.asarray(value)) for key, value in record.items()}


def mean_records(records: list[dict]) -> dict:
  """Means of a window of step metrics (in float64, so a resumed window adds up the same)."""
  return {k: float(np.mean(np.asarray([r[k] for r in records], np.float64))) for k in records[0]}


@dataclasses.dataclass
class RunState:
  """What a checkpoint records besides the model and optimizer (its meta).

  Attributes:
    step: the train steps done.
    train_seconds: seconds spent in train steps (no evaluation, no checkpointing).
    skipped_steps: steps skipped for a non-finite loss or gradient.
    rng_counts: the dropout streams' counters at `step` (`train_step.rng_counts`), so a
      mid-epoch resume draws the same masks; None before the first save.
    window: the step metrics since the last logged record.
    resumed: whether the state came from a checkpoint.
    selection: the model selection's record (`selection.ModelSelection.record`).
  """
  step: int = 0
  train_seconds: float = 0.0
  skipped_steps: int = 0
  rng_counts: dict | None = None
  window: list = dataclasses.field(default_factory=list)
  resumed: bool = False
  selection: dict | None = None

  @classmethod
  def from_meta(cls, meta: dict | None) -> RunState:
    """The state a checkpoint's meta records; a fresh run's for None."""
    if not meta:
      return cls()
    return cls(step=meta["step"], train_seconds=meta.get("train_seconds", 0.0),
               skipped_steps=meta.get("skipped_steps", 0), rng_counts=meta.get("rng_counts"),
               window=[dict(r) for r in meta.get("window", [])], resumed=True,
               selection=meta.get("selection"))

  def meta(self, epoch: float) -> dict:
    """The checkpoint's meta (JSON), `epoch` the epochs done."""
    return {"step": self.step, "epoch": epoch, "train_seconds": self.train_seconds,
            "skipped_steps": self.skipped_steps, "rng_counts": self.rng_counts,
            "window": [_to_floats(record) for record in jax.device_get(self.window)],
            "selection": self.selection}

  def take_window(self) -> dict:
    """The mean of the window's step metrics; empties the window."""
    record = mean_records(jax.device_get(self.window))
    self.window = []
    return record


class NonFiniteStep(errors.UserError):
  """A training step gave a non-finite loss or gradient (and optimizer.skip_nonfinite is off)."""


def _first_nonfinite(flags: list, first_step: int) -> int | None:
  """The step number of the first set flag, flags[i] belonging to step first_step + i."""
  values = np.asarray(jax.device_get(flags)) if flags else np.zeros(0)
  hits = np.flatnonzero(values)
  return first_step + int(hits[0]) if hits.size else None


class NonFiniteGuard:
  """Looks at the steps' non-finite flags when told to (`check`, at each log point: reading
  them waits for the steps): stops the run at the first non-finite step, or counts the steps
  skipped (`config.optimizer.skip_nonfinite`)."""

  def __init__(self, optimizer_config: ml_collections.ConfigDict, checkpoints,
               steps_per_epoch: int, state: RunState):
    self.optimizer_config = optimizer_config
    self.checkpoints = checkpoints
    self.steps_per_epoch = steps_per_epoch
    self.flags, self.first_step = [], state.step + 1  # Flags not yet looked at.

  def add(self, flag) -> None:
    """The `nonfinite` metric of the next step."""
    self.flags.append(flag)

  def check(self, state: RunState) -> None:
    """Raises `NonFiniteStep` at a non-finite step (unless skipping); counts skipped steps."""
    bad = _first_nonfinite(self.flags, self.first_step)
    if bad is not None and not self.optimizer_config.skip_nonfinite:
      good = self.checkpoints.latest_step()
      where = (f"the last good checkpoint is {self.checkpoints.path(good)} (step {good})"
               if good is not None else "no checkpoint was written yet")
      raise NonFiniteStep(
          f"training step {bad} (epoch {(bad - 1) // self.steps_per_epoch + 1}) gave a "
          f"non-finite loss or gradient; stopped, {where}",
          hint=f"likely causes: a learning rate too high (config.optimizer.learning_rate="
               f"{self.optimizer_config.learning_rate}), non-finite values in the data; lower "
               "the learning rate or set config.optimizer.grad_clip_norm, or set "
               "config.optimizer.skip_nonfinite=True to skip such steps")
    state.skipped_steps += int(np.sum(jax.device_get(self.flags))) if self.flags else 0
    self.flags, self.first_step = [], state.step + 1
