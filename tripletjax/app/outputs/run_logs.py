"""The logs of a training run, as the loop writes them: the step metrics (`metrics.jsonl`),
the evaluations (`eval.jsonl`), the mining monitor's warnings (`health.jsonl`) and the
progress bar (tqdm: steps/s, ETA). Only process 0 writes; on resume, the lines the interrupted
run wrote after its checkpoint are dropped."""

from __future__ import annotations

import os

import jax
import ml_collections
from tqdm import tqdm

from tripletjax.app.outputs import metric_logging
from tripletjax.app.outputs import monitor as monitor_lib


class RunLogs:
  """The logs of a run from step `step` on (`resumed`: continuing a checkpoint's)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, step: int, resumed: bool,
               total_steps: int, description: str):
    self.is_main = jax.process_index() == 0
    keep_until_step = step if resumed else None
    self.train = metric_logging.MetricLog(workdir, "metrics", keep_until_step,
                                          enabled=self.is_main)
    self.eval = metric_logging.MetricLog(workdir, "eval", keep_until_step, enabled=self.is_main)
    self.health = metric_logging.MetricLog(workdir, "health", keep_until_step,
                                           tensorboard=False, enabled=self.is_main)
    self.monitor = monitor_lib.MiningMonitor(config)
    if resumed and os.path.exists(self.train.path):  # The monitor's state at the checkpoint.
      self.monitor.replay(metric_logging.read_metrics_jsonl(self.train.path))
    self.progress = tqdm(total=total_steps, initial=step, desc=description, unit="step",
                         disable=not self.is_main or config.quiet, dynamic_ncols=True)

  def steps(self, step: int, epoch: int, skipped_steps: int, record: dict) -> None:
    """The mean metrics of the steps up to `step`: logged, shown, and given to the monitor."""
    self.train.write(step, {"epoch": epoch, "skipped_steps": skipped_steps, **record})
    # The losses of cosine similarities have no active fraction: their mean positive
    # similarity instead.
    shown = {"active": "fraction_active", "positive": "mean_positive_similarity"}
    self.progress.set_postfix(loss=f"{record['loss']:.4f}",
                              **{label: f"{record[key]:.3f}" for label, key in shown.items()
                                 if key in record})
    for warning in self.monitor.update(step, record):
      if self.is_main:
        self.progress.write(f"warning: {warning}")
      self.health.write(step, warning.record())

  def evaluation(self, step: int, record: dict, line: str) -> None:
    """An evaluation's metrics, and its console line."""
    self.eval.write(step, record)
    if self.is_main:
      self.progress.write(line)

  def close(self) -> None:
    self.progress.close()
    self.train.close()
    self.eval.close()
    self.health.close()
