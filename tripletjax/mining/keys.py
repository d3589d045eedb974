"""Integer sort keys for rows of non-negative float32 distances, in the one layout every miner
uses: each row ordered by (value, tag, column).

A non-negative float32 orders exactly like its bit pattern read as an unsigned integer, so a
distance, a one-bit tag and a column index pack into one integer whose order is the order of
the triple:

  * NumPy, on the host (`pack_keys64`): uint64 `value bits << 32 | tag << 31 | column`.
    The sorted keys hold the sorted values, tags and the permutation at once.
  * XLA (`rank_keys32`): without 64-bit integers the triple does not fit one key, but the rank
    of a value within its row does: uint32 `rank * 2C + tag * C + column` for rows of C
    entries, C <= `RANK_KEY_MAX_COLUMNS`. Equal values get equal ranks.
  * XLA, one stable sort (`packed_keys32`): uint32 `value bits << 1 | tag` (a distance's sign
    bit is 0, so the shift loses nothing), sorted stably with the column as a second operand
    that is carried, not compared: equal keys keep their column order.

-0.0 has its sign bit set and would sort after every positive number: the packers clear it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Word order of a uint64 viewed as two uint32.
HIGH, LOW = (1, 0) if np.little_endian else (0, 1)
FLOAT32_MAX_BITS = 0x7F7FFFFF  # Bits of the largest finite float32: sorts after any distance.
NOT_SIGN = 0x7FFFFFFF          # Clears the sign bit (-0.0 -> 0.0); in a low word, the column.
TAG_BIT = 0x80000000           # The tag in the low word of a key.
# The rank key rank * 2C + tag * C + column is below 2C^2, which must fit in a uint32.
RANK_KEY_MAX_COLUMNS = 46340


# ---------------------------------------------------------------------------------- NumPy


def pack_keys64(values: np.ndarray, tags: np.ndarray) -> np.ndarray:
  """[..., C] uint64 keys `value bits << 32 | tag << 31 | column`, unsorted.

  Args:
    values: [..., C] float32 >= 0 (-0.0 allowed), or their uint32 bit patterns.
    tags: [..., C] bool (or 0/1 integers).
  """
  values = np.asarray(values)
  bits = values if values.dtype == np.uint32 else np.ascontiguousarray(
      values, np.float32).view(np.uint32)
  keys = np.empty(bits.shape, np.uint64)
  words = key_words(keys)
  np.bitwise_and(bits, NOT_SIGN, out=words[..., HIGH])
  np.left_shift(np.asarray(tags), 31, out=words[..., LOW], dtype=np.uint32, casting="unsafe")
  words[..., LOW] |= np.arange(bits.shape[-1], dtype=np.uint32)
  return keys


def key_words(keys: np.ndarray) -> np.ndarray:
  """[..., C, 2] uint32 view of the keys: `[..., HIGH]` the value bits, `[..., LOW]` the rest."""
  return keys.view(np.uint32).reshape(*keys.shape, 2)


def low_words(keys: np.ndarray) -> np.ndarray:
  """[..., C] int32 view of the keys' low words: negative where tagged, else the column."""
  return keys.view(np.int32).reshape(*keys.shape, 2)[..., LOW]


def key_values(keys: np.ndarray) -> np.ndarray:
  """float32 values of uint64 keys (any shape)."""
  return (keys >> np.uint64(32)).astype(np.uint32).view(np.float32)


def key_columns(keys: np.ndarray) -> np.ndarray:
  """int64 columns of uint64 keys (any shape)."""
  return (keys & np.uint64(NOT_SIGN)).astype(np.int64)


def sort_packed(bits: np.ndarray, tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Sorts each row by (value, tag, column) on the host.

  Args:
    bits: [..., C] uint32 bit patterns of float32 values >= 0.
    tags: [..., C] bool or uint8.

  Returns:
    (sorted float32 values [..., C], int32 low words [..., C]: negative where tagged, the
    original column in the other 31 bits).
  """
  keys = pack_keys64(bits, tags)
  keys.sort(axis=-1)
  words = key_words(keys)
  return (np.ascontiguousarray(words[..., HIGH]).view(np.float32),
          np.ascontiguousarray(words[..., LOW]).view(np.int32))


# ------------------------------------------------------------------------------------ XLA


def value_bits(values: jax.Array) -> jax.Array:
  """uint32 bit patterns of float32 values >= 0 (canonical zero), ordered like the values."""
  return jax.lax.bitcast_convert_type(values, jnp.uint32)


def rank_keys32(values: jax.Array, tags: jax.Array) -> tuple[jax.Array, jax.Array]:
  """uint32 keys `rank * 2C + tag * C + column` of rows of C <= RANK_KEY_MAX_COLUMNS entries.

  The rank of a value is the number of smaller values in its row, from one sort of the value
  bits and a binary search of each value among them (O(C log C) per row, never a [C, C]
  comparison).

  Args:
    values: [..., C] float32 >= 0, canonical zeros.
    tags: [..., C] bool.

  Returns:
    (keys [..., C] uint32, the row's values sorted [..., C] float32).
  """
  num_columns = values.shape[-1]
  if num_columns > RANK_KEY_MAX_COLUMNS:
    raise ValueError(f"rank keys need rows of at most {RANK_KEY_MAX_COLUMNS} entries, got "
                     f"{num_columns}.")
  bits = value_bits(values)
  sorted_bits = jax.lax.sort(bits, dimension=values.ndim - 1)
  rows_sorted, rows = (x.reshape(-1, num_columns) for x in (sorted_bits, bits))
  rank = jax.vmap(functools.partial(jnp.searchsorted, side="left", method="scan"))(
      rows_sorted, rows).reshape(values.shape).astype(jnp.uint32)
  column = jax.lax.broadcasted_iota(jnp.uint32, values.shape, values.ndim - 1)
  keys = (rank * jnp.uint32(2 * num_columns) + tags.astype(jnp.uint32) * jnp.uint32(num_columns)
          + column)
  return keys, jax.lax.bitcast_convert_type(sorted_bits, jnp.float32)


def unpack_rank_keys32(sorted_keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(tags [..., C] bool, columns [..., C] int32) of sorted rank keys."""
  num_columns = sorted_keys.shape[-1]
  return ((sorted_keys // num_columns) % 2 == 1,
          (sorted_keys % num_columns).astype(jnp.int32))


def packed_keys32(values: jax.Array, tags: jax.Array) -> jax.Array:
  """uint32 keys `value bits << 1 | tag`, ordered like (value, tag), for rows of any length.

  Args:
    values: [..., C] float32 >= 0, canonical zeros (inf allowed).
    tags: [..., C] bool.
  """
  return (value_bits(values) << 1) | tags.astype(jnp.uint32)


def unpack_packed_keys32(sorted_keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(values [..., C] float32, tags [..., C] bool) of packed keys."""
  return (jax.lax.bitcast_convert_type(sorted_keys >> 1, jnp.float32),
          (sorted_keys & 1).astype(bool))
