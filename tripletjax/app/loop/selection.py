"""Model selection: the epoch whose validation metric is best, its checkpoint kept.

"A Metric Learning Reality Check" (Musgrave et al., 2020) chooses the stopping epoch on
class-disjoint validation only, never on the test classes. `ModelSelection` watches every
evaluation's `config.eval.select_by` metric (higher is better), saves the training state of
each new best into `<workdir>/selected/` (an Orbax checkpoint of that step, as
`checkpointing.StepCheckpoints` writes them), and at the end gives the loop that state back:
the final test evaluation, `eval.json` and the exports are the selected epoch's, with the
last epoch's test metrics beside them (`summary`).

Without the metric in the evaluations (no validation set, the pairs task, or
`select_by="last"`), the last epoch is the selected one and nothing extra is saved.

Resume: the selection record travels in each training checkpoint's meta (`record`); a run
resumed from step S forgets the selected checkpoints after S (the interrupted run wrote them
after its last training checkpoint), and re-finds them as it trains those epochs again.
"""

from __future__ import annotations

import math
import os
from typing import Any

from tripletjax.app.loop import checkpointing
from tripletjax.app.step import train_step

SELECTED_DIR = "selected"
LAST = "last"
# The validation metrics a run may be selected by (`evaluation.VALIDATION_METRICS`), or LAST.
SELECT_BY = (LAST, "validation_precision_at_1", "validation_r_precision",
             "validation_map_at_r")
# The last epoch's test metrics that eval.json keeps beside the selected epoch's.
LAST_EPOCH_KEYS = ("precision_at_1", "r_precision", "map_at_r", "nmi", "recall_at_k",
                   "validation_precision_at_1", "validation_r_precision",
                   "validation_map_at_r")


def check_config(check) -> None:
  """`config.eval.select_by` (a `config.checker.Checker`)."""
  check.choice("eval.select_by", SELECT_BY)


class ModelSelection:
  """The best evaluation so far by one metric, and its checkpoint.

  Attributes:
    select_by: the metric's key in the evaluation records, or "last".
    best: None, or {"epoch", "step", "value"}: the selected evaluation.
  """

  def __init__(self, workdir: str, select_by: str):
    self.select_by = select_by
    self.best: dict | None = None
    self._directory = os.path.join(workdir, SELECTED_DIR)
    self._checkpoints = None  # Opened at the first save or restore.

  def _open(self) -> checkpointing.StepCheckpoints:
    if self._checkpoints is None:
      self._checkpoints = checkpointing.StepCheckpoints(self._directory, max_to_keep=2)
    return self._checkpoints

  def record(self) -> dict | None:
    """What a training checkpoint's meta holds of the selection (JSON)."""
    return None if self.best is None else dict(self.best)

  def resume(self, record: dict | None, step: int) -> None:
    """Continues from a training checkpoint of `step` whose meta held `record`."""
    self.best = dict(record) if record else None
    if not os.path.isdir(self._directory):
      return
    checkpoints = self._open()
    for later in [s for s in checkpoints.steps() if s > step]:
      checkpoints.delete(later)  # Written after that checkpoint; training repeats those steps.
    if self.best is not None and self.best["step"] not in checkpoints.steps():
      print(f"warning: the selected checkpoint of step {self.best['step']} is missing from "
            f"{self._directory}; the selection starts again", flush=True)
      self.best = None

  def update(self, epoch: int, step: int, metrics: dict, state: Any) -> bool:
    """Looks at an evaluation after `epoch` (`step` steps); keeps `state` if it is the best.

    Returns:
      Whether this evaluation is the new selection. Ties keep the earlier epoch.
    """
    value = metrics.get(self.select_by)
    if value is None or not math.isfinite(value):
      return False
    if self.best is not None and value <= self.best["value"]:
      return False
    checkpoints = self._open()
    if step not in checkpoints.steps():
      checkpoints.save(step, state, {"epoch": epoch, "step": step, "value": float(value)})
    self.best = {"epoch": epoch, "step": step, "value": float(value)}
    return True

  def needs_restore(self, last_step: int) -> bool:
    """Whether the selected state is another than the one after `last_step`."""
    return self.best is not None and self.best["step"] != last_step

  def restore_into(self, trainer, mesh) -> None:
    """Loads the selected training state into `trainer` (replicated over `mesh`)."""
    abstract = train_step.abstract_training_state(trainer, mesh)
    checkpoints = self._open()
    checkpoints.wait()
    state, _ = checkpoints.restore(self.best["step"], abstract)
    train_step.set_training_state(trainer, state)

  def summary(self, last_metrics: dict, last_epoch: int, last_step: int) -> dict:
    """The keys eval.json adds: which epoch was selected, how, and the last epoch's metrics."""
    if self.best is None:
      reason = ("last" if self.select_by == LAST
                else f"no {self.select_by} in the evaluations (no validation set)")
      selected = {"selected_by": LAST, "selected_epoch": last_epoch, "selected_step": last_step,
                  "selection_note": reason}
    else:
      selected = {"selected_by": self.select_by, "selected_epoch": self.best["epoch"],
                  "selected_step": self.best["step"], "selected_value": self.best["value"]}
    last = {key: last_metrics[key] for key in LAST_EPOCH_KEYS if key in last_metrics}
    selected["last_epoch"] = {"epoch": last_epoch, "step": last_step, **last}
    return selected

  def close(self) -> None:
    """Waits for a pending save and closes the checkpoints (reopened if needed again)."""
    if self._checkpoints is not None:
      self._checkpoints.close()
      self._checkpoints = None
