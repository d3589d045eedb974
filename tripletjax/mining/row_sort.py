"""Row-wise sort of non-negative distances by (value, tag, column), by any `SortMethod`.

The batch-all miner (and the semi-hard miner inside XLA) sort every row of a [C, B] block of
the distance matrix once, ordered by (value, tag, column) so that ties resolve identically
whatever the backend. They need the sorted values and tags, and the permutation to send
gradients back to the original columns. The resolved backends (see `mining.backend`):

  * "numpy": one uint64 key per entry sorted by NumPy on the host, through a callback;
  * "xla:rank_key": one uint32 rank key per entry, two single-operand `lax.sort`s;
  * "xla:three_keys": one `lax.sort` of three operands (value, tag, column);
  * "xla:packed_key": one stable `lax.sort` of two operands, the uint32 key (value, tag) and the
    column, compared by the key alone (the form XLA:GPU can hand to CUB's radix sort).

Every backend gives identical results (tests check it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tripletjax.mining import backend
from tripletjax.mining import keys
from tripletjax.mining import shards


class SortedRows(NamedTuple):
  """Each row sorted by (value, tag, column)."""
  values: jax.Array  # [..., C] float32, ascending along the last axis.
  tags: jax.Array    # [..., C] bool, the tags in sorted order.
  perm: jax.Array    # [..., C] int32, perm[..., r] = original column at sorted position r.


def canonical_distances(values: jax.Array) -> jax.Array:
  """float32 values with -0.0 (and anything not > 0) made +0.0, without a gradient."""
  values = jax.lax.stop_gradient(values).astype(jnp.float32)
  return jnp.where(values > 0, values, 0.0)


def _sort_on_host(values: jax.Array, tags: jax.Array) -> SortedRows:
  out_shapes = (jax.ShapeDtypeStruct(values.shape, jnp.float32),
                jax.ShapeDtypeStruct(values.shape, jnp.int32))
  sorted_values, low_words = jax.pure_callback(
      keys.sort_packed, out_shapes, keys.value_bits(values), tags.astype(jnp.uint8),
      vmap_method="expand_dims")
  # Inside shard_map: this device's values.
  sorted_values, low_words = shards.vary_like((sorted_values, low_words), values)
  return SortedRows(sorted_values, low_words < 0, low_words & keys.NOT_SIGN)


def _sort_by_three_keys(values: jax.Array, tags: jax.Array) -> SortedRows:
  column = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
  sorted_values, sorted_tags, perm = jax.lax.sort(
      (values, tags.astype(jnp.int32), column), dimension=values.ndim - 1, num_keys=3)
  return SortedRows(sorted_values, sorted_tags.astype(bool), perm)


def _sort_by_rank_key(values: jax.Array, tags: jax.Array) -> SortedRows:
  rank_keys, sorted_values = keys.rank_keys32(values, tags)
  sorted_tags, perm = keys.unpack_rank_keys32(jax.lax.sort(rank_keys, dimension=values.ndim - 1))
  return SortedRows(sorted_values, sorted_tags, perm)


def _sort_by_packed_key(values: jax.Array, tags: jax.Array) -> SortedRows:
  column = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
  # Stable, so equal keys (equal value and tag) stay in column order.
  sorted_keys, perm = jax.lax.sort((keys.packed_keys32(values, tags), column),
                                   dimension=values.ndim - 1, is_stable=True, num_keys=1)
  sorted_values, sorted_tags = keys.unpack_packed_keys32(sorted_keys)
  return SortedRows(sorted_values, sorted_tags, perm)


_SORTS = {
    backend.NUMPY: _sort_on_host,
    backend.RANK_KEY: _sort_by_rank_key,
    backend.THREE_KEYS: _sort_by_three_keys,
    backend.PACKED_KEY: _sort_by_packed_key,
}


def sort_rows(values: jax.Array, tags: jax.Array, mining_backend: str) -> SortedRows:
  """Sorts each row of `values` by (value, tag, column). Not differentiable.

  Args:
    values: [..., C] float values >= 0 (distances).
    tags: [..., C] bool; among equal values, entries tagged False come first.
    mining_backend: a resolved backend (`backend.resolve_backend(...)`).

  Returns:
    `SortedRows(values, tags, perm)`.
  """
  backend.check_resolved(mining_backend)
  if values.shape[-1] >= 2**31:
    raise ValueError(f"Rows of {values.shape[-1]} entries are too long to sort.")
  return _SORTS[mining_backend](canonical_distances(values), tags.astype(bool))


def unsort_rows(sorted_values: jax.Array, perm: jax.Array) -> jax.Array:
  """Inverse of sorting: out[..., perm[..., r]] = sorted_values[..., r]."""
  return jnp.put_along_axis(jnp.zeros_like(sorted_values), perm, sorted_values, axis=-1,
                            inplace=False)
