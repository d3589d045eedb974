"""Training-time image augmentations, on the host, deterministic given (seed, epoch, step).

Like the samplers, every batch draws from its own `np.random.default_rng([seed, epoch, step])`,
so a run resumed from a checkpoint sees exactly the images an uninterrupted run would have seen.
The draws are made for the whole global batch and each image takes its row's, so a process
that augments only its rows of the batch (`augment(..., rows=...)`) gets them exactly as one
process augmenting the whole batch would.

  * "none": the images as they are (the default);
  * "flip": each image mirrored left-right with probability 1/2, for data whose classes are
    mirror-symmetric (products, people); not for digits, nor for Fashion-MNIST, where every
    shoe points the same way;
  * "shift": a random translation of up to `max_shift` pixels in each direction, filled with
    zeros (the background of MNIST-style images);
  * "flip_shift": "flip", then "shift".

Image files (folder datasets) are augmented while they are decoded, by the transforms of
`images` (`FILE_AUGMENTATIONS`): "none" (the evaluation resize and centre crop), "flip",
"crop" (a random resized crop) and "crop_flip" (both: what "A Metric Learning Reality Check"
trains with). Each image draws from `images.image_rng(seed, epoch, step, position)`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from tripletjax.app.data import images


def _draw(values: np.ndarray, rows: slice | None) -> np.ndarray:
  """The draws of `rows` from draws made for a whole batch (all of them when rows is None)."""
  return values if rows is None else values[rows]


def random_flip(images: np.ndarray, rng: np.random.Generator, *, rows: slice | None = None,
                batch_size: int | None = None) -> np.ndarray:
  """Mirrors each image of [N, H, W, C] left-right with probability 1/2 (a new array).

  With `rows`, `images` are those rows of a batch of `batch_size` and draw as they would there.
  """
  flip = _draw(rng.random(batch_size or images.shape[0]), rows) < 0.5
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_shift(images: np.ndarray, rng: np.random.Generator, max_shift: int, *,
                 rows: slice | None = None, batch_size: int | None = None) -> np.ndarray:
  """Translates each image of [N, H, W, C] by up to `max_shift` pixels per axis, zero-filled.

  With `rows`, `images` are those rows of a batch of `batch_size` and draw as they would there.
  """
  if max_shift < 1:
    return images
  num, height, width, _ = images.shape
  padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  top = _draw(rng.integers(0, 2 * max_shift + 1, batch_size or num), rows)
  left = _draw(rng.integers(0, 2 * max_shift + 1, batch_size or num), rows)
  # Gather every image's window at once: [N, H, W] row and column indices into `padded`.
  pixel_rows = top[:, None, None] + np.arange(height)[None, :, None]
  pixel_columns = left[:, None, None] + np.arange(width)[None, None, :]
  return padded[np.arange(num)[:, None, None], pixel_rows, pixel_columns]


def _flip_shift(images, rng, max_shift, **rows):
  return random_shift(random_flip(images, rng, **rows), rng, max_shift, **rows)


# Augmentations by name: augmentation(images, rng, max_shift, rows=, batch_size=) -> images.
AUGMENTATIONS: dict[str, Callable[..., np.ndarray]] = {
    "none": lambda images, rng, max_shift, **rows: images,
    "flip": lambda images, rng, max_shift, **rows: random_flip(images, rng, **rows),
    "shift": random_shift,
    "flip_shift": _flip_shift,
}


def augment(images: np.ndarray, kind: str, *, seed: int, epoch: int, step: int,
            max_shift: int = 2, rows: slice | None = None,
            batch_size: int | None = None) -> np.ndarray:
  """Applies augmentation `kind` to a batch [N, H, W, C] of float images.

  Args:
    images: [N, H, W, C] batch, or rows `rows` of a batch of `batch_size`.
    kind: one of `AUGMENTATIONS`.
    seed, epoch, step: select the random draw (same arguments, same result).
    max_shift: largest translation in pixels for "shift" and "flip_shift".
    rows, batch_size: `images` are these rows of a batch of `batch_size` (a process's rows of
      the global batch); they are augmented exactly as in the whole batch. Default: `images`
      is the whole batch.
  """
  if kind not in AUGMENTATIONS:
    raise ValueError(f"Unknown augmentation {kind!r}; expected one of {sorted(AUGMENTATIONS)}.")
  if (rows is None) != (batch_size is None):
    raise ValueError("rows and batch_size go together.")
  if rows is not None and len(range(batch_size)[rows]) != images.shape[0]:
    raise ValueError(f"rows {rows} of a batch of {batch_size} are not the {images.shape[0]} "
                     "images given.")
  return AUGMENTATIONS[kind](images, np.random.default_rng([seed, epoch, step]), max_shift,
                             rows=rows, batch_size=batch_size)


# Augmentations of image files, by name: (size, eval_resize, scale, ratio) -> the transform a
# training image is decoded through.
FILE_AUGMENTATIONS: dict[str, Callable[..., images.Transform]] = {
    "none": lambda size, resize, scale, ratio: images.EvalTransform(size, resize),
    "flip": lambda size, resize, scale, ratio: images.TrainTransform(
        size, random_crop=False, flip=True, resize=resize),
    "crop": lambda size, resize, scale, ratio: images.TrainTransform(
        size, scale, ratio, flip=False),
    "crop_flip": lambda size, resize, scale, ratio: images.TrainTransform(size, scale, ratio),
}


def file_transform(kind: str, *, size: int, resize: int, scale=images.DEFAULT_SCALE,
                   ratio=images.DEFAULT_RATIO) -> images.Transform:
  """The decoding transform of image-file augmentation `kind` (one of `FILE_AUGMENTATIONS`)."""
  if kind not in FILE_AUGMENTATIONS:
    raise ValueError(f"Unknown image-file augmentation {kind!r}; expected one of "
                     f"{sorted(FILE_AUGMENTATIONS)}.")
  return FILE_AUGMENTATIONS[kind](size, resize, tuple(scale), tuple(ratio))
