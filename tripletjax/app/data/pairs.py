"""Pairs of images known to look alike: the data of the Siamese (anchor, positive, negative)
workflow, as in the Totally Looks Like dataset of the Keras example.

Sources (`read_pairs`):
  * a folder holding `left/` and `right/` folders of images whose sorted names match: the
    image `left/x.jpg` looks like `right/x.jpg` (the extensions may differ; the names without
    extension must be the same sets);
  * a CSV file of `left,right` rows, paths relative to the CSV's folder (a first row
    `left,right` is a header).

Images are numbered left then right: image `p` is the left image of pair `p`, image `P + p` its
right image (P pairs). A training triplet is (left p, right p, another image): its negative is
either image of another training pair, never one of pair p. `TripletBatches` draws the batches of
an epoch from `np.random.default_rng([seed, epoch])` alone, so a resumed run sees exactly the
triplets an uninterrupted run would have. `split_pairs` holds out validation pairs; their
triplets (`validation_triplets`) are fixed for the run, so evaluations are comparable.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
from typing import Iterator

import numpy as np

from tripletjax.app import errors
from tripletjax.app.data import images as images_lib

LEFT_FOLDER = "left"
RIGHT_FOLDER = "right"
# Names listed in an error about mismatched or missing files, at most.
_MAX_LISTED = 5


@dataclasses.dataclass(frozen=True, eq=False)
class PairSet:
  """P pairs of image files.

  Attributes:
    left: [P] paths (object array of str): the anchors.
    right: [P] paths: the image that looks like `left[p]`.
    names: [P] the pairs' names (the file name without extension, or the CSV row's).
  """
  left: np.ndarray
  right: np.ndarray
  names: np.ndarray

  def __len__(self) -> int:
    return len(self.left)

  @property
  def paths(self) -> np.ndarray:
    """[2P] paths of every image: the left images, then the right ones."""
    return np.concatenate([self.left, self.right])


def _listing(names) -> str:
  names = sorted(names)
  shown = ", ".join(names[:_MAX_LISTED])
  return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _images_by_name(folder: str) -> dict[str, str]:
  """{file name without extension: path} of the image files in `folder`."""
  if not os.path.isdir(folder):
    raise errors.DataNotFoundError(f"{folder}: no such folder")
  by_name = {}
  duplicates = set()
  for path in images_lib.list_image_files(folder):
    name = os.path.splitext(os.path.basename(path))[0]
    if name in by_name:
      duplicates.add(name)
    by_name[name] = path
  if duplicates:
    raise errors.DataError(f"{folder}: several images share a name without extension "
                           f"({_listing(duplicates)}): a pair must be one image per side")
  return by_name


def read_pair_folder(folder: str, left: str = LEFT_FOLDER, right: str = RIGHT_FOLDER) -> PairSet:
  """The pairs of `folder/left/` and `folder/right/`, matched by name, in sorted order.

  Files that are not images by their extension (`images.IMAGE_EXTENSIONS`) are ignored.

  Raises:
    errors.DataNotFoundError: a missing folder.
    errors.DataError: no images, or names that do not match (listed).
  """
  if not os.path.isdir(folder):
    raise errors.DataNotFoundError(
        f"{folder}: no such folder; a pair folder holds {left}/ and {right}/ folders of "
        "images whose names match")
  left_images = _images_by_name(os.path.join(folder, left))
  right_images = _images_by_name(os.path.join(folder, right))
  if not left_images and not right_images:
    raise errors.DataError(f"{folder}: no image files in {left}/ or {right}/ (image files end "
                           f"in {', '.join(sorted(images_lib.IMAGE_EXTENSIONS))})")
  only_left = set(left_images) - set(right_images)
  only_right = set(right_images) - set(left_images)
  if only_left or only_right:
    parts = []
    if only_left:
      parts.append(f"{len(only_left)} only in {left}/ ({_listing(only_left)})")
    if only_right:
      parts.append(f"{len(only_right)} only in {right}/ ({_listing(only_right)})")
    raise errors.DataError(
        f"{folder}: the image names of {left}/ ({len(left_images)}) and {right}/ "
        f"({len(right_images)}) do not match: {'; '.join(parts)}",
        hint="every left image needs a right image of the same name (extensions may differ)")
  names = sorted(left_images)
  return PairSet(np.asarray([left_images[n] for n in names], dtype=object),
                 np.asarray([right_images[n] for n in names], dtype=object),
                 np.asarray(names, dtype=object))


def read_pair_csv(path: str) -> PairSet:
  """The pairs of a CSV file of `left,right` rows (paths relative to the CSV's folder).

  Raises:
    errors.DataNotFoundError: the CSV or an image it names does not exist (listed).
    errors.DataError: a row that is not two paths, or no rows.
  """
  if not os.path.isfile(path):
    raise errors.DataNotFoundError(f"{path}: no such CSV file of pairs")
  base = os.path.dirname(os.path.abspath(path))
  rows = []
  try:
    with open(path, newline="", encoding="utf-8") as f:
      for line_number, row in enumerate(csv.reader(f), start=1):
        if not row or all(not cell.strip() for cell in row):
          continue
        if len(row) != 2:
          raise errors.DataError(f"{path}:{line_number}: expected two columns (left,right), "
                                 f"got {len(row)}: {row!r}")
        if line_number == 1 and [cell.strip().lower() for cell in row] == ["left", "right"]:
          continue
        rows.append(tuple(os.path.join(base, cell.strip()) for cell in row))
  except (OSError, UnicodeDecodeError, csv.Error) as error:
    raise errors.DataError(f"{path}: cannot read it as a CSV file ({error})") from error
  if not rows:
    raise errors.DataError(f"{path}: no pairs (expected rows of left,right image paths)")
  missing = [p for row in rows for p in row if not os.path.exists(p)]
  if missing:
    raise errors.DataNotFoundError(f"{path}: {len(missing)} image(s) it names do not exist "
                                   f"({_listing(missing)})")
  left, right = (np.asarray(side, dtype=object) for side in zip(*rows))
  names = np.asarray([os.path.splitext(os.path.basename(p))[0] for p in left], dtype=object)
  return PairSet(left, right, names)


def read_pairs(location: str) -> PairSet:
  """A pair folder (`read_pair_folder`) or a CSV file of pairs (`read_pair_csv`)."""
  if str(location).lower().endswith(".csv"):
    return read_pair_csv(location)
  return read_pair_folder(location)


def split_pairs(num_pairs: int, validation_fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """(train, validation) pair indices: a seeded random split, each sorted.

  The validation set has round(P * fraction) pairs, at least 2; the training set keeps at
  least 2 (a triplet's negative comes from another pair).

  Raises:
    errors.DataError: fewer than 4 pairs, too few for both sets.
  """
  if num_pairs < 4:
    raise errors.DataError(f"{num_pairs} pair(s): the pair workflow needs at least 4 (2 to "
                           "train on, 2 to validate)")
  num_validation = min(max(round(num_pairs * validation_fraction), 2), num_pairs - 2)
  order = np.random.default_rng([seed, num_pairs]).permutation(num_pairs)
  return np.sort(order[num_validation:]), np.sort(order[:num_validation])


def _other_pair_images(pairs: np.ndarray, positions: np.ndarray, num_pairs: int,
                       rng: np.random.Generator) -> np.ndarray:
  """For each `pairs[positions[i]]`, an image of another pair of `pairs`, uniformly: one of
  the other len(pairs) - 1 pairs, then its left or right image."""
  offsets = rng.integers(1, len(pairs), size=len(positions))
  sides = rng.integers(0, 2, size=len(positions))
  return pairs[(positions + offsets) % len(pairs)] + sides * num_pairs


class TripletBatches:
  """Batches of (anchor, positive, negative) image indices, the same for the same (seed, epoch).

  Every epoch takes the training pairs in a fresh random order, `batch_size` per step (the last
  partial batch is dropped); each anchor's negative is an image of another training pair.

  Attributes:
    batch_size: triplets per batch (N); a batch holds 3N images.
    steps_per_epoch: len(train_pairs) // N.
  """

  def __init__(self, train_pairs, num_pairs: int, batch_size: int, seed: int):
    self.train_pairs = np.asarray(train_pairs, np.int64)
    self.num_pairs = int(num_pairs)
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    if len(self.train_pairs) < 2:
      raise errors.DataError(f"{len(self.train_pairs)} training pair(s): negatives come from "
                             "other pairs, so at least 2 are needed")
    if not 1 <= self.batch_size <= len(self.train_pairs):
      raise errors.ConfigError(
          f"config.batch.batch_size={self.batch_size}: must be in [1, "
          f"{len(self.train_pairs)}], the number of training pairs")
    self.steps_per_epoch = len(self.train_pairs) // self.batch_size

  def __len__(self) -> int:
    return self.steps_per_epoch

  def epoch(self, epoch: int) -> Iterator[np.ndarray]:
    """Yields the int64 image indices [3N] of each batch of `epoch`: N anchors (left images),
    their N positives (right images), then N negatives."""
    rng = np.random.default_rng([self.seed, int(epoch)])
    positions = rng.permutation(len(self.train_pairs))
    count = self.steps_per_epoch * self.batch_size
    negatives = _other_pair_images(self.train_pairs, positions[:count], self.num_pairs, rng)
    for step in range(self.steps_per_epoch):
      rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
      anchors = self.train_pairs[positions[rows]]
      yield np.concatenate([anchors, anchors + self.num_pairs, negatives[rows]])


def validation_triplets(validation_pairs, num_pairs: int, seed: int) -> np.ndarray:
  """The fixed validation triplets: int64 [V, 3] image indices (left p, right p, an image of
  another validation pair), drawn from the seed alone."""
  validation_pairs = np.asarray(validation_pairs, np.int64)
  rng = np.random.default_rng([seed, num_pairs, len(validation_pairs)])
  negatives = _other_pair_images(validation_pairs, np.arange(len(validation_pairs)),
                                 num_pairs, rng)
  return np.stack([validation_pairs, validation_pairs + num_pairs, negatives], axis=1)


def check_pairs(pairs: PairSet) -> None:
  """Raises `errors.DataError` if a pair's two sides are the same file."""
  same = [name for name, a, b in zip(pairs.names, pairs.left, pairs.right)
          if os.path.abspath(a) == os.path.abspath(b)]
  if same:
    raise errors.DataError(f"{len(same)} pair(s) have the same file on both sides "
                           f"({_listing(same)})")
  counts = collections.Counter(os.path.abspath(p) for p in pairs.left)
  repeated = [p for p, count in counts.items() if count > 1]
  if repeated:
    raise errors.DataError(f"{len(repeated)} left image(s) appear in several pairs "
                           f"({_listing(repeated)}): each pair needs its own anchor")
