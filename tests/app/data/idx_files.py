"""Small IDX files (MNIST's format) written by the tests, independently of the parser."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

NUM_TRAIN, NUM_TEST, HEIGHT, WIDTH = 7, 3, 5, 4


def idx_bytes(array: np.ndarray, type_code: int = 0x08, num_dims: int | None = None) -> bytes:
  """The bytes of an IDX file holding `array` (the format written out, independently).

  `num_dims` overrides the number of dimensions in the header (a broken file).
  """
  big_endian = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
  header = struct.pack(">HBB", 0, type_code, array.ndim if num_dims is None else num_dims)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  return header + array.astype(big_endian[type_code]).tobytes()


def write_file(path, content: bytes, compress: bool) -> str:
  path = str(path) + (".gz" if compress else "")
  with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
    f.write(content)
  return path


def fake_images(count: int, offset: int = 0) -> np.ndarray:
  """Distinct uint8 images [count, 5, 4] covering 0..255."""
  values = (np.arange(count * HEIGHT * WIDTH) * 7 + offset) % 256
  values[0] = 255  # Make sure the maximum is there: it must scale to exactly 1.
  return values.reshape(count, HEIGHT, WIDTH).astype(np.uint8)


def write_idx_dataset(folder, compress=(True, True, False, False), num_train=NUM_TRAIN,
                      num_test=NUM_TEST) -> dict[str, np.ndarray]:
  """Writes the four IDX files (gzip-compressed or not, per file) into `folder`."""
  arrays = {
      "train-images-idx3-ubyte": fake_images(num_train),
      "train-labels-idx1-ubyte": np.arange(num_train, dtype=np.uint8) % 10,
      "t10k-images-idx3-ubyte": fake_images(num_test, offset=3),
      "t10k-labels-idx1-ubyte": (np.arange(num_test, dtype=np.uint8) + 5) % 10,
  }
  for (name, array), gz in zip(arrays.items(), compress):
    write_file(os.path.join(folder, name), idx_bytes(array), gz)
  return arrays
