"""Checks every value of a training config before any work, each section by the module that
owns it (`check_config(check)` there), each failure one clear line (`config.checker`).

`main` calls `check_config` before it creates the workdir or loads data, and
`train.train_and_evaluate` before it trains.
"""

from __future__ import annotations

import jax
import ml_collections

from tripletjax.app import models
from tripletjax.app import tasks
from tripletjax.app.config import checker
from tripletjax.app.config import defaults
from tripletjax.app.data import datasets
from tripletjax.app.data import samplers
from tripletjax.app.evaluation import evaluate
from tripletjax.app.loop import selection
from tripletjax.app.models import weights
from tripletjax.app.outputs import exports
from tripletjax.app.outputs import monitor
from tripletjax.app.step import optimizers
from tripletjax.app.step import plan

# Seeds seed JAX keys (seed and seed + 1), which keep only their low 32 bits.
SEED_LIMIT = 2**31


def _check_run(check: checker.Checker) -> None:
  """The loop's own keys."""
  check.integer("seed", 0, below=SEED_LIMIT)
  for key in ("num_epochs", "log_every_steps", "eval_every_epochs", "checkpoint_every_epochs"):
    check.integer(key, 1)
  check.boolean("quiet")


def check_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises `errors.ConfigError` for the first value of `config` that is not allowed.

  Args:
    config: a training config (`defaults.get_config()` with changes).
    num_devices: the devices the batch is split over; default `jax.device_count()`.
  """
  num_devices = jax.device_count() if num_devices is None else num_devices
  checker.check_known_keys(config, defaults.get_config())
  check = checker.Checker(config)
  _check_run(check)
  plan.check_config(check, num_devices)  # train_step; the batch over the devices.
  tasks.check_data_config(check)  # data.name, and what its task reads its own way.
  datasets.check_config(check)
  models.check_config(check)
  weights.check_config(check)
  tasks.check_loss_config(check)
  samplers.check_config(check)
  optimizers.check_config(check)
  evaluate.check_config(check)
  selection.check_config(check)
  monitor.check_config(check)
  exports.check_config(check)
  # The step kind, the mining backends and scope: the errors of their combinations.
  tasks.make_plan(config, num_devices=num_devices)
