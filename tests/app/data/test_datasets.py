"""Datasets: the IDX parser on small generated files, digits, Fashion-MNIST and tfds."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

from tests.app.data.idx_files import (HEIGHT, NUM_TEST, NUM_TRAIN, WIDTH, fake_images,
                                      idx_bytes, write_file, write_idx_dataset)
from tripletjax.app import errors
from tripletjax.app.data import datasets


# --- the IDX parser ----------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_uint8_images(tmp_path, compress):
  images = fake_images(NUM_TRAIN)
  path = write_file(tmp_path / "images", idx_bytes(images), compress)
  parsed = datasets.read_idx(path)
  assert parsed.dtype == np.uint8 and parsed.shape == (NUM_TRAIN, HEIGHT, WIDTH)
  np.testing.assert_array_equal(parsed, images)


@pytest.mark.parametrize("type_code, dtype", [(0x09, np.int8), (0x0B, np.int16),
                                              (0x0C, np.int32), (0x0D, np.float32),
                                              (0x0E, np.float64)])
def test_parse_idx_reads_big_endian_types(type_code, dtype):
  array = (np.arange(24).reshape(2, 3, 4) - 12).astype(dtype) * 3
  parsed = datasets.parse_idx(idx_bytes(array, type_code))
  assert parsed.dtype == np.dtype(dtype) and parsed.dtype.isnative
  np.testing.assert_array_equal(parsed, array)


def test_parse_idx_reads_the_known_header_bytes():
  # Hand-written: magic 0x00000801 (uint8, 1 dimension), 3 items, then 1 2 3.
  content = bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])
  np.testing.assert_array_equal(datasets.parse_idx(content), [1, 2, 3])


def test_read_idx_missing_file_names_the_path(tmp_path):
  path = str(tmp_path / "nope.gz")
  with pytest.raises(FileNotFoundError, match="nope.gz"):
    datasets.read_idx(path)


@pytest.mark.parametrize("content", [
    b"\x01\x00\x08\x01\x00\x00\x00\x01\x07",  # Non-zero first byte.
    b"\x00\x00\x07\x01\x00\x00\x00\x01\x07",  # Unknown type code.
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00",  # A gzip stream in a file without .gz.
], ids=["nonzero", "type_code", "gzip_without_gz"])
def test_parse_idx_rejects_a_bad_magic_number(content):
  with pytest.raises(ValueError, match="bad IDX magic number"):
    datasets.parse_idx(content)


@pytest.mark.parametrize("cut", [2, 6, 4 + 3 * 4 + 10], ids=["magic", "header", "data"])
def test_parse_idx_rejects_a_truncated_file(cut):
  content = idx_bytes(fake_images(NUM_TRAIN))
  with pytest.raises(ValueError, match="truncated IDX file"):
    datasets.parse_idx(content[:cut], "cut.idx")


def test_parse_idx_rejects_trailing_bytes():
  with pytest.raises(ValueError, match="too long"):
    datasets.parse_idx(idx_bytes(fake_images(2)) + b"\x00")


def test_read_idx_rejects_a_truncated_gzip_file(tmp_path):
  path = write_file(tmp_path / "images", idx_bytes(fake_images(NUM_TRAIN)), compress=True)
  with open(path, "rb") as f:
    content = f.read()
  with open(path, "wb") as f:
    f.write(content[:len(content) // 2])
  with pytest.raises(ValueError, match="truncated gzip"):
    datasets.read_idx(path)


# --- files that are not IDX files: one line for the user (errors.DataError) --------------------


def test_labels_file_with_a_wrong_dimension_count_is_not_an_idx_file():
  # A labels file whose header says 3 dimensions: the "shape" runs into the labels, and the
  # size it implies overflowed int64 before (a negative number of bytes).
  content = idx_bytes(np.tile(np.array([9, 2, 1, 1], np.uint8), 2500), num_dims=3)
  with pytest.raises(errors.DataError) as error:
    datasets.parse_idx(content, "t10k-labels-idx1-ubyte")
  message = str(error.value)
  assert message.startswith("t10k-labels-idx1-ubyte: not an IDX file (inconsistent header")
  assert "-" not in message.split("needs")[1].split("bytes")[0]  # No negative size.


@pytest.mark.parametrize("content, why", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "bad IDX magic number 0x01000801"),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "gzip-compressed: its name must end in .gz"),
    (b"PK\x03\x04" + bytes(20), "bad IDX magic number 0x504b0304"),
    (idx_bytes(np.zeros(3, np.uint8)) + b"\x00", "inconsistent header"),
], ids=["magic", "gzip", "zip", "too_long"])
def test_not_an_idx_file(content, why):
  with pytest.raises(errors.DataError) as error:
    datasets.parse_idx(content, "some/file")
  assert str(error.value).startswith("some/file: not an IDX file (") and why in str(error.value)


def test_truncated_idx_file_says_so():
  content = idx_bytes(np.zeros((4, 8, 8), np.uint8))
  with pytest.raises(errors.DataError, match="f: truncated IDX file, 100 bytes where shape "
                     r"\(4, 8, 8\) of uint8 needs 272"):
    datasets.parse_idx(content[:100], "f")


def test_unreadable_idx_path_is_a_data_error(tmp_path):
  with pytest.raises(errors.DataError, match="cannot read it"):
    datasets.read_idx(str(tmp_path))  # A folder.


def test_missing_data_is_a_user_error_and_still_a_file_not_found_error(tmp_path):
  with pytest.raises(errors.DataNotFoundError) as error:
    datasets.load_dataset("mnist", str(tmp_path / "absent"))
  assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, errors.UserError)
  with pytest.raises(errors.DataError, match="Unknown dataset 'imagenet'"):
    datasets.load_dataset("imagenet")


# --- IDX datasets (mnist, fashion_mnist with data_dir) -----------------------------------------


def test_mnist_from_idx_files(tmp_path):
  # Two files compressed, two not: both names are accepted.
  arrays = write_idx_dataset(tmp_path, compress=(True, False, False, True))
  dataset = datasets.load_dataset("mnist", str(tmp_path))
  assert dataset.name == "mnist"
  assert dataset.class_names == tuple("0123456789")
  assert dataset.train.images.shape == (NUM_TRAIN, HEIGHT, WIDTH, 1)
  assert dataset.test.images.shape == (NUM_TEST, HEIGHT, WIDTH, 1)
  assert dataset.train.images.dtype == np.float32 and dataset.train.labels.dtype == np.int32
  np.testing.assert_allclose(dataset.train.images[..., 0],
                             arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6)
  assert dataset.train.images.max() == 1.0 and dataset.train.images.min() >= 0.0
  np.testing.assert_array_equal(dataset.test.labels, arrays["t10k-labels-idx1-ubyte"])
  assert dataset.image_shape == (HEIGHT, WIDTH, 1)


def test_fashion_mnist_from_data_dir_has_fashion_class_names(tmp_path):
  write_idx_dataset(tmp_path)
  dataset = datasets.load_dataset("fashion_mnist", str(tmp_path))
  assert dataset.class_names[0] == "T-shirt/top" and dataset.class_names[9] == "Ankle boot"
  assert dataset.num_classes == 10


@pytest.mark.parametrize("name, advice", [
    ("fashion_mnist", "apt-get install dataset-fashion-mnist"), ("mnist", "data_dir=None")])
def test_missing_idx_file_says_which_and_how_to_get_it(tmp_path, name, advice):
  write_idx_dataset(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte")
  with pytest.raises(FileNotFoundError) as error:
    datasets.load_dataset(name, str(tmp_path))
  assert str(tmp_path / "t10k-labels-idx1-ubyte") in str(error.value)
  assert advice in str(error.value)


def test_missing_data_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    datasets.load_dataset("mnist", str(tmp_path / "absent"))


def test_image_label_count_mismatch(tmp_path):
  write_idx_dataset(tmp_path)
  write_file(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(NUM_TRAIN + 1, np.uint8)),
             compress=True)
  with pytest.raises(ValueError, match=f"{NUM_TRAIN} images .* but {NUM_TRAIN + 1} labels"):
    datasets.load_dataset("mnist", str(tmp_path))


def test_labels_out_of_range(tmp_path):
  write_idx_dataset(tmp_path)
  write_file(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.full(NUM_TRAIN, 10, np.uint8)),
             compress=True)
  with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
    datasets.load_dataset("mnist", str(tmp_path))


def test_images_with_the_wrong_rank(tmp_path):
  write_idx_dataset(tmp_path)
  write_file(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((NUM_TRAIN, 20), np.uint8)),
             compress=True)
  with pytest.raises(ValueError, match=r"expected uint8 images \[N, H, W\]"):
    datasets.load_dataset("mnist", str(tmp_path))


# --- digits ------------------------------------------------------------------------------------


def test_digits_shapes_ranges_and_split():
  dataset = datasets.load_dataset("digits")
  assert dataset.name == "digits"
  assert dataset.train.images.shape == (1347, 8, 8, 1)
  assert dataset.test.images.shape == (450, 8, 8, 1)
  for split in (dataset.train, dataset.test):
    assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
    assert split.images.min() == 0.0 and split.images.max() == 1.0
    assert split.num_classes == 10
  assert dataset.class_names == tuple(str(digit) for digit in range(10))
  # Stratified: every class keeps its share (each has 174..183 examples) within one example.
  total = datasets.num_examples_per_class(np.concatenate([dataset.train.labels,
                                                          dataset.test.labels]))
  assert total.sum() == 1797
  test_counts = datasets.num_examples_per_class(dataset.test.labels)
  assert np.all(np.abs(test_counts - total * 0.25) <= 1)


def test_digits_split_is_deterministic_and_depends_on_the_seed():
  first = datasets.load_dataset("digits", seed=3)
  again = datasets.load_dataset("digits", seed=3)
  other = datasets.load_dataset("digits", seed=4)
  np.testing.assert_array_equal(first.train.images, again.train.images)
  np.testing.assert_array_equal(first.test.labels, again.test.labels)
  assert not np.array_equal(first.test.images, other.test.images)


def test_max_train_and_max_test_subsample_stratified_and_deterministically():
  small = datasets.load_dataset("digits", max_train=100, max_test=30, seed=1)
  full = datasets.load_dataset("digits", seed=1)
  assert len(small.train) == 100 and len(small.test) == 30
  for part, whole in ((small.train, full.train), (small.test, full.test)):
    exact_shares = (datasets.num_examples_per_class(whole.labels, 10) * len(part) / len(whole))
    counts = datasets.num_examples_per_class(part.labels, 10)
    assert np.all(np.abs(counts - exact_shares) < 1), (counts, exact_shares)
  again = datasets.load_dataset("digits", max_train=100, max_test=30, seed=1)
  np.testing.assert_array_equal(small.train.images, again.train.images)
  # The subsample is a subset of the full split.
  flat_full = full.train.images.reshape(len(full.train), -1)
  for image in small.train.images.reshape(100, -1)[:5]:
    assert np.any(np.all(flat_full == image, axis=1))
  # Larger than the split: everything.
  assert len(datasets.load_dataset("digits", max_test=10_000).test) == 450


def test_max_train_must_be_positive():
  with pytest.raises(ValueError, match="max_train must be >= 1"):
    datasets.load_dataset("digits", max_train=0)


def test_unknown_name_lists_the_valid_names():
  for name in ("cifar", "tfds:", "MNIST"):
    with pytest.raises(ValueError, match="digits.*fashion_mnist.*mnist.*tfds:<name>"):
      datasets.load_dataset(name)


def test_num_examples_per_class():
  np.testing.assert_array_equal(datasets.num_examples_per_class(np.array([0, 2, 2, 2])),
                                [1, 0, 3])
  np.testing.assert_array_equal(datasets.num_examples_per_class(np.array([1]), num_classes=3),
                                [0, 1, 0])
  with pytest.raises(ValueError, match=">= 0"):
    datasets.num_examples_per_class(np.array([-1, 0]))


def test_split_checks_its_arrays():
  images = np.zeros((3, 2, 2, 1), np.float32)
  with pytest.raises(ValueError, match="3 images but 2 labels"):
    datasets.Split(images, np.zeros(2, np.int32))
  with pytest.raises(ValueError, match="float32"):
    datasets.Split(images.astype(np.float64), np.zeros(3, np.int32))
  with pytest.raises(ValueError, match="int32"):
    datasets.Split(images, np.zeros(3, np.int64))


# --- Fashion-MNIST from Debian's package -------------------------------------------------------


def test_fashion_mnist_without_the_debian_package_says_how_to_install_it(tmp_path, monkeypatch):
  monkeypatch.setattr(datasets, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "absent"))
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    datasets.load_dataset("fashion_mnist")


def test_fashion_mnist_auto_detects_the_debian_package(fashion_mnist_dir):
  del fashion_mnist_dir  # Found by load_dataset itself.
  dataset = datasets.load_dataset("fashion_mnist")
  assert dataset.train.images.shape == (60000, 28, 28, 1)
  assert dataset.test.images.shape == (10000, 28, 28, 1)
  assert dataset.train.images.dtype == np.float32
  assert 0.0 <= dataset.train.images.min() and dataset.train.images.max() == 1.0
  np.testing.assert_array_equal(datasets.num_examples_per_class(dataset.train.labels),
                                np.full(10, 6000))
  np.testing.assert_array_equal(datasets.num_examples_per_class(dataset.test.labels),
                                np.full(10, 1000))


# --- tensorflow-datasets -----------------------------------------------------------------------


def test_tfds_names_the_pip_package_when_it_is_missing(monkeypatch):
  # A None entry in sys.modules makes `import tensorflow_datasets` raise ImportError.
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
    datasets.load_dataset("tfds:mnist")


@pytest.fixture
def mock_tfds(tfds, monkeypatch):
  """tfds' random mock data, generated from the builders' code: no files, TF or network."""
  # Mock datasets never count as prepared; the mocked download must not be stopped offline.
  monkeypatch.setattr(datasets, "_network_is_available", lambda: True)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    yield tfds


def test_tfds_mnist_through_mock_data(mock_tfds):
  dataset = datasets.load_dataset("tfds:mnist")
  if importlib.util.find_spec("tensorflow") is None:
    assert "tensorflow" not in sys.modules  # Proof that data sources need no TensorFlow.
  assert dataset.name == "tfds:mnist"
  assert dataset.class_names == tuple(str(digit) for digit in range(10))
  for split in (dataset.train, dataset.test):
    assert split.images.shape == (6, 28, 28, 1) and split.images.dtype == np.float32
    assert 0.0 <= split.images.min() and split.images.max() <= 1.0
    assert split.labels.dtype == np.int32
    assert np.all((split.labels >= 0) & (split.labels < 10))


def test_mnist_without_data_dir_reads_tfds(mock_tfds):
  dataset = datasets.load_dataset("mnist", max_train=4)
  assert dataset.name == "mnist" and len(dataset.train) == 4
  assert dataset.train.images.shape[1:] == (28, 28, 1)


def test_tfds_color_images_keep_their_channels(mock_tfds):
  dataset = datasets.load_dataset("tfds:cifar10")
  assert dataset.train.images.shape == (6, 32, 32, 3)
  # The mock knows 10 classes but not their names (they come with CIFAR's files).
  assert len(dataset.class_names) == 10


def test_tfds_unknown_dataset(tfds):
  with pytest.raises(ValueError, match="not_a_dataset not found"):
    datasets.load_dataset("tfds:not_a_dataset")


def test_tfds_offline_says_what_works_without_network(tfds, tmp_path, monkeypatch):
  monkeypatch.setattr(datasets, "_network_is_available", lambda: False)
  with pytest.raises(RuntimeError) as error:
    datasets.load_dataset("tfds:mnist", str(tmp_path))
  message = str(error.value)
  assert "offline" in message and str(tmp_path) in message
  assert "'digits'" in message and "apt-get install dataset-fashion-mnist" in message
  assert "four MNIST IDX files" in message  # Another offline way, for mnist only.


def test_tfds_failed_download_says_what_works_without_network(tfds, tmp_path, monkeypatch):
  import requests  # A dependency of tensorflow-datasets.

  def download_fails(self, **kwargs):
    raise requests.ConnectionError("Failed to resolve 'storage.googleapis.com'")

  monkeypatch.setattr(datasets, "_network_is_available", lambda: True)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_fails)
  with pytest.raises(RuntimeError, match="offline.*'digits'"):
    datasets.load_dataset("tfds:mnist", str(tmp_path))


def test_tfds_preparing_without_tensorflow_says_so(tfds, tmp_path, monkeypatch):
  def prepare_needs_tensorflow(self, **kwargs):
    raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

  monkeypatch.setattr(datasets, "_network_is_available", lambda: True)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", prepare_needs_tensorflow)
  with pytest.raises(RuntimeError, match="needs TensorFlow.*four MNIST IDX files"):
    datasets.load_dataset("tfds:mnist", str(tmp_path))


def test_tfds_preparing_without_a_module_names_it(tfds, tmp_path, monkeypatch):
  def prepare_needs_a_module(self, **kwargs):
    raise ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources")

  monkeypatch.setattr(datasets, "_network_is_available", lambda: True)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", prepare_needs_a_module)
  with pytest.raises(RuntimeError, match="pip install importlib_resources"):
    datasets.load_dataset("tfds:mnist", str(tmp_path))
