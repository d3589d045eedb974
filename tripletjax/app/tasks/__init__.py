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
from tripletjax.app.data import datasets
from tripletjax.app.tasks import base
from tripletjax.app.tasks import labelled
from tripletjax.app.tasks import pairs


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A kind of training data.

  Attributes:
    build: task(config).
    losses: the valid config.loss.name values.
    data_names: the valid config.data.name values, prefixes as "prefix<...>".
  """
  build: Callable[[ml_collections.ConfigDict], base.Task]
  losses: tuple[str, ...]
  data_names: tuple[str, ...]


TASKS: dict[str, TaskSpec] = {
    "labelled": TaskSpec(labelled.LabelledTask, tuple(losses.MINED_LOSSES),
                         tuple(datasets.dataset_names())),
    "pairs": TaskSpec(pairs.PairTask, ("triplet",),
                      (f"{pairs.PAIRS_PREFIX}<folder or CSV>", f"{pairs.PAIRS_DEMO_PREFIX}<"
                       f"{'|'.join(pairs.PAIR_DEMO_SOURCES)}>")),
}


def task_for(data_name) -> str:
  """The task name of config.data.name: "pairs" for pairs:/pairs_demo: names, else
  "labelled"."""
  prefixes = (pairs.PAIRS_PREFIX, pairs.PAIRS_DEMO_PREFIX)
  if isinstance(data_name, str) and data_name.startswith(prefixes):
    return "pairs"
  return "labelled"


def make_task(config: ml_collections.ConfigDict) -> base.Task:
  """The task of `config` (by config.data.name), with its data loaded."""
  return TASKS[task_for(config.data.name)].build(config)
