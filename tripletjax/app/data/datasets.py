"""Image datasets by name, as NumPy arrays on the host.

`load_dataset(name)` returns a `Dataset` whose splits hold float32 images [N, H, W, C] in [0, 1]
and int32 labels [N]. Names:

  * "digits": scikit-learn's bundled 8x8 digits (1,797 images), split 75/25 by class. It needs
    no file and no network, so it is the default and the dataset of the tests.
  * "fashion_mnist": the four IDX files in `data_dir`; without `data_dir`, those that Debian's
    package installs (`apt-get install dataset-fashion-mnist`, files in
    /usr/share/datasets/fashion-mnist).
  * "mnist": the four IDX files in `data_dir`; without `data_dir`, tfds' "mnist".
  * "tfds:<name>": any image classification dataset of tensorflow-datasets with "image" and
    "label" features and "train" and "test" splits, read through `tfds.data_source`, which
    needs no TensorFlow once the dataset is prepared.
  * "folder:<path>": image files of any size arranged by class (`folders` lists the layouts:
    class sub-folders, train/test or query/gallery folders, a CSV list, Stanford Online
    Products' and In-Shop's list files). Its splits hold `images.ImageFiles`, decoded batch by
    batch in worker threads through the `ImageOptions` transforms, never all in memory.

After loading, `class_split` makes the train and test classes disjoint (`splits`), a validation
subset (or a fold of the training classes) may be held out of the training side, and
`max_train` / `max_test` subsample.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import socket
import struct
import zlib
from typing import Callable

import numpy as np

from tripletjax.app import errors
from tripletjax.app.config import checker
from tripletjax.app.data import folders
from tripletjax.app.data import images as images_lib
from tripletjax.app.data import splits

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                             "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASS_NAMES = tuple(str(digit) for digit in range(10))
TFDS_PREFIX = "tfds:"
FOLDER_PREFIX = "folder:"

# The IDX files of MNIST and Fashion-MNIST, by split: (images, labels).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes (third byte of the magic number); multi-byte values are big-endian.
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
DIGITS_TEST_FRACTION = 0.25
# An IDX header that claims more data than this is no IDX file's (nor a truncated one's): the
# bytes are something else, such as a labels file with a wrong number of dimensions.
IDX_MAX_BYTES = 2**40


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: `==` on arrays has no single truth.
class Split:
  """One split of a dataset.

  Attributes:
    images: float32 [N, H, W, C] scaled to [0, 1]: an array, or `images.ImageFiles` that
      decode on demand.
    labels: int32 [N], indices into `Dataset.class_names`.
    is_query: None (evaluation is leave-one-out over the split), or bool [N]: the queries,
      whose neighbours are searched among the other examples, the gallery (In-Shop).
  """
  images: np.ndarray | images_lib.ImageFiles
  labels: np.ndarray
  is_query: np.ndarray | None = None

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.float32:
      raise ValueError(f"images must be float32 [N, H, W, C], got {self.images.dtype} "
                       f"{self.images.shape}.")
    if self.labels.ndim != 1 or self.labels.dtype != np.int32:
      raise ValueError(f"labels must be int32 [N], got {self.labels.dtype} {self.labels.shape}.")
    if len(self.images) != len(self.labels):
      raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels.")
    if self.is_query is not None and (np.shape(self.is_query) != self.labels.shape
                                      or np.asarray(self.is_query).dtype != bool):
      raise ValueError(f"is_query must be bool [N] = {self.labels.shape}, got "
                       f"{np.asarray(self.is_query).dtype} {np.shape(self.is_query)}.")

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, indices) -> "Split":
    """The examples at `indices` (ints), in that order; image files stay undecoded."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    return Split(images_lib.take(self.images, indices), self.labels[indices],
                 None if self.is_query is None else self.is_query[indices])

  @property
  def classes(self) -> np.ndarray:
    """The distinct labels of this split, sorted."""
    return np.unique(self.labels)

  @property
  def num_classes(self) -> int:
    """The number of distinct labels present in this split (a subsample may miss classes)."""
    return len(np.unique(self.labels))


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A dataset's splits.

  Attributes:
    name: its name (`load_dataset`'s).
    train: the training examples.
    test: the evaluation examples (leave-one-out, or queries and gallery).
    class_names: names indexed by label.
    validation: examples held out of the training side for validation, or None.
  """
  name: str
  train: Split
  test: Split
  class_names: tuple[str, ...]
  validation: Split | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train.images.shape[1:])

  @property
  def unseen_test_classes(self) -> np.ndarray:
    """The test classes that no training example has (all of them under a class split)."""
    return np.setdiff1d(self.test.classes, self.train.classes)

  def close(self) -> None:
    """Stops the decoding threads of image-file splits (arrays have none)."""
    for split in (self.train, self.test, self.validation):
      if split is not None and images_lib.is_lazy(split.images):
        split.images.decoder.close()


@dataclasses.dataclass(frozen=True)
class ImageOptions:
  """How image files are decoded (folder datasets): `config.data`'s image keys.

  Attributes:
    size: the side of the square crops.
    channels: 1 (grey) or 3 (RGB).
    eval_resize: the shorter side before the evaluation centre crop (MLRC: 256 for 224);
      None: the crop spans the shorter side.
    unreadable: "error" or "skip" (`images.UNREADABLE_POLICIES`).
    workers: decoding threads; 0: one per core.
  """
  size: int = 224
  channels: int = 3
  eval_resize: int | None = None
  unreadable: str = "error"
  workers: int = 0

  def eval_transform(self) -> images_lib.EvalTransform:
    return images_lib.EvalTransform(self.size, self.eval_resize)


def load_dataset(name: str, data_dir: str | None = None, *, seed: int = 0,
                 max_train: int | None = None, max_test: int | None = None,
                 class_split: str = "none", validation_fraction: float = 0.0,
                 validation_folds: int = 0, validation_fold: int = 0,
                 max_validation: int | None = None,
                 image_options: ImageOptions | None = None) -> Dataset:
  """Loads a dataset by name (see the module docstring for the names).

  Args:
    name: "digits", "fashion_mnist", "mnist", "tfds:<name>" or "folder:<path>".
    data_dir: the folder of the IDX files (fashion_mnist, mnist), tfds' data dir (tfds:), or
      the folder a relative folder: path is in. Ignored by "digits".
    seed: seeds the train/test split of "digits", the validation subset and the subsamples.
    max_train: keep at most this many training examples, a deterministic subsample with the
      class proportions of the full split (None keeps all).
    max_test: the same for the test split.
    class_split: "none", "half" or "<first>:<last>": train and test on disjoint classes
      (`splits`).
    validation_fraction: hold this fraction of the training side out for validation: of its
      classes when train and test classes are disjoint (a class split, SOP, In-Shop), of each
      class's examples otherwise; 0: no validation.
    validation_folds, validation_fold: or, with K = validation_folds >= 2, the training
      classes cut into K class-disjoint folds (`splits.class_folds`), fold validation_fold
      held out for validation.
    max_validation: the same as max_train for the validation split.
    image_options: how folder datasets decode their images (default `ImageOptions()`).

  Returns:
    The dataset.

  Raises (all `errors.UserError`s, which `main` prints as one line):
    errors.DataError (a ValueError): unknown name, or malformed or unreadable files.
    errors.DataNotFoundError (a FileNotFoundError): missing IDX files (the message says how to
      get them).
    errors.MissingDependencyError (an ImportError): a tfds: name without tensorflow-datasets.
    errors.DataUnavailableError (a RuntimeError): a tfds dataset that is not prepared and
      cannot be downloaded here.
    errors.ConfigError (a ValueError): max_train or max_test < 1, a class split that leaves
      a side without classes.
  """
  dataset = find_loader(name)(name, data_dir, seed, image_options or ImageOptions())
  dataset = _split_classes(dataset, class_split)
  # Validation mirrors the test side: unseen classes when the test classes are unseen.
  disjoint = not np.intersect1d(dataset.train.classes, dataset.test.classes).size
  dataset = _hold_out_validation(dataset, validation_fraction, disjoint, seed)
  dataset = _hold_out_fold(dataset, validation_folds, validation_fold)
  return dataclasses.replace(
      dataset,
      train=_subsample(dataset.train, max_train, seed, "max_train"),
      test=_subsample(dataset.test, max_test, seed + 1, "max_test"),
      validation=None if dataset.validation is None else _subsample(
          dataset.validation, max_validation, seed + 2, "max_validation"))


def _split_classes(dataset: Dataset, class_split: str) -> Dataset:
  """Pools every example and puts each on the side of its class (`splits.training_classes`)."""
  all_labels = np.concatenate([dataset.train.labels, dataset.test.labels])
  train_classes = splits.training_classes(class_split, all_labels)
  if train_classes is None:
    if not len(dataset.test):
      raise errors.ConfigError(
          f"{dataset.name} has no test split (one set of class folders): "
          "config.data.class_split='none' leaves nothing to evaluate.",
          "set config.data.class_split='half' (or '<first>:<last>') to train and test on "
          "disjoint classes, or arrange the folder as train/ and test/ sub-folders")
    return dataset
  if dataset.test.is_query is not None:
    raise errors.ConfigError(
        f"config.data.class_split={class_split!r}: {dataset.name} comes with its own query and "
        "gallery split, on classes disjoint from training.",
        "leave config.data.class_split='none'")
  images = images_lib.concatenate(dataset.train.images, dataset.test.images)
  pooled = Split(images, all_labels)
  in_train = np.isin(all_labels, train_classes)
  return dataclasses.replace(dataset, train=pooled.take(np.flatnonzero(in_train)),
                             test=pooled.take(np.flatnonzero(~in_train)))


def _hold_out_validation(dataset: Dataset, fraction: float, by_class: bool,
                         seed: int) -> Dataset:
  if not fraction:
    return dataset
  if not 0 < fraction < 1:
    raise errors.ConfigError(f"config.data.validation_fraction={fraction!r}: must be in "
                             "[0, 1).")
  labels = dataset.train.labels
  if by_class:
    held_out = splits.class_holdout(labels, fraction, seed)
  else:
    held_out = splits.stratified_holdout(labels, fraction, seed)
  return dataclasses.replace(dataset, train=dataset.train.take(np.flatnonzero(~held_out)),
                             validation=dataset.train.take(np.flatnonzero(held_out)))


def _hold_out_fold(dataset: Dataset, folds: int, fold: int) -> Dataset:
  """Fold `fold` of the K = `folds` class-disjoint folds of the training classes validates."""
  if not folds:
    return dataset
  if dataset.validation is not None:
    raise errors.ConfigError(
        f"config.data.validation_folds={folds} and config.data.validation_fraction both hold "
        "out a validation set.", "set one of them to 0")
  held_out = splits.fold_holdout(dataset.train.labels, folds, fold)
  return dataclasses.replace(dataset, train=dataset.train.take(np.flatnonzero(~held_out)),
                             validation=dataset.train.take(np.flatnonzero(held_out)))


def _load_fashion_mnist(name: str, data_dir: str | None, seed: int,
                        image_options: ImageOptions) -> Dataset:
  del seed, image_options
  if data_dir is None:
    if not os.path.isdir(FASHION_MNIST_DEBIAN_DIR):
      raise errors.DataNotFoundError(
          f"Fashion-MNIST not found at {FASHION_MNIST_DEBIAN_DIR}. Install it with "
          "`apt-get install dataset-fashion-mnist`, or pass data_dir= a folder holding "
          f"{_idx_file_list()}.")
    data_dir = FASHION_MNIST_DEBIAN_DIR
  return _load_idx_dataset(name, data_dir, FASHION_MNIST_CLASS_NAMES)


def _load_mnist(name: str, data_dir: str | None, seed: int,
                image_options: ImageOptions) -> Dataset:
  del seed, image_options
  if data_dir is None:
    return dataclasses.replace(_load_tfds("mnist", None), name=name)
  return _load_idx_dataset(name, data_dir, DIGIT_CLASS_NAMES)


# Loaders by dataset name, and by name prefix ("tfds:mnist"):
# loader(name, data_dir, seed, image_options).
Loader = Callable[[str, str | None, int, ImageOptions], Dataset]
DATASETS: dict[str, Loader] = {
    "digits": lambda name, data_dir, seed, image_options: _load_digits(seed),
    "fashion_mnist": _load_fashion_mnist,
    "mnist": _load_mnist,
}
DATASET_PREFIXES: dict[str, Loader] = {
    TFDS_PREFIX: lambda name, data_dir, seed, image_options: _load_tfds(
        name[len(TFDS_PREFIX):], data_dir),
    FOLDER_PREFIX: lambda name, data_dir, seed, image_options: _load_folder(
        name, data_dir, image_options),
}


# What follows each prefix, as the valid names show it.
_PREFIX_ARGUMENTS = {TFDS_PREFIX: "<name>", FOLDER_PREFIX: "<path>"}


def dataset_names() -> list[str]:
  """The valid `name`s of `load_dataset`, prefixes shown as "tfds:<name>", "folder:<path>"."""
  return sorted(DATASETS) + [f"{prefix}{_PREFIX_ARGUMENTS.get(prefix, '<name>')}"
                             for prefix in sorted(DATASET_PREFIXES)]


def find_loader(name) -> Loader:
  """The loader of dataset `name`; `errors.DataError` listing the valid names if none."""
  if isinstance(name, str):
    if name in DATASETS:
      return DATASETS[name]
    for prefix, loader in DATASET_PREFIXES.items():
      if name.startswith(prefix) and len(name) > len(prefix):
        return loader
  raise errors.DataError(f"Unknown dataset {name!r}; expected one of "
                         f"{', '.join(dataset_names())}.")


def num_examples_per_class(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
  """Counts [num_classes] of the non-negative integer `labels` (default: max label + 1)."""
  labels = np.asarray(labels)
  if labels.size and labels.min() < 0:
    raise ValueError(f"labels must be >= 0, got {labels.min()}.")
  return np.bincount(labels.reshape(-1).astype(np.int64), minlength=num_classes or 0)


# --- digits ----------------------------------------------------------------------------------


def _load_digits(seed: int) -> Dataset:
  # Imported here: scikit-learn takes a second to import and only this dataset needs it.
  from sklearn import datasets as sklearn_datasets
  from sklearn import model_selection

  digits = sklearn_datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]  # Pixel values 0..16.
  labels = digits.target.astype(np.int32)
  train_index, test_index = model_selection.train_test_split(
      np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels,
      random_state=seed)
  # Sorted so that a split keeps the original order; the samplers shuffle.
  train_index, test_index = np.sort(train_index), np.sort(test_index)
  return Dataset(
      name="digits",
      train=Split(images[train_index], labels[train_index]),
      test=Split(images[test_index], labels[test_index]),
      class_names=DIGIT_CLASS_NAMES)


# --- IDX files (MNIST, Fashion-MNIST) ----------------------------------------------------------


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (gzip-compressed when `path` ends in .gz) into a native-endian array.

  The format: two zero bytes, a type code, the number of dimensions, then each dimension as a
  big-endian uint32, then the values in C order, big-endian.

  Raises:
    errors.DataNotFoundError (a FileNotFoundError): `path` does not exist.
    errors.DataError (a ValueError): not an IDX file (a bad magic number or a header that
      does not match the data), a truncated file, or one that cannot be read.
  """
  if not os.path.exists(path):
    raise errors.DataNotFoundError(f"No such IDX file: {path}")
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        content = f.read()
    else:
      with open(path, "rb") as f:
        content = f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # A truncated or corrupt gzip.
    raise errors.DataError(f"{path}: corrupt or truncated gzip file ({error}).") from error
  except OSError as error:  # A folder, no permission, an I/O error.
    raise errors.DataError(f"{path}: cannot read it ({error.strerror or error}).") from error
  return parse_idx(content, path)


def parse_idx(content: bytes, source: str = "<bytes>") -> np.ndarray:
  """Parses the bytes of an IDX file (see `read_idx`); `source` names it in errors.

  Raises:
    errors.DataError (a ValueError): "<source>: not an IDX file (...)" for a bad magic number
      or a header that does not match the data, or "<source>: truncated IDX file ...".
  """
  if len(content) < 4:
    raise errors.DataError(f"{source}: truncated IDX file, {len(content)} bytes is shorter "
                           "than the 4-byte magic number.")
  zero, type_code, num_dims = struct.unpack(">HBB", content[:4])
  if zero != 0 or type_code not in IDX_DTYPES:
    if content[:2] == b"\x1f\x8b":
      why = "it is gzip-compressed: its name must end in .gz"
    else:
      why = ("expected 0x0000, a type code such as 0x08 for uint8, then the number of "
             "dimensions")
    raise errors.DataError(f"{source}: not an IDX file (bad IDX magic number "
                           f"0x{content[:4].hex()}; {why}).")
  header_size = 4 + 4 * num_dims
  if len(content) < header_size:
    raise errors.DataError(f"{source}: truncated IDX file, {len(content)} bytes is shorter "
                           f"than the {header_size}-byte header of {num_dims} dimensions.")
  shape = struct.unpack(f">{num_dims}I", content[4:header_size])
  dtype = IDX_DTYPES[type_code]
  expected_size = header_size + math.prod(shape) * dtype.itemsize  # Python ints: no overflow.
  if len(content) > expected_size or expected_size > IDX_MAX_BYTES:
    problem = ("too long" if len(content) > expected_size
               else "far more than any IDX file holds")
    raise errors.DataError(
        f"{source}: not an IDX file (inconsistent header: its shape {shape} of {dtype} needs "
        f"{expected_size} bytes, the file has {len(content)}; {problem}).")
  if len(content) < expected_size:
    raise errors.DataError(f"{source}: truncated IDX file, {len(content)} bytes where shape "
                           f"{shape} of {dtype} needs {expected_size}.")
  values = np.frombuffer(content, dtype=dtype, offset=header_size).reshape(shape)
  return values.astype(dtype.newbyteorder("="))


def _idx_file_list() -> str:
  names = [name for pair in IDX_FILES.values() for name in pair]
  return ", ".join(f"{name}[.gz]" for name in names)


def _find_idx_file(data_dir: str, base_name: str, dataset_name: str) -> str:
  for candidate in (base_name + ".gz", base_name):
    path = os.path.join(data_dir, candidate)
    if os.path.exists(path):
      return path
  if dataset_name == "fashion_mnist":
    how = ("`apt-get install dataset-fashion-mnist` installs them in "
           f"{FASHION_MNIST_DEBIAN_DIR} (then leave data_dir=None)")
  else:
    how = ("download the four MNIST IDX files into it, or leave data_dir=None to read tfds' "
           "'mnist'")
  raise errors.DataNotFoundError(
      f"{dataset_name}: missing {os.path.join(data_dir, base_name + '.gz')} (or the "
      f"uncompressed {base_name}). data_dir must hold {_idx_file_list()}; {how}.")


def _load_idx_split(data_dir: str, split: str, dataset_name: str,
                    num_classes: int) -> Split:
  images_name, labels_name = IDX_FILES[split]
  images_path = _find_idx_file(data_dir, images_name, dataset_name)
  labels_path = _find_idx_file(data_dir, labels_name, dataset_name)
  images = read_idx(images_path)
  labels = read_idx(labels_path)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise errors.DataError(f"{images_path}: expected uint8 images [N, H, W], got "
                           f"{images.dtype} {images.shape}.")
  if labels.ndim != 1:
    raise errors.DataError(f"{labels_path}: expected labels [N], got shape {labels.shape}.")
  if len(images) != len(labels):
    raise errors.DataError(f"{dataset_name} {split}: {len(images)} images in {images_path} "
                           f"but {len(labels)} labels in {labels_path}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise errors.DataError(f"{labels_path}: labels must be in [0, {num_classes}), got "
                           f"[{labels.min()}, {labels.max()}].")
  return Split(_scale_uint8(images[..., np.newaxis]), labels.astype(np.int32))


def _load_idx_dataset(name: str, data_dir: str, class_names: tuple[str, ...]) -> Dataset:
  if not os.path.isdir(data_dir):
    raise errors.DataNotFoundError(f"{name}: data_dir {data_dir} is not a folder; it must "
                                   f"hold {_idx_file_list()}.")
  return Dataset(
      name=name,
      train=_load_idx_split(data_dir, "train", name, len(class_names)),
      test=_load_idx_split(data_dir, "test", name, len(class_names)),
      class_names=class_names)


def _scale_uint8(images: np.ndarray) -> np.ndarray:
  # Multiplying by a float32 reciprocal keeps the result float32 without a float64 temporary.
  return images.astype(np.float32) * np.float32(1.0 / 255.0)


# --- tensorflow-datasets -----------------------------------------------------------------------

# tfds downloads MNIST and most image datasets from Google Cloud Storage.
_NETWORK_PROBE_ADDRESS = ("storage.googleapis.com", 443)
_NETWORK_PROBE_TIMEOUT_S = 3.0
_TFDS_READ_CHUNK = 1024


def _network_is_available() -> bool:
  """Whether tfds could download: without this probe an offline download retries for minutes."""
  try:
    with socket.create_connection(_NETWORK_PROBE_ADDRESS, timeout=_NETWORK_PROBE_TIMEOUT_S):
      return True
  except OSError:
    return False


def _offline_message(tfds_name: str, data_dir: str | None, reason: str) -> str:
  where = data_dir or "the default tfds data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  mnist_files = (" For 'mnist', data_dir= a folder of the four MNIST IDX files works too."
                 if tfds_name == "mnist" else "")
  return (f"tfds dataset {tfds_name!r} is not prepared in {where} and {reason}: this run "
          "looks offline. Datasets that work without network: 'digits' (bundled with "
          "scikit-learn) and 'fashion_mnist' (after `apt-get install dataset-fashion-mnist`); "
          "or prepare the tfds dataset on a machine with network and copy its data dir here "
          f"(data_dir=).{mnist_files}")


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # Optional dependency: imported only when needed.
  except ImportError as error:
    raise errors.MissingDependencyError(
        "tfds: datasets need tensorflow-datasets: `pip install tensorflow-datasets` (TensorFlow "
        "itself is not needed to read prepared datasets). Offline, use 'digits' or "
        "'fashion_mnist'.") from error
  return tfds


def _load_tfds(tfds_name: str, data_dir: str | None) -> Dataset:
  tfds = _import_tfds()
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    # tfds' own message lists hundreds of names; keep the first line.
    first_line = str(error).splitlines()[0]
    raise errors.DataError(f"{first_line} See https://www.tensorflow.org/datasets/catalog for "
                           "the names of tfds: datasets.") from error
  if not builder.is_prepared():
    _prepare_tfds(builder, tfds_name, data_dir)
  try:
    sources = builder.as_data_source(split=["train", "test"])
  except NotImplementedError as error:
    raise errors.DataUnavailableError(
        f"tfds dataset {tfds_name!r} in {builder.data_dir} is prepared in a format without "
        "random access (TFRecord); prepare it with file_format='array_record' (as "
        "tfds.data_source does) in another data_dir.") from error
  train_source, test_source = sources
  label_feature = builder.info.features["label"]
  num_classes = label_feature.num_classes
  class_names = tuple(getattr(label_feature, "names", None) or map(str, range(num_classes)))
  return Dataset(
      name=TFDS_PREFIX + tfds_name,
      train=_read_tfds_source(train_source, f"{tfds_name}/train"),
      test=_read_tfds_source(test_source, f"{tfds_name}/test"),
      class_names=class_names)


def _prepare_tfds(builder, tfds_name: str, data_dir: str | None) -> None:
  """Downloads and prepares a tfds dataset, in the random-access format data sources read."""
  if not _network_is_available():
    raise errors.DataUnavailableError(_offline_message(
        tfds_name, data_dir,
        f"{_NETWORK_PROBE_ADDRESS[0]} cannot be reached to download it"))
  try:
    builder.download_and_prepare(file_format="array_record")
  except ModuleNotFoundError as error:
    if error.name != "tensorflow":
      # tensorflow-datasets 4.9.10 needs importlib_resources to prepare datasets but does not
      # declare it (etils >= 1.15 no longer brings it).
      raise errors.DataUnavailableError(
          f"Preparing tfds dataset {tfds_name!r} needs the module {error.name!r}: "
          f"`pip install {error.name}`.") from error
    raise errors.DataUnavailableError(
        f"Preparing tfds dataset {tfds_name!r} needs TensorFlow (its builder reads the "
        "downloaded files with tf.io), though reading it afterwards does not. Prepare it once "
        "where TensorFlow is installed (with file_format='array_record') and pass its data_dir"
        + ("; or pass data_dir= the folder of the four MNIST IDX files to read them directly."
           if tfds_name == "mnist" else ".")) from error
  except OSError as error:  # requests' ConnectionError and socket errors derive from OSError.
    raise errors.DataUnavailableError(_offline_message(
        tfds_name, data_dir, f"downloading it failed ({error})")) from error


def _read_tfds_source(source, description: str) -> Split:
  images, labels = [], []
  for start in range(0, len(source), _TFDS_READ_CHUNK):
    for example in _read_examples(source, range(start, min(start + _TFDS_READ_CHUNK,
                                                           len(source)))):
      images.append(example["image"])
      labels.append(example["label"])
  if not images:
    raise errors.DataError(f"tfds {description} is empty.")
  shapes = {np.shape(image) for image in images}
  if len(shapes) > 1:
    raise errors.DataError(
        f"tfds {description} holds images of {len(shapes)} different sizes (e.g. "
        f"{', '.join(map(str, sorted(shapes)[:3]))}); tfds: datasets are read into memory "
        "as they are and need one image size.",
        "read such datasets (CUB-200-2011, Cars196, ...) from their image files with "
        "config.data.name=folder:<path>, which resizes and crops them (see configs/)")
  images = np.stack(images)
  if images.ndim == 3:  # Grayscale features without a channel axis.
    images = images[..., np.newaxis]
  if images.ndim != 4:
    raise errors.DataError(f"tfds {description}: expected images [H, W, C], got "
                           f"{images.shape[1:]}.")
  if images.dtype == np.uint8:
    images = _scale_uint8(images)
  elif np.issubdtype(images.dtype, np.floating):
    images = images.astype(np.float32)  # Float image features are already in [0, 1].
  else:
    raise errors.DataError(f"tfds {description}: unsupported image dtype {images.dtype}.")
  return Split(images, np.asarray(labels).astype(np.int32))


def _read_examples(source, indices: range) -> list:
  """Reads examples in one batched call, or one by one where batching is missing."""
  try:
    # The batched read fetches records in parallel, far faster than indexing one by one.
    return list(source.__getitems__(list(indices)))
  except (AttributeError, TypeError):
    # Sources without `__getitems__`, and tfds' mock data source, whose `__getitems__` is
    # broken (tfds 4.9.10: "_getitems() missing 1 required positional argument").
    return [source[index] for index in indices]


# --- image folders -----------------------------------------------------------------------------


def _load_folder(name: str, data_dir: str | None, image_options: ImageOptions) -> Dataset:
  """A `folder:<path>` dataset: its items by split (`folders.read_folder`), decoded lazily."""
  path = os.path.expanduser(name[len(FOLDER_PREFIX):])
  if data_dir is not None and not os.path.isabs(path):
    path = os.path.join(data_dir, path)
  index = folders.read_folder(path)
  decoder = images_lib.ImageDecoder(image_options.channels, image_options.workers,
                                    image_options.unreadable)
  transform = image_options.eval_transform()

  def split_of(*names: str, query: str | None = None) -> Split:
    items = [item for split_name in names for item in index.splits.get(split_name, [])]
    number = {class_name: label for label, class_name in enumerate(index.class_names)}
    labels = np.asarray([number[class_name] for _, class_name in items], np.int64)
    files = images_lib.ImageFiles([path for path, _ in items], labels.reshape(-1), decoder,
                                  transform)
    is_query = None
    if query is not None:
      is_query = np.asarray([split_name == query for split_name in names
                             for _ in index.splits.get(split_name, [])], bool)
    return Split(files, labels.astype(np.int32).reshape(-1), is_query)

  present = set(index.splits)
  if present == {"all"}:
    train, test = split_of("all"), split_of()
  elif present == {"train", "test"}:
    train, test = split_of("train"), split_of("test")
  elif present == {"train", "query", "gallery"}:
    train, test = split_of("train"), split_of("query", "gallery", query="query")
  else:
    decoder.close()
    raise errors.DataError(
        f"{name}: its {index.layout} layout has the splits {', '.join(sorted(present))}; a "
        "folder dataset needs train and test, train, query and gallery, or a single set of "
        "class folders (split by config.data.class_split).")
  return Dataset(name=name, train=train, test=test, class_names=index.class_names)


# --- subsampling -------------------------------------------------------------------------------


def _subsample(split: Split, max_examples: int | None, seed: int, argument: str) -> Split:
  """Keeps `max_examples` examples with the class proportions of `split`, in their order."""
  if max_examples is None:
    return split
  if max_examples < 1:
    raise errors.ConfigError(f"{argument} must be >= 1 or None, got {max_examples}.")
  if max_examples >= len(split):
    return split
  rng = np.random.default_rng([seed, len(split), max_examples])
  classes, counts = np.unique(split.labels, return_counts=True)
  # Largest-remainder rounding of the exact shares: each class gets its share within one
  # example, and the quotas add up to max_examples.
  shares = max_examples * counts / len(split)
  quotas = np.floor(shares).astype(np.int64)
  # Random tie-breaking among equal remainders, so that no class is always favoured.
  tie_break = rng.permutation(len(classes))
  by_remainder = np.lexsort((tie_break, -(shares - quotas)))
  quotas[by_remainder[:max_examples - quotas.sum()]] += 1
  keep = np.concatenate([
      rng.permutation(np.flatnonzero(split.labels == label))[:quota]
      for label, quota in zip(classes, quotas)])
  keep = np.sort(keep)  # The original order, as the full split has it.
  return split.take(keep)


def _check_validation_folds(check: checker.Checker) -> None:
  """validation_folds 0 (off) or K >= 2, validation_fold in [0, K), not with a fraction."""
  folds = check["data.validation_folds"]
  if not checker.is_integer(folds) or folds < 0 or folds == 1:
    check.fail("data.validation_folds", "must be 0 (no folds) or an integer >= 2")
  if folds:
    check.integer("data.validation_fold", 0, below=folds)
    if check["data.validation_fraction"]:
      check.fail("data.validation_fraction",
                 f"must be 0 with config.data.validation_folds={folds} (both hold out "
                 "validation)", "set one of them to 0")
  elif check["data.validation_fold"] != 0:
    check.fail("data.validation_fold",
               "must be 0 without config.data.validation_folds (there is no fold to hold out)",
               "set config.data.validation_folds=K too")


def check_config(check: checker.Checker) -> None:
  """The keys of `config.data` every task reads the same way (`data.name` and `data.augment`
  are the task's: `tasks.check_data_config`)."""
  data_dir = check["data.data_dir"]
  if data_dir is not None and (not isinstance(data_dir, str) or not data_dir):
    check.fail("data.data_dir", "must be a folder path or None")
  check.integer("data.max_train", 1, optional=True)
  check.integer("data.max_test", 1, optional=True)
  check.integer("data.max_validation", 1, optional=True)
  check.number("data.validation_fraction", minimum=0.0, below=1.0)
  _check_validation_folds(check)
  try:
    splits.check_class_split(check["data.class_split"])
  except ValueError as error:
    check.fail("data.class_split", str(error))
  check.integer("data.max_shift", 0)
  check.integer("data.image_size", 1)
  if check["data.image_channels"] not in (1, 3) or isinstance(check["data.image_channels"], bool):
    check.fail("data.image_channels", "must be 1 (grey) or 3 (RGB)")
  check.integer("data.eval_resize", check["data.image_size"], optional=True)
  for key, low, high in (("data.crop_scale", 0.0, 1.0), ("data.crop_ratio", 0.0, math.inf)):
    value = check[key]
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(checker.is_number(v) for v in value) and low < value[0] <= value[1] <= high):
      check.fail(key, f"must be (low, high) with {low:g} < low <= high <= {high:g}")
  check.choice("data.unreadable", images_lib.UNREADABLE_POLICIES)
  check.integer("data.decode_workers", 0)
  check.integer("data.prefetch_batches", 1)
