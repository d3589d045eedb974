"""The batches the trainer and the evaluator consume, from in-memory arrays or image files.

`InputPipeline.train_batches(split, sampler, epoch, first_step)` yields the (images, labels)
of every step of an epoch from `first_step` on: the sampler's indices, then

  * for an array split: the rows, through `augmentations.augment` (flips, shifts);
  * for image files (`images.ImageFiles`): decoded by the worker threads through the
    `augmentations.FILE_AUGMENTATIONS` transform, `config.data.prefetch_batches` batches ahead
    of the one being trained on. With the "skip" policy an unreadable file is replaced by the
    next readable image of its class (`ImageFiles.replacement`), decoded with the same random
    draw, so the batch keeps its size and its classes.

Every image's random draw depends only on (seed, epoch, step, position in the batch): a resumed
run sees exactly the batches of an uninterrupted one. `eval_chunks` yields the evaluation
images in order, decoded ahead the same way. Images stay in [0, 1]: a pretrained model
normalises its input itself (`config.model.resnet.preprocess`).
"""

from __future__ import annotations

import functools
import itertools
from typing import Iterator

import ml_collections
import numpy as np

from tripletjax.app import errors
from tripletjax.app.data import augmentations
from tripletjax.app.data import images as images_lib


class InputPipeline:
  """Training batches and evaluation chunks for the configured data.

  Args:
    data_config: `config.data`.
    seed: `config.seed`.
  """

  def __init__(self, data_config: ml_collections.ConfigDict, seed: int):
    self.seed = int(seed)
    self.augment = data_config.augment
    self.max_shift = data_config.max_shift
    self.prefetch = int(data_config.prefetch_batches)
    self._file_transform = None
    if data_config.augment in augmentations.FILE_AUGMENTATIONS:
      self._file_transform = augmentations.file_transform(
          data_config.augment, size=data_config.image_size, resize=data_config.eval_resize,
          scale=data_config.crop_scale, ratio=data_config.crop_ratio)

  # --- training -----------------------------------------------------------------------------

  def train_batches(self, split, sampler, epoch: int, first_step: int = 0,
                    rows: slice | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (images float32 [N, H, W, C], labels int32 [N]) of steps first_step.. of `epoch`.

    Args:
      split: the training `datasets.Split`.
      sampler: a `samplers` sampler over `split.labels`.
      epoch: the epoch (seeds the sampler and the augmentations).
      first_step: the step within the epoch to start at (a resumed run's position).
      rows: only these rows of each global batch of B (a process's rows,
        `parallel.process_rows`), read and augmented exactly as in the whole batch; default
        all of them (N = B).
    """
    steps = itertools.islice(enumerate(sampler.epoch(epoch)), first_step, None)
    rows = slice(None) if rows is None else rows
    if not images_lib.is_lazy(split.images):
      if self.augment not in augmentations.AUGMENTATIONS:
        raise errors.ConfigError(
            f"config.data.augment={self.augment!r} is for image files (folder datasets); "
            f"in-memory images take {', '.join(sorted(augmentations.AUGMENTATIONS))}.")
      for step, indices in steps:
        batch = augmentations.augment(
            split.images[indices[rows]], self.augment, seed=self.seed, epoch=epoch, step=step,
            max_shift=self.max_shift, rows=rows, batch_size=len(indices))
        yield batch, split.labels[indices[rows]]
      return
    files = split.images
    if self._file_transform is None:
      raise errors.ConfigError(
          f"config.data.augment={self.augment!r} is for in-memory images; image files take "
          f"{', '.join(sorted(augmentations.FILE_AUGMENTATIONS))}.")
    transform = self._file_transform

    def job(step, indices):
      # An image's random draw depends on its position in the global batch.
      part = indices[rows]
      keys = [(self.seed, epoch, step, position) for position in range(len(indices))[rows]]
      rngs = [images_lib.image_rng(*key) for key in keys] if transform.random else None
      return _PendingTrainBatch(files, part, transform, keys, files.submit(
          part, transform, rngs))

    jobs = (functools.partial(job, step, indices) for step, indices in steps)
    for batch, indices in images_lib.ImageDecoder.prefetch(jobs, self.prefetch):
      yield batch, split.labels[indices]

  # --- evaluation ---------------------------------------------------------------------------

  def eval_chunks(self, images, chunk_size: int) -> Iterator[np.ndarray]:
    """Yields float32 chunks [<= chunk_size, H, W, C] of `images` in order."""
    if not images_lib.is_lazy(images):
      for start in range(0, len(images), chunk_size):
        yield images[start:start + chunk_size]
      return
    jobs = (functools.partial(images.submit, np.arange(start, min(start + chunk_size,
                                                                  len(images))))
            for start in range(0, len(images), chunk_size))
    for batch, _ in images_lib.ImageDecoder.prefetch(jobs, self.prefetch):
      yield batch


class _PendingTrainBatch:
  """A training batch being decoded; `result()` replaces unreadable images (the "skip" policy)
  by the next readable image of their class, decoded with the same random draw."""

  def __init__(self, files, indices, transform, keys, pending):
    self._files, self._indices = files, np.asarray(indices)
    self._transform, self._keys, self._pending = transform, keys, pending

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    batch, readable = self._pending.result()
    for row in np.flatnonzero(~readable):
      index = int(self._indices[row])
      while True:
        replacement = self._files.replacement(index)
        if replacement is None:
          label = int(self._files.source.labels[index])
          raise errors.DataError(f"every image of class {label} is unreadable (the first: "
                                 f"{self._files.source.paths[index]}).")
        # A fresh generator of the same draw: the failed decode may have used the first.
        rngs = [images_lib.image_rng(*self._keys[row])] if self._transform.random else None
        images, ok = self._files.submit([replacement], self._transform, rngs).result()
        if ok[0]:
          batch[row] = images[0]
          break
    return batch, self._indices

  def cancel(self) -> None:
    self._pending.cancel()
