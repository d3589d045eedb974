"""What an embedder embeds: image files, folders, `folder:` datasets, arrays, the run's test set.

A source is an `ImageSet`: images (a float32 array in the training layout, or image files
decoded lazily by the run's evaluation transform), a label per image (-1: unknown), the class
names the labels index, and a name per image (its path, or "test:<i>" for the i-th image of
the run's test set). Specifications on the command line:

  * an image file (any format PIL reads), or several;
  * `folder:<path>` or a folder: a dataset folder in any layout `data.folders` reads (class
    sub-folders give labels; every split is taken, in order), or a folder holding image files
    directly (no labels);
  * a `.npy` file: float32 [N, H, W, C] images in the training layout (no labels);
  * `test:<i>`: the i-th image of the run's test set (the evaluation's order);
  * `test:all`: every image of the run's test set.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from tripletjax.app import errors
from tripletjax.app import tasks
from tripletjax.app.data import datasets
from tripletjax.app.data import folders
from tripletjax.app.data import images as images_lib
from tripletjax.app.tasks import labelled
from tripletjax.app.tasks import pairs

TEST_PREFIX = "test:"
ALL_TEST = "test:all"


@dataclasses.dataclass(eq=False)
class ImageSet:
  """Images with their labels and names.

  Attributes:
    images: float32 [N, H, W, C] array, or `images.ImageFiles` (decoded on demand).
    labels: int64 [N], indices into `class_names`; -1 where unknown.
    class_names: names of the labels.
    names: [N] str: a path, or "test:<i>".
  """
  images: object
  labels: np.ndarray
  class_names: tuple[str, ...]
  names: np.ndarray

  def __len__(self) -> int:
    return len(self.names)

  @property
  def has_labels(self) -> bool:
    return bool(len(self.labels)) and bool(np.all(self.labels >= 0))

  def class_of(self, index: int) -> str:
    label = int(self.labels[index])
    return self.class_names[label] if label >= 0 else ""


def _folder_items(path: str) -> list[tuple[str, str | None]]:
  """(file, class name or None) of every image of a folder dataset or plain image folder."""
  if os.path.isdir(path):
    direct = images_lib.list_image_files(path)
    has_subfolders = any(os.path.isdir(os.path.join(path, name)) and not name.startswith(".")
                         for name in os.listdir(path))
    if direct and not has_subfolders:
      return [(file, None) for file in direct]
  try:
    index = folders.read_folder(path)
  except errors.DataError as error:
    if os.path.isdir(path):
      raise errors.DataError(f"folder {path}: no image file in it (image files end in "
                             f"{', '.join(sorted(images_lib.IMAGE_EXTENSIONS))})") from error
    raise
  return [item for split in folders.SPLITS for item in index.splits.get(split, [])]


def _file_items(spec: str) -> list[tuple[str, str | None]]:
  """The image files of one command-line specification (a file, a folder, folder:<path>)."""
  # Absolute paths: a query file is recognised in a gallery however either was spelt.
  path = os.path.abspath(os.path.expanduser(spec[len(datasets.FOLDER_PREFIX):]
                                            if spec.startswith(datasets.FOLDER_PREFIX)
                                            else spec))
  if not os.path.exists(path):
    raise errors.DataNotFoundError(f"{spec}: no such file or folder")
  if os.path.isdir(path) or spec.startswith(datasets.FOLDER_PREFIX):
    return _folder_items(path)
  return [(path, None)]


def image_files(embedder, specs: Sequence[str]) -> ImageSet:
  """The image files of `specs` (files, folders, folder:<path>), labelled by their class
  folder where they have one, decoded as the run's evaluation decodes images."""
  items = [item for spec in specs for item in _file_items(spec)]
  if not items:
    raise errors.DataError(f"{' '.join(specs)}: no image to embed")
  names = sorted({name for _, name in items if name is not None})
  number = {name: label for label, name in enumerate(names)}
  labels = np.asarray([number.get(name, -1) if name is not None else -1 for _, name in items],
                      np.int64)
  paths = [path for path, _ in items]
  return ImageSet(embedder.image_files(paths, labels), labels, tuple(names),
                  np.asarray(paths, dtype=str))


def array_file(embedder, path: str) -> ImageSet:
  """A .npy file of images in the training layout."""
  try:
    images = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as error:
    raise errors.DataError(f"{path}: cannot read it as a .npy array ({error})") from error
  images = embedder.check_images(images)
  return ImageSet(images, np.full(len(images), -1, np.int64), (),
                  np.asarray([f"{path}[{i}]" for i in range(len(images))], dtype=str))


def read_images(embedder, specs: Sequence[str]) -> ImageSet:
  """The images of command-line `specs` (see the module docstring; test: excluded)."""
  arrays = [spec for spec in specs if spec.lower().endswith(".npy")]
  if arrays and len(specs) > 1:
    raise errors.DataError("a .npy file of images is given alone, not with other images")
  if arrays:
    return array_file(embedder, arrays[0])
  return image_files(embedder, specs)


# ----------------------------------------------------------------------------- test set


@dataclasses.dataclass(eq=False)
class TestSet:
  """The run's own evaluation data.

  Attributes:
    gallery: what the evaluation searches: the labelled test split (leave-one-out), its
      gallery images (a query/gallery split: In-Shop), or, for a pair run, the right images
      of its validation pairs.
    queries: what "test:<i>" names: the gallery itself (leave-one-out), the query images
      (In-Shop), or the left images of the validation pairs (pairs; query i's match is
      gallery image i).
    queries_in_gallery: whether query i is gallery image i (then left out of its own search).
  """
  gallery: ImageSet
  queries: ImageSet
  queries_in_gallery: bool
  _close: object = None

  def close(self) -> None:
    if self._close is not None:
      self._close()


def _labelled_test_set(config) -> TestSet:
  dataset = labelled.load_labelled_data(config)
  test = dataset.test
  if images_lib.is_lazy(test.images):
    names = np.asarray(test.images.source.paths, dtype=str)
  else:
    names = np.asarray([f"{TEST_PREFIX}{i}" for i in range(len(test))], dtype=str)
  everything = ImageSet(test.images, test.labels.astype(np.int64), tuple(dataset.class_names),
                        names)
  if test.is_query is not None:  # In-Shop: queries searched in a separate gallery.
    return TestSet(subset(everything, np.flatnonzero(~test.is_query)),
                   subset(everything, np.flatnonzero(test.is_query)), False, dataset.close)
  return TestSet(everything, everything, True, dataset.close)


def _pair_test_set(config) -> TestSet:
  task = pairs.PairTask(config, tasks.make_plan(config))
  validation = task.validation  # [V, 3] image ids: anchor (left), positive (right), negative.
  pair_names = tuple(str(task.pairs.names[image]) for image in validation[:, 0])
  labels = np.arange(len(validation), dtype=np.int64)

  def image_set(image_ids):
    files = task.files.take(image_ids)
    return ImageSet(files, labels, pair_names, np.asarray(files.source.paths, dtype=str))
  return TestSet(image_set(validation[:, 1]), image_set(validation[:, 0]), False, task.close)


def test_set(config) -> TestSet:
  """The run's test data (it must be where the run read it)."""
  if tasks.task_for(config.data.name) == "pairs":
    return _pair_test_set(config)
  return _labelled_test_set(config)


def test_indices(specs: Sequence[str], size: int) -> np.ndarray:
  """The indices named by "test:<i>" / "test:all" specifications, in order."""
  indices = []
  for spec in specs:
    if spec == ALL_TEST:
      indices.extend(range(size))
      continue
    text = spec[len(TEST_PREFIX):]
    if not text.isdigit() or int(text) >= size:
      raise errors.DataError(f"{spec}: the test set has images test:0 to test:{size - 1} "
                             "(or test:all)")
    indices.append(int(text))
  return np.asarray(indices, np.int64)


def subset(images: ImageSet, indices: np.ndarray) -> ImageSet:
  """The images at `indices`, lazily for image files."""
  return ImageSet(images_lib.take(images.images, indices), images.labels[indices],
                  images.class_names, images.names[indices])
