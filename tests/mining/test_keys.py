"""The integer sort keys: packed and unpacked, ordered like (value, tag, column)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.mining.oracle import row_order
from tripletjax.mining import keys

FLOAT32_MAX = np.finfo(np.float32).max


def rows():
  """(name, values, tags): rows with ties, zeros of both signs and the largest float32."""
  rng = np.random.default_rng(0)
  yield "random", rng.random((6, 33), dtype=np.float32), rng.random((6, 33)) < 0.3
  yield "ties", rng.integers(0, 3, (4, 40)).astype(np.float32) / 2, rng.random((4, 40)) < 0.5
  yield "batched", rng.integers(0, 4, (2, 3, 10)).astype(np.float32), rng.random((2, 3, 10)) < 0.4
  signed_zeros = np.array([[0.5, -0.0, 0.0, 0.25, -0.0, 0.0]], np.float32)
  yield "signed_zeros", signed_zeros, np.array([[0, 1, 0, 0, 0, 1]], bool)
  extremes = np.array([[FLOAT32_MAX, 1.0, 0.0, FLOAT32_MAX, np.float32(1e-45), 3e38]], np.float32)
  yield "extremes", extremes, np.array([[1, 0, 0, 0, 1, 0]], bool)


ROWS = {name: (values, tags) for name, values, tags in rows()}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_packed_keys_unpack_to_value_tag_and_column(name):
  values, tags = ROWS[name]
  packed = keys.pack_keys64(values, tags)
  assert packed.dtype == np.uint64 and packed.shape == values.shape
  # -0.0 comes back as +0.0: same value, sign bit cleared.
  np.testing.assert_array_equal(keys.key_values(packed), values)
  assert not np.any(np.signbit(keys.key_values(packed)))
  columns = np.broadcast_to(np.arange(values.shape[-1]), values.shape)
  np.testing.assert_array_equal(keys.key_columns(packed), columns)
  low = keys.low_words(packed)
  np.testing.assert_array_equal(low < 0, tags)
  np.testing.assert_array_equal(low & keys.NOT_SIGN, columns)
  words = keys.key_words(packed)
  np.testing.assert_array_equal(words[..., keys.HIGH], np.abs(values).view(np.uint32))
  # The documented layout, written out.
  expected = (np.abs(values).view(np.uint32).astype(np.uint64) << np.uint64(32)
              | tags.astype(np.uint64) << np.uint64(31) | columns.astype(np.uint64))
  np.testing.assert_array_equal(packed, expected)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_bit_patterns_pack_like_the_floats(name):
  values, tags = ROWS[name]
  np.testing.assert_array_equal(keys.pack_keys64(values.view(np.uint32), tags),
                                keys.pack_keys64(values, tags))


@pytest.mark.parametrize("name", sorted(ROWS))
def test_sorted_keys_are_in_lexsort_order(name):
  values, tags = ROWS[name]
  perm = row_order(np.abs(values), tags)
  packed = np.sort(keys.pack_keys64(values, tags), axis=-1)
  np.testing.assert_array_equal(keys.key_columns(packed), perm)
  sorted_values, low = keys.sort_packed(values.view(np.uint32) & np.uint32(keys.NOT_SIGN),
                                        tags.astype(np.uint8))
  np.testing.assert_array_equal(sorted_values, np.take_along_axis(np.abs(values), perm, -1))
  np.testing.assert_array_equal(low < 0, np.take_along_axis(tags, perm, -1))
  np.testing.assert_array_equal(low & keys.NOT_SIGN, perm)


def test_negative_zero_ties_with_zero():
  values = np.array([[0.5, -0.0, 0.0, -0.0]], np.float32)
  tags = np.array([[False, True, False, False]])
  packed = np.sort(keys.pack_keys64(values, tags), axis=-1)
  # Zeros first whatever their sign, untagged before tagged, then by column.
  np.testing.assert_array_equal(keys.key_columns(packed), [[2, 3, 1, 0]])
  np.testing.assert_array_equal(keys.key_values(packed), [[0.0, 0.0, 0.0, 0.5]])


def test_the_largest_float_sorts_after_every_distance():
  assert keys.FLOAT32_MAX_BITS == np.float32(FLOAT32_MAX).view(np.uint32)
  assert np.uint32(keys.FLOAT32_MAX_BITS).view(np.float32) == FLOAT32_MAX
  values = np.array([[FLOAT32_MAX, 3e38, 1.0, 0.0]], np.float32)
  tags = np.array([[False, True, True, True]])
  packed = np.sort(keys.pack_keys64(values, tags), axis=-1)
  np.testing.assert_array_equal(keys.key_columns(packed), [[3, 2, 1, 0]])
  assert keys.key_values(packed)[0, -1] == FLOAT32_MAX
  # The tag bit is the low word's sign bit; the value bits never reach the key's sign bit.
  assert keys.TAG_BIT == 1 << 31 and keys.NOT_SIGN == (1 << 31) - 1
  assert keys.pack_keys64(values, tags).max() < np.uint64(1) << np.uint64(63)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_rank_keys_sort_like_lexsort_and_unpack(name):
  values, tags = ROWS[name]
  canonical = np.abs(values)  # rank_keys32 takes canonical zeros.
  rank_keys, sorted_values = jax.jit(keys.rank_keys32)(jnp.asarray(canonical), jnp.asarray(tags))
  rank_keys = np.asarray(rank_keys)
  num_columns = values.shape[-1]
  # rank * 2C + tag * C + column, the rank counting the smaller values of the row.
  rank = (canonical[..., None, :] < canonical[..., :, None]).sum(-1)
  columns = np.arange(num_columns)
  np.testing.assert_array_equal(rank_keys, rank * 2 * num_columns + tags * num_columns + columns)
  np.testing.assert_array_equal(np.asarray(sorted_values), np.sort(canonical, axis=-1))
  sorted_tags, perm = keys.unpack_rank_keys32(jnp.sort(jnp.asarray(rank_keys), axis=-1))
  expected = row_order(canonical, tags)
  np.testing.assert_array_equal(np.asarray(perm), expected)
  np.testing.assert_array_equal(np.asarray(sorted_tags), np.take_along_axis(tags, expected, -1))


def test_rank_key_limit_fits_uint32():
  limit = keys.RANK_KEY_MAX_COLUMNS
  assert 2 * limit * limit <= 2**32 < 2 * (limit + 1) * (limit + 1)


def test_rank_keys_refuse_rows_beyond_the_limit():
  def shapes(num_columns):
    return (jax.ShapeDtypeStruct((1, num_columns), jnp.float32),
            jax.ShapeDtypeStruct((1, num_columns), jnp.bool_))

  jax.eval_shape(keys.rank_keys32, *shapes(keys.RANK_KEY_MAX_COLUMNS))
  with pytest.raises(ValueError, match="rank keys need rows of at most 46340 entries, got 46341"):
    jax.eval_shape(keys.rank_keys32, *shapes(keys.RANK_KEY_MAX_COLUMNS + 1))
