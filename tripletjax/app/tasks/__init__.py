"""What the training loop trains on, by kind of data (`task_for`): the tasks and their registry.

  * "labelled" (`labelled.LabelledTask`): a mined loss over labelled batches, retrieval
    metrics on the test split.
  * "pairs" (`pairs.PairTask`): triplets built from pairs of images known to look alike, the
    explicit triplet loss, pair metrics on held-out pairs.

Every task implements `base.Task`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections

from tripletjax import losses
from tripletjax import mining
from tripletjax import sharded
from tripletjax import validation
from tripletjax.app.config import checker
from tripletjax.app.config import defaults
from tripletjax.app.data import datasets
from tripletjax.app.step import plan as plan_lib
from tripletjax.app.tasks import base
from tripletjax.app.tasks import labelled
from tripletjax.app.tasks import pairs


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A kind of training data.

  Attributes:
    build: task(config, plan).
    losses: the valid config.loss.name values.
    data_names: the valid config.data.name values, prefixes as "prefix<...>".
    rows_per_example: the rows of a batch per example of config.batch.batch_size.
    mining_scope: how the loss is computed over the devices; None: config.loss.mining_scope.
  """
  build: Callable[[ml_collections.ConfigDict, plan_lib.ExecutionPlan], base.Task]
  losses: tuple[str, ...]
  data_names: tuple[str, ...]
  rows_per_example: int = 1
  mining_scope: str | None = None


TASKS: dict[str, TaskSpec] = {
    "labelled": TaskSpec(labelled.LabelledTask, tuple(losses.MINED_LOSSES),
                         tuple(datasets.dataset_names())),
    # A batch of triplets (anchors, positives, negatives); the loss splits the whole batch
    # into them, so every device computes it on the gathered batch (O(B), nothing to mine).
    "pairs": TaskSpec(pairs.PairTask, ("triplet",),
                      (f"{pairs.PAIRS_PREFIX}<folder or CSV>", f"{pairs.PAIRS_DEMO_PREFIX}<"
                       f"{'|'.join(pairs.PAIR_DEMO_SOURCES)}>"),
                      rows_per_example=3, mining_scope="replicated"),
}


def task_for(data_name) -> str:
  """The task name of config.data.name: "pairs" for pairs:/pairs_demo: names, else
  "labelled"."""
  prefixes = (pairs.PAIRS_PREFIX, pairs.PAIRS_DEMO_PREFIX)
  if isinstance(data_name, str) and data_name.startswith(prefixes):
    return "pairs"
  return "labelled"


def make_plan(config: ml_collections.ConfigDict, **devices) -> plan_lib.ExecutionPlan:
  """The execution plan of `config`'s task (`plan.make_plan`; `devices`: its platform and
  num_devices)."""
  spec = TASKS[task_for(config.data.name)]
  return plan_lib.make_plan(config, global_batch_size=spec.rows_per_example
                            * config.batch.batch_size, mining_scope=spec.mining_scope, **devices)


def make_task(config: ml_collections.ConfigDict, plan: plan_lib.ExecutionPlan) -> base.Task:
  """The task of `config` (by config.data.name), with its data loaded, computing as `plan`
  says."""
  return TASKS[task_for(config.data.name)].build(config, plan)


def check_data_config(check: checker.Checker) -> None:
  """`config.data.name`, and the keys its task reads its own way (`data.augment`, ...)."""
  if task_for(check["data.name"]) == "labelled":
    labelled.check_config(check, TASKS["pairs"].data_names,
                          (pairs.PAIRS_PREFIX, pairs.PAIRS_DEMO_PREFIX))
  else:
    pairs.check_config(check)


def check_loss_config(check: checker.Checker) -> None:
  """`config.loss`: one of the task's losses, with the options it takes."""
  config = check.config
  check.choice("loss.name", TASKS[task_for(config.data.name)].losses)
  check.number("loss.margin", minimum=0.0)
  check.choice("loss.metric", validation.METRICS)
  check.boolean("loss.soft")
  check.choice("loss.mining_backend", mining.BACKENDS)
  check.choice("loss.mining_scope", sharded.MINING_SCOPES)
  check.number("loss.alpha", minimum=0.0, exclusive_minimum=True)
  check.number("loss.beta", minimum=0.0, exclusive_minimum=True)
  check.number("loss.base", minimum=-1.0)
  check.number("loss.epsilon", minimum=0.0)
  check.boolean("loss.mining")
  check.number("loss.temperature", minimum=0.0, exclusive_minimum=True, optional=True)
  # An option of another loss set away from its default would be silently ignored.
  mined = losses.MINED_LOSSES.get(config.loss.name)
  loss_options = mined.options if mined else ("margin",)
  # Every mined loss can be mined over the devices in any scope; the pairs task's loss cannot.
  scoped = ("mining_scope",) if mined else ()
  default_loss = defaults.get_config().loss
  for option, value in config.loss.items():
    if option not in ("name", *scoped, *loss_options) and value != default_loss[option]:
      check.fail(f"loss.{option}",
                 f"loss {config.loss.name!r} has no such option (its options: "
                 f"{', '.join(loss_options)}); leave it at {default_loss[option]!r}")
