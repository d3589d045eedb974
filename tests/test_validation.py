"""The losses' input checks (`tripletjax.validation`): bad labels and embeddings are named.

More input errors of each loss: `tests/test_losses.py`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tripletjax import losses


@pytest.mark.parametrize("labels", [
    np.array([2**40, 2**40 + 1, 1, 1]),  # int64 ids that int32 would wrap.
    [2**40, 1, 1, 2],                    # A Python list: NumPy makes it int64.
    np.array([2**33, 0, 0, 1], np.uint64),
    np.array([2**31, 1, 1, 2], np.uint32),
    np.array([-2**31 - 1, 1, 1, 2]),
], ids=["int64", "list", "uint64", "uint32", "negative"])
@pytest.mark.parametrize("name", sorted(losses.MINED_LOSSES))
def test_labels_beyond_int32_name_the_range(name, labels):
  embeddings = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  with pytest.raises(ValueError, match=r"labels must fit in int32 \[-2147483648, 2147483647\]"):
    losses.MINED_LOSSES[name](labels, embeddings)


def test_int64_labels_within_int32_are_fine():
  embeddings = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  wide = losses.triplet_semihard_loss(np.array([7, 7, 2**31 - 1, 2**31 - 1]), embeddings)
  narrow = losses.triplet_semihard_loss(np.array([0, 0, 1, 1], np.int32), embeddings)
  assert float(wide) == float(narrow)


@pytest.mark.parametrize("labels, embeddings, error, match", [
    (np.zeros((4, 1), np.int32), np.zeros((4, 3), np.float32), ValueError, r"labels.*\[B\]"),
    (np.zeros(4, np.int32), np.zeros(12, np.float32), ValueError, r"\[B, D\]"),
    (np.zeros(3, np.int32), np.zeros((4, 3), np.float32), ValueError, "batch size"),
    (np.zeros(4, np.float32), np.zeros((4, 3), np.float32), TypeError, "integer class ids"),
    (np.zeros(4, np.int32), np.zeros((4, 3), np.int32), TypeError, "floating-point"),
], ids=["labels_rank", "embeddings_rank", "batch", "float_labels", "int_embeddings"])
@pytest.mark.parametrize("name", sorted(losses.MINED_LOSSES))
def test_wrong_shapes_and_dtypes_are_named(name, labels, embeddings, error, match):
  with pytest.raises(error, match=match):
    losses.MINED_LOSSES[name](labels, jnp.asarray(embeddings))


@pytest.mark.parametrize("labels", [
    np.array(["a", "b", "a", "b"]),                # Class names.
    ["cat", "dog", "cat", "dog"],                  # A Python list of them.
    np.array([0.0, 1.0, 0.0, 1.0], np.float32),    # Floats, even whole ones.
    [0.5, 1.0, 0.5, 1.0],
    np.array([True, False, True, False]),          # Booleans.
    [True, False, True, False],
    np.array([0, 1, 0, None], dtype=object),       # Objects that are not all integers.
], ids=["strings", "string_list", "floats", "float_list", "bools", "bool_list", "objects"])
@pytest.mark.parametrize("name", sorted(losses.MINED_LOSSES))
def test_labels_that_are_not_integers_are_a_type_error_naming_labels(name, labels):
  embeddings = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  with pytest.raises(TypeError, match=r"^labels must be integer class ids"):
    losses.MINED_LOSSES[name](labels, embeddings)


def test_labels_of_any_integer_type_are_fine():
  embeddings = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  expected = float(losses.supcon_loss(np.array([0, 0, 1, 1], np.int32), embeddings))
  for labels in ([0, 0, 1, 1], np.array([0, 0, 1, 1], np.uint8), np.array([5, 5, 7, 7]),
                 jnp.array([0, 0, 1, 1], jnp.int16), np.array([0, 0, 1, 1], dtype=object)):
    assert float(losses.supcon_loss(labels, embeddings)) == expected
