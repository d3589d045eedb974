"""Batches of example indices, the same for the same (seed, epoch).

Every epoch draws from its own `np.random.default_rng([seed, epoch])` and from no state of
earlier epochs, so a run resumed after a crash at epoch e sees exactly the batches an
uninterrupted run would have seen.

  * `ShuffledBatches`: a fresh permutation of the examples every epoch, cut into batches; the
    last partial batch is dropped (as TensorFlow Addons' triplet-loss tutorial does).
  * `ClassBalancedBatches`: "P x K" batches of P distinct classes with K distinct examples each,
    so that every batch holds positives for every anchor.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from tripletjax.app.config import checker


def _check_labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must have shape [N], got {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}.")
  if labels.size == 0:
    raise ValueError("labels is empty.")
  return labels


def _check_positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  return int(value)


def _check_seed(seed) -> int:
  # default_rng rejects negative entropy; say so in terms of this API.
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  return int(seed)


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
  if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
    raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}.")
  return np.random.default_rng([seed, int(epoch)])


class ShuffledBatches:
  """Shuffles all examples every epoch and yields `steps_per_epoch` full batches.

  Attributes:
    batch_size: examples per batch.
    steps_per_epoch: len(labels) // batch_size; the last partial batch is dropped.
  """

  def __init__(self, labels, batch_size: int, seed: int):
    self.num_examples = len(_check_labels(labels))
    self.batch_size = _check_positive_int(batch_size, "batch_size")
    self.seed = _check_seed(seed)
    if self.batch_size > self.num_examples:
      raise ValueError(f"batch_size {self.batch_size} is larger than the "
                       f"{self.num_examples} examples.")
    self.steps_per_epoch = self.num_examples // self.batch_size

  def __len__(self) -> int:
    return self.steps_per_epoch

  def epoch(self, epoch: int) -> Iterator[np.ndarray]:
    """Yields the int64 index arrays [batch_size] of `epoch` (any epoch, in any order)."""
    order = _epoch_rng(self.seed, epoch).permutation(self.num_examples)
    for step in range(self.steps_per_epoch):
      yield order[step * self.batch_size:(step + 1) * self.batch_size]


class _CyclicQueue:
  """Items in a shuffled order; a new shuffle starts whenever the current one runs out.

  `take(count)` returns `count` distinct items (count <= number of items): taking every item
  once per pass is what spreads the batches evenly over classes and over examples.
  """

  def __init__(self, items: np.ndarray, rng: np.random.Generator):
    self._items = items
    self._rng = rng
    self._pending = rng.permutation(items)

  def take(self, count: int) -> np.ndarray:
    taken = self._pending[:count]
    self._pending = self._pending[count:]
    missing = count - len(taken)
    if missing:
      # Start a new pass. The items just taken go last in it, so the batch gets distinct items
      # and they are not repeated before the others of the new pass.
      fresh = self._rng.permutation(self._items)
      just_taken = np.isin(fresh, taken)
      fresh = np.concatenate([fresh[~just_taken], fresh[just_taken]])
      taken = np.concatenate([taken, fresh[:missing]])
      self._pending = fresh[missing:]
    return taken


class ClassBalancedBatches:
  """P x K batches: P distinct classes, K distinct examples of each, grouped by class.

  Classes come from a cyclic shuffled order of all classes, so over an epoch every class
  appears equally often (up to one); the examples of each class come from a cyclic shuffled
  order of that class's examples, so every example is used before any is repeated.

  Attributes:
    classes_per_batch: P.
    samples_per_class: K.
    batch_size: P * K.
    steps_per_epoch: batches per epoch, by default len(labels) // (P * K).
  """

  def __init__(self, labels, classes_per_batch: int, samples_per_class: int, seed: int,
               steps_per_epoch: int | None = None):
    labels = _check_labels(labels)
    self.classes_per_batch = _check_positive_int(classes_per_batch, "classes_per_batch")
    self.samples_per_class = _check_positive_int(samples_per_class, "samples_per_class")
    self.seed = _check_seed(seed)
    self.batch_size = self.classes_per_batch * self.samples_per_class
    self.classes, counts = np.unique(labels, return_counts=True)
    if self.classes_per_batch > len(self.classes):
      raise ValueError(f"classes_per_batch (P) = {self.classes_per_batch} is more than the "
                       f"{len(self.classes)} classes in labels.")
    too_small = counts < self.samples_per_class
    if too_small.any():
      details = ", ".join(f"class {label}: {count}"
                          for label, count in zip(self.classes[too_small], counts[too_small]))
      raise ValueError(f"samples_per_class (K) = {self.samples_per_class}, but some classes "
                       f"have fewer examples ({details}). Lower K or drop those classes.")
    self._members = [np.flatnonzero(labels == label) for label in self.classes]
    if steps_per_epoch is None:
      steps_per_epoch = len(labels) // self.batch_size  # >= 1: P classes hold >= K each.
    self.steps_per_epoch = _check_positive_int(steps_per_epoch, "steps_per_epoch")

  def __len__(self) -> int:
    return self.steps_per_epoch

  def epoch(self, epoch: int) -> Iterator[np.ndarray]:
    """Yields the int64 index arrays [P * K] of `epoch` (any epoch, in any order)."""
    rng = _epoch_rng(self.seed, epoch)
    class_queue = _CyclicQueue(np.arange(len(self.classes)), rng)
    example_queues = [_CyclicQueue(members, rng) for members in self._members]
    for _ in range(self.steps_per_epoch):
      chosen = class_queue.take(self.classes_per_batch)
      yield np.concatenate(
          [example_queues[class_index].take(self.samples_per_class) for class_index in chosen])


def _shuffled(labels, batch_size, classes_per_batch, samples_per_class, seed):
  del classes_per_batch, samples_per_class
  if batch_size is None:
    raise ValueError('The "shuffled" sampler needs a batch_size.')
  return ShuffledBatches(labels, batch_size, seed)


def _balanced(labels, batch_size, classes_per_batch, samples_per_class, seed):
  if classes_per_batch is None or samples_per_class is None:
    raise ValueError('The "balanced" sampler needs classes_per_batch (P) and '
                     "samples_per_class (K).")
  if batch_size is not None and batch_size != classes_per_batch * samples_per_class:
    raise ValueError(
        f"batch_size {batch_size} is inconsistent with the balanced sampler's "
        f"classes_per_batch (P) x samples_per_class (K) = {classes_per_batch} x "
        f"{samples_per_class} = {classes_per_batch * samples_per_class}; set batch_size to "
        "P x K.")
  return ClassBalancedBatches(labels, classes_per_batch, samples_per_class, seed)


# Samplers by name: sampler(labels, batch_size, classes_per_batch, samples_per_class, seed).
SAMPLERS: dict[str, Callable[..., ShuffledBatches | ClassBalancedBatches]] = {
    "shuffled": _shuffled,
    "balanced": _balanced,
}


def make_sampler(kind: str, labels, *, batch_size: int | None,
                 classes_per_batch: int | None = None, samples_per_class: int | None = None,
                 seed: int) -> ShuffledBatches | ClassBalancedBatches:
  """Builds the sampler of a config.

  Args:
    kind: a name of `SAMPLERS`: "shuffled" or "balanced".
    labels: int [N] labels of the training examples.
    batch_size: examples per batch. For "balanced" it must equal P * K, or be None.
    classes_per_batch: P, "balanced" only.
    samples_per_class: K, "balanced" only.
    seed: a non-negative integer.

  Returns:
    The sampler.
  """
  if kind not in SAMPLERS:
    raise ValueError(f"Unknown sampler {kind!r}; expected one of {tuple(SAMPLERS)}.")
  return SAMPLERS[kind](labels, batch_size, classes_per_batch, samples_per_class, seed)


def check_config(check: checker.Checker) -> None:
  """`config.batch`: the sampler and its sizes."""
  check.choice("batch.sampler", SAMPLERS)
  for key in ("batch.batch_size", "batch.classes_per_batch", "batch.samples_per_class"):
    check.integer(key, 1)
  batch = check.config.batch
  if batch.sampler == "balanced" and (
      batch.batch_size != batch.classes_per_batch * batch.samples_per_class):
    check.fail("batch.batch_size",
               f"must equal classes_per_batch x samples_per_class = {batch.classes_per_batch} x "
               f"{batch.samples_per_class} for the balanced sampler")
