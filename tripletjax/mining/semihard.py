"""Semi-hard mining (FaceNet; TensorFlow Addons' `triplet_semihard_loss`) in O(C B) memory.

Each distance row is sorted once with negatives before positives on ties; in sorted order "the
nearest negative strictly farther than this positive" is "the first negative to the right",
found for all pairs at once with a reverse cumulative minimum. The sums of the hinge have a
custom gradient computed in sorted order as well (a running count of active pairs per
negative) and sent back to the original columns with one scatter, which is cheaper than
differentiating through the gathers.

Two implementations give the same results: `mining.host` in NumPy (backend "numpy", through a
callback) and dense [C, B] passes in XLA (the "xla:*" backends); `mining.backend` decides.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tripletjax.mining import backend
from tripletjax.mining import host
from tripletjax.mining import masks
from tripletjax.mining import row_sort
from tripletjax.mining import shards


class SemiHardSums(NamedTuple):
  """Sums over the ordered positive pairs of a block, for the semi-hard loss and its stats."""
  hinge_sum: jax.Array          # sum of max(m + D_ij - D_i,neg, 0); differentiable.
  num_positive_pairs: jax.Array  # int32
  num_active: jax.Array          # int32: pairs with a positive hinge.
  num_fallback: jax.Array        # int32: pairs that used the farthest negative.
  positive_distance_sum: jax.Array
  negative_distance_sum: jax.Array


class _SemiHardChoice(NamedTuple):
  """Semi-hard choice in sorted order, for every sorted position of every row."""
  position: jax.Array       # [C, B] sorted position of the chosen negative.
  is_semihard: jax.Array    # [C, B] a negative strictly farther than this entry exists.
  last_negative: jax.Array  # [C, 1] sorted position of the farthest negative, -1 if none.


def _semihard_choice(rows: row_sort.SortedRows) -> _SemiHardChoice:
  num_columns = rows.values.shape[-1]
  is_negative = ~rows.tags
  # Positions as float32 (exact below 2^24): XLA:CPU's cumulative min is faster on floats.
  position = masks.positions(rows.values.shape).astype(jnp.float32)
  next_negative = jax.lax.cummin(
      jnp.where(is_negative, position, num_columns), axis=1, reverse=True)
  # Strictly to the right: shift left by one position.
  next_negative = jnp.concatenate(
      [next_negative[:, 1:], jnp.full_like(next_negative[:, :1], num_columns)], axis=1)
  last_negative = jnp.max(jnp.where(is_negative, position, -1.0), axis=1, keepdims=True)
  is_semihard = next_negative < num_columns
  chosen = jnp.where(is_semihard, next_negative, jnp.maximum(last_negative, 0.0))
  return _SemiHardChoice(chosen.astype(jnp.int32), is_semihard,
                         last_negative.astype(jnp.int32))


def _semihard_in_xla(distances, anchor_index, labels, margin, mining_backend, with_gradient):
  """`SemiHardSums` and (optionally) d hinge_sum / d distances, with dense [C, B] XLA passes."""
  # On equal distances negatives (tag False) come first, so every negative to the right of a
  # positive is strictly farther from the anchor than the positive: TFA's strict ">".
  rows = row_sort.sort_rows(distances, masks.block_same_class(anchor_index, labels), mining_backend)
  choice = _semihard_choice(rows)
  is_positive = masks.sorted_positive_mask(rows.tags, rows.perm, anchor_index)
  has_negative = choice.last_negative >= 0
  negative_distance = jnp.where(
      has_negative, jnp.take_along_axis(rows.values, choice.position, axis=1), 0.0)
  hinge = jnp.maximum(margin + rows.values - negative_distance, 0.0)
  is_active = is_positive & (hinge > 0)
  sums = SemiHardSums(
      hinge_sum=jnp.sum(jnp.where(is_positive, hinge, 0.0)),
      num_positive_pairs=jnp.sum(is_positive, dtype=jnp.int32),
      num_active=jnp.sum(is_active, dtype=jnp.int32),
      num_fallback=jnp.sum(is_positive & has_negative & ~choice.is_semihard, dtype=jnp.int32),
      positive_distance_sum=jnp.sum(jnp.where(is_positive, rows.values, 0.0)),
      negative_distance_sum=jnp.sum(jnp.where(is_positive, negative_distance, 0.0)),
  )
  if not with_gradient:
    return sums, None
  is_negative = ~rows.tags
  position = masks.positions(rows.perm.shape)
  # Each active pair adds +1 to its positive and -1 to its chosen negative. The pairs choosing
  # the negative at sorted position q are the positives strictly between the previous negative
  # and q, so a running count of active pairs, read at consecutive negatives, gives every
  # negative's total at once. (float32 counts are exact below 2^24 and faster on XLA:CPU.)
  active_count = jnp.cumsum(is_active.astype(jnp.float32), axis=1)
  # active_count never decreases, so a running max of its values at negatives is its value at
  # the latest negative so far.
  count_at_negative = jax.lax.cummax(jnp.where(is_negative, active_count, 0.0), axis=1)
  count_before = jnp.concatenate(
      [jnp.zeros_like(count_at_negative[:, :1]), count_at_negative[:, :-1]], axis=1)
  chosen_count = jnp.where(is_negative, active_count - count_before, 0.0)
  # Active pairs with no farther negative all fall back to the farthest one.
  fallback_count = active_count[:, -1:] - count_at_negative[:, -1:]
  chosen_count += jnp.where(position == choice.last_negative, fallback_count, 0.0)
  gradient_sorted = is_active.astype(jnp.float32) - chosen_count
  return sums, row_sort.unsort_rows(gradient_sorted, rows.perm)


def _semihard_on_host(distances, anchor_index, labels, margin, with_gradient):
  """The same as `_semihard_in_xla`, computed by `host.semihard_sums` in NumPy."""
  num_rows, num_columns = distances.shape
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)
  shapes = host.SemiHardTotals(
      scalar(jnp.float32), scalar(jnp.int32), scalar(jnp.int32), scalar(jnp.int32),
      scalar(jnp.float32), scalar(jnp.float32),
      jax.ShapeDtypeStruct((num_rows, num_columns), jnp.float32) if with_gradient else None)
  totals = jax.pure_callback(
      functools.partial(host.semihard_sums, with_gradient=with_gradient), shapes,
      row_sort.canonical_distances(distances), masks.block_same_class(anchor_index, labels),
      anchor_index, margin, vmap_method="sequential")
  totals = shards.vary_like(totals, distances)  # Inside shard_map: this device's values.
  return SemiHardSums(*totals[:-1]), totals.gradient


def _semihard_sums_and_gradient(distances, anchor_index, labels, margin, mining_backend,
                                with_gradient):
  margin = jnp.asarray(margin, jnp.float32)
  if mining_backend == backend.NUMPY:
    return _semihard_on_host(distances, anchor_index, labels, margin, with_gradient)
  return _semihard_in_xla(distances, anchor_index, labels, margin, mining_backend,
                          with_gradient)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _semihard_sums(distances, anchor_index, labels, margin, mining_backend):
  return _semihard_sums_and_gradient(distances, anchor_index, labels, margin, mining_backend,
                                     with_gradient=False)[0]


def _semihard_sums_forward(distances, anchor_index, labels, margin, mining_backend):
  sums, gradient = _semihard_sums_and_gradient(distances, anchor_index, labels, margin,
                                               mining_backend, with_gradient=True)
  return sums, (gradient, sums.num_active)


def _semihard_sums_backward(mining_backend, residuals, cotangents):
  del mining_backend
  gradient, num_active = residuals
  g = cotangents.hinge_sum
  return g * gradient, None, None, g * num_active.astype(jnp.float32)


_semihard_sums.defvjp(_semihard_sums_forward, _semihard_sums_backward)


def semihard_sums(distances: jax.Array, anchor_index: jax.Array, labels: jax.Array,
                  margin: jax.Array, mining_backend: str) -> SemiHardSums:
  """Sums of the semi-hard hinge over the ordered positive pairs of some anchors (TFA semantics).

  For anchor i and positive j: the nearest negative k with D[i, k] > D[i, j] (strictly); if
  there is none, the farthest negative of i (TFA's fallback); if i has no negative, distance 0.
  Works on a block of rows of the distance matrix so that large batches can be processed block
  by block; pass `distances` [B, B] and `anchor_index = arange(B)` for the whole batch.
  Differentiable in `distances` and `margin` (reverse mode); the counts are not differentiable.

  Args:
    distances: [C, B] float32 distances from the anchors to every example, >= 0.
    anchor_index: [C] int32 example index of each anchor row; -1 marks a padding row.
    labels: [B] integer labels of all examples.
    margin: float32 scalar margin.
    mining_backend: where and how to mine, a resolved backend (`backend.resolve_backend`).
  """
  # Inside shard_map a margin shared by the devices is typed as varying here, so that JAX sums
  # its gradient (this device's sums' share) over the devices.
  margin = shards.vary_like(margin, distances)
  return _semihard_sums(distances, anchor_index, labels, margin, mining_backend)
