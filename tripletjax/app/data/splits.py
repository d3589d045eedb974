"""Class-disjoint splits (the metric-learning protocol) and validation subsets.

The protocol of "A Metric Learning Reality Check" (Musgrave et al., 2020) trains on some
classes and evaluates retrieval on classes never seen in training: CUB-200-2011 classes 1-100 /
101-200, Cars196 1-98 / 99-196. `config.data.class_split` says which classes train:

  * "none": the dataset's own train/test split (digits, MNIST, Fashion-MNIST: the same classes
    on both sides, so evaluation measures classification in disguise);
  * "half": the lower half of the sorted class ids trains (n // 2 classes), the upper half is
    tested (the CUB and Cars convention);
  * "<first>:<last>": classes first..last (label ids, both included) train, all others are
    tested.

A class split pools every example of the dataset (its train and test splits) and assigns each
to the side of its class, as the protocol does with every image of the test classes.

A validation subset (`config.data.validation_fraction`) comes from the training side. When the
test classes are unseen (a class split, or a dataset split that way, SOP and In-Shop), it is
that fraction of the training classes (chosen with the seed), so validation classes are unseen
too; otherwise that fraction of each training class's examples.

Validation folds (`config.data.validation_folds=K`, `config.data.validation_fold=i`) are the
protocol's cross-validation: the training classes cut into K class-disjoint folds
(`class_folds`), fold i validates and the other K - 1 train. One run per fold (and seed), and
`tripletjax.compare` averages them and evaluates their concatenated embeddings.
"""

from __future__ import annotations

import re

import numpy as np

from tripletjax.app import errors

_RANGE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
CLASS_SPLIT_FORMS = ("none", "half", "<first>:<last>")


def check_class_split(spec) -> None:
  """Raises ValueError unless `spec` is "none", "half" or "<first>:<last>" with first <= last."""
  if not isinstance(spec, str):
    raise ValueError(f"must be one of {', '.join(CLASS_SPLIT_FORMS)}, got {spec!r}")
  if spec in ("none", "half"):
    return
  match = _RANGE.match(spec)
  if not match:
    raise ValueError(f"must be one of {', '.join(CLASS_SPLIT_FORMS)} (e.g. '0:99'), got "
                     f"{spec!r}")
  first, last = int(match.group(1)), int(match.group(2))
  if first > last:
    raise ValueError(f"first class {first} is after last class {last}")


def training_classes(spec: str, classes) -> np.ndarray | None:
  """The classes that train under class split `spec`; None for "none".

  Args:
    spec: "none", "half" or "<first>:<last>".
    classes: the dataset's class ids (any order, repeats allowed).

  Raises:
    errors.ConfigError: a malformed spec, or one that leaves no class on a side.
  """
  try:
    check_class_split(spec)
  except ValueError as error:
    raise errors.ConfigError(f"config.data.class_split={spec!r}: {error}.") from error
  if spec == "none":
    return None
  classes = np.unique(np.asarray(classes))
  if spec == "half":
    if len(classes) < 2:
      raise errors.ConfigError(f"config.data.class_split='half' needs at least 2 classes; the "
                               f"dataset has {len(classes)}.")
    return classes[:len(classes) // 2]
  first, last = map(int, _RANGE.match(spec).groups())
  train = classes[(classes >= first) & (classes <= last)]
  if not len(train) or len(train) == len(classes):
    side = "no class" if not len(train) else "every class"
    raise errors.ConfigError(
        f"config.data.class_split={spec!r} puts {side} on the training side; the class ids "
        f"are {classes.min()}..{classes.max()} ({len(classes)} classes).",
        "use 'half', or a range that leaves classes on both sides")
  return train


def stratified_holdout(labels, fraction: float, seed: int) -> np.ndarray:
  """A bool [N] mask holding out round(fraction x size) examples of each class (at least one of
  every class with 2+ examples when fraction > 0, never a class's last), seeded."""
  labels = np.asarray(labels)
  rng = np.random.default_rng([seed, len(labels), 7])
  held_out = np.zeros(len(labels), bool)
  if fraction <= 0:
    return held_out
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    count = min(len(members) - 1, max(1, round(fraction * len(members))))
    held_out[rng.permutation(members)[:count]] = True
  return held_out


def class_holdout(labels, fraction: float, seed: int) -> np.ndarray:
  """A bool [N] mask of the examples of round(fraction x classes) classes, chosen with `seed`.

  Both sides keep at least 2 classes: retrieval among one class, or training without
  negatives, would be meaningless.
  """
  labels = np.asarray(labels)
  classes = np.unique(labels)
  if fraction <= 0:
    return np.zeros(len(labels), bool)
  if len(classes) < 4:
    raise errors.ConfigError(
        f"config.data.validation_fraction={fraction}: a class-disjoint validation set needs at "
        f"least 4 training classes (2 to validate on, 2 to train on); the training side has "
        f"{len(classes)}.", "set config.data.validation_fraction=0")
  count = min(len(classes) - 2, max(2, round(fraction * len(classes))))
  rng = np.random.default_rng([seed, len(classes), 11])
  chosen = rng.choice(classes, size=count, replace=False)
  return np.isin(labels, chosen)


def class_folds(classes, folds: int) -> list[np.ndarray]:
  """The `folds` class-disjoint validation folds of `classes`.

  The sorted class ids are cut into `folds` contiguous runs of near-equal size (as
  powerful-benchmarker's class-disjoint split manager cuts the training classes of "A Metric
  Learning Reality Check" into 4 partitions). The folds depend only on the classes, never on
  the seed: a seed sweep and a fold sweep vary one thing each.

  Args:
    classes: the training side's class ids (any order, repeats allowed).
    folds: K >= 2.

  Returns:
    K sorted arrays of class ids, disjoint, covering `classes`.

  Raises:
    errors.ConfigError: K < 2, or fewer than 2 classes per fold (retrieval within one class
      says nothing, and the model must train on 2 classes at least).
  """
  classes = np.unique(np.asarray(classes))
  if folds < 2:
    raise errors.ConfigError(f"config.data.validation_folds={folds}: a fold protocol needs at "
                             "least 2 folds.", "set it to 0 (no folds) or to 2 or more")
  if len(classes) < 2 * folds:
    hint = (f"use at most {len(classes) // 2} folds" if len(classes) >= 4 else
            "folds need at least 4 training classes; train on more classes "
            "(config.data.class_split)")
    raise errors.ConfigError(
        f"config.data.validation_folds={folds}: every fold needs at least 2 classes, and the "
        f"training side has {len(classes)} classes for {folds} folds.", hint)
  return np.array_split(classes, folds)


def fold_holdout(labels, folds: int, fold: int) -> np.ndarray:
  """A bool [N] mask of the examples whose class is in fold `fold` of `class_folds(labels,
  folds)`: the validation side of that fold, the others train."""
  if not 0 <= fold < max(folds, 1):
    raise errors.ConfigError(f"config.data.validation_fold={fold}: must be in [0, {folds}) for "
                             f"config.data.validation_folds={folds}.")
  labels = np.asarray(labels)
  return np.isin(labels, class_folds(labels, folds)[fold])
