"""Mining health: embedding collapse, dead mining and batches without positives, detected from
the training metrics the loop logs.

Collapse (every embedding the same, the loss stuck at the margin) is the most reported
triplet-training failure (omoindrot/tensorflow-triplet-loss #6, #38, #50), and it is silent: the
loss looks flat rather than wrong. `MiningMonitor.update` reads each logged record (the means of
the loss's statistics over `log_every_steps` steps: `losses.MINED_LOSSES[name].stats`, the
loss, the embedding norm) and returns a `HealthWarning` the first time a condition has held
for `patience_steps` steps in a row:

  * "collapse": the embeddings of a batch have gathered at one point: their spread (mean squared
    distance to their mean, `train_step.embedding_spread`; ~1 for unit vectors spread over the
    sphere, 0 at full collapse) is below `SPREAD_TOLERANCE` (pairs closer than ~0.14 on
    average), and the fraction of active triplets (pairs) sits at its collapsed value (all of
    them for the triplet losses, the negative pairs for contrastive). The loss then creeps to
    its collapsed value (the margin for the triplet losses) and stays there.
  * "dead_mining": no active triplet at all (fraction active 0): the loss and its gradient are
    0, nothing is learnt.
  * "no_positives": no positive pair in the batches (every class once per batch): the triplet
    losses are 0 by definition.

Each warning says what was seen, at which step, and what to change. The monitor is a pure
function of the records it is fed, so a resumed run rebuilds its state by `replay`ing the
records logged before the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

# An embedding spread below this counts as collapsed (mean pairwise squared distance below
# 0.02: typical distances under ~0.14, where unit vectors can be up to 2 apart).
SPREAD_TOLERANCE = 0.01
# A fraction of active triplets within this of its collapsed value counts as collapsed.
ACTIVE_TOLERANCE = 0.01
# Fraction active at or below this counts as none (dead mining).
DEAD_FRACTION = 1e-6
# The statistic that counts positive pairs (or what the loss needs them for), by loss.
_POSITIVE_COUNTS = ("num_positive_pairs", "num_valid_anchors", "num_valid_triplets")
KINDS = ("collapse", "dead_mining", "no_positives")


@dataclasses.dataclass(frozen=True)
class HealthWarning:
  """A mining-health problem: what, when, and what to do.

  Attributes:
    kind: one of `KINDS`.
    step: the training step at which it was detected.
    message: what the metrics showed.
    suggestion: the config changes to try.
  """
  kind: str
  step: int
  message: str
  suggestion: str

  def __str__(self) -> str:
    return f"step {self.step}: {self.message} Try: {self.suggestion}."

  def record(self) -> dict:
    return {"kind": self.kind, "step": self.step, "message": self.message,
            "suggestion": self.suggestion}


def collapsed_loss(loss_name: str, margin: float, soft: bool, record: dict) -> float | None:
  """The loss when every embedding is the same point (all distances 0), or None if unknown."""
  if loss_name == "hard":
    return math.log(2.0) if soft else margin
  if loss_name in ("semihard", "batch_all", "triplet"):
    return margin
  if loss_name == "contrastive":
    positive, negative = record.get("num_positive_pairs"), record.get("num_negative_pairs")
    if positive is None or negative is None or positive + negative <= 0:
      return None
    return 0.5 * margin**2 * negative / (positive + negative)
  return None


def collapsed_fraction_active(loss_name: str, record: dict) -> float | None:
  """The fraction of active triplets (pairs) when every embedding is the same point."""
  if loss_name in ("semihard", "hard", "batch_all", "triplet"):
    return 1.0
  if loss_name == "contrastive":
    positive, negative = record.get("num_positive_pairs"), record.get("num_negative_pairs")
    if positive is None or negative is None or positive + negative <= 0:
      return None
    return negative / (positive + negative)
  return None


class MiningMonitor:
  """Watches the logged training records for collapse, dead mining and missing positives.

  Args:
    config: the training config (reads loss, optimizer, batch and monitor keys).
  """

  def __init__(self, config):
    self.loss_name = config.loss.name
    self.margin = float(config.loss.margin)
    self.soft = bool(config.loss.soft)
    self.learning_rate = float(config.optimizer.learning_rate)
    self.batch = config.batch
    self.patience_steps = int(config.monitor.patience_steps)
    self.enabled = bool(config.monitor.enabled)
    self.warnings: list[HealthWarning] = []
    self._streak_steps = dict.fromkeys(KINDS, 0)
    self._last_step = 0

  # --- conditions of one record ---------------------------------------------------------------

  def _is_collapsed(self, record: dict) -> bool:
    spread = record.get("embedding_spread")
    active_target = collapsed_fraction_active(self.loss_name, record)
    active = record.get("fraction_active")
    if None in (spread, active_target, active):
      return False
    return spread < SPREAD_TOLERANCE and abs(active - active_target) <= ACTIVE_TOLERANCE

  def _is_dead(self, record: dict) -> bool:
    active = record.get("fraction_active")
    if self.loss_name == "contrastive" or active is None:
      return False
    return active <= DEAD_FRACTION and not self._has_no_positives(record)

  @staticmethod
  def _has_no_positives(record: dict) -> bool:
    counts = [record[key] for key in _POSITIVE_COUNTS if key in record]
    return bool(counts) and counts[0] <= 0

  # --- what to say --------------------------------------------------------------------------

  def _more_classes(self) -> str:
    batch = self.batch
    if batch.sampler == "balanced":
      classes = batch.classes_per_batch * 2
      samples = max(2, batch.batch_size // classes)
      return (f"more classes per batch (--config.batch.classes_per_batch={classes} "
              f"--config.batch.samples_per_class={samples} "
              f"--config.batch.batch_size={classes * samples})")
    return ("more classes per batch with positives for each "
            "(--config.batch.sampler=balanced --config.batch.classes_per_batch=P "
            "--config.batch.samples_per_class=K, P x K = the batch size)")

  def _describe(self, record: dict) -> str:
    parts = [f"loss {record.get('loss', float('nan')):.4f}",
             f"fraction active {record.get('fraction_active', float('nan')):.3f}"]
    if "mean_positive_distance" in record and "mean_negative_distance" in record:
      parts.append(f"mean positive distance {record['mean_positive_distance']:.4f}, "
                   f"mean negative distance {record['mean_negative_distance']:.4f}")
    if "embedding_spread" in record:
      parts.append(f"embedding spread {record['embedding_spread']:.4f}")
    if "embedding_norm" in record:
      parts.append(f"embedding norm before normalisation {record['embedding_norm']:.3g}")
    if "num_fallback" in record:
      parts.append(f"semi-hard fallbacks per batch {record['num_fallback']:.1f}")
    return ", ".join(parts)

  def _warning(self, kind: str, step: int, record: dict) -> HealthWarning:
    seen = self._describe(record)
    if kind == "collapse":
      target = collapsed_loss(self.loss_name, self.margin, self.soft, record)
      suggestions = [f"a lower learning rate (--config.optimizer.learning_rate="
                     f"{self.learning_rate / 10:g})"]
      if self.loss_name == "hard":
        suggestions.append("semi-hard instead of hard mining (--config.loss.name=semihard)")
      suggestions.append(f"a smaller margin (--config.loss.margin={self.margin / 2:g})")
      if self.loss_name != "triplet":  # Pair triplets have no classes to choose.
        suggestions.append(self._more_classes())
      message = (f"the embeddings are collapsing to one point: for {self.patience_steps}+ steps "
                 "they have stayed close together with every triplet active; the loss tends to "
                 f"{target:.4g}, its value when they coincide ({seen}).")
    elif kind == "dead_mining":
      suggestions = [f"a larger margin (--config.loss.margin={self.margin * 2:g})",
                     "harder mining (--config.loss.name=hard or batch_all)" if
                     self.loss_name == "semihard" else "semi-hard mining "
                     "(--config.loss.name=semihard)",
                     self._more_classes()]
      message = (f"mining is dead: for {self.patience_steps}+ steps no triplet was active, so "
                 f"the loss and its gradient are 0 and nothing is learnt ({seen}).")
    else:
      suggestions = [self._more_classes()]
      message = (f"no batch had a positive pair for {self.patience_steps}+ steps, so the "
                 f"loss is 0 and nothing is learnt ({seen}).")
    return HealthWarning(kind, int(step), message, "; or ".join(suggestions))

  # --- feeding ------------------------------------------------------------------------------

  def update(self, step: int, record: dict) -> list[HealthWarning]:
    """Reads the record logged at `step`; returns the warnings raised by it (each kind once)."""
    if not self.enabled:
      return []
    steps = max(0, int(step) - self._last_step)
    self._last_step = int(step)
    conditions = {"collapse": self._is_collapsed(record), "dead_mining": self._is_dead(record),
                  "no_positives": self._has_no_positives(record)}
    raised = []
    warned = {warning.kind for warning in self.warnings}
    for kind, holds in conditions.items():
      self._streak_steps[kind] = self._streak_steps[kind] + steps if holds else 0
      if holds and kind not in warned and self._streak_steps[kind] >= self.patience_steps:
        warning = self._warning(kind, step, record)
        self.warnings.append(warning)
        raised.append(warning)
    return raised

  def replay(self, records: Iterable[dict]) -> None:
    """Feeds records logged earlier (each with its "step"), without returning warnings: the
    state a resumed run had at its checkpoint."""
    for record in records:
      self.update(record["step"], record)

  def summary(self) -> str:
    """Markdown for the report: the warnings, or that there were none."""
    if not self.enabled:
      return "Mining-health monitor: off (config.monitor.enabled=False)."
    if not self.warnings:
      return ("Mining health: no collapse, dead mining or batch without positives was detected "
              f"(a sign is reported once it lasts {self.patience_steps} steps; "
              f"{self._last_step} steps were watched).")
    lines = ["Mining health warnings:", ""]
    lines += [f"- **{warning.kind}** at {warning}" for warning in self.warnings]
    return "\n".join(lines)
