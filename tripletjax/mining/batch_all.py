"""Batch-all mining (Hermans et al.; Moindrot's formulation) in O(C B log B) time and O(C B)
memory: the sums over all valid triplets without the [B, B, B] tensor."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tripletjax.mining import masks
from tripletjax.mining import row_sort
from tripletjax.mining import shards


class BatchAllSums(NamedTuple):
  """Sums over all valid triplets (a, p, n) of the hinge max(D_ap - D_an + m, 0)."""
  hinge_sum: jax.Array    # float32, differentiable.
  num_active: jax.Array   # float32 (counts reach B^3): triplets with a positive hinge.
  num_valid: jax.Array    # float32: all valid triplets.


def _batch_all_forward(distances, anchor_index, labels, margin, mining_backend):
  same = masks.block_same_class(anchor_index, labels)
  is_positive_pair = masks.block_positive_pairs(anchor_index, labels, same)
  # Put the shifted positives D_ap + m and the negatives D_an of each anchor in one sorted row,
  # shifted positives first on ties (an exact tie has zero loss). Each positive's active
  # negatives are then exactly the negatives to its left, and its hinge sum is
  # count * (D_ap + m) - (sum of those negatives): two running sums, no [B, B, B] tensor.
  values = jnp.where(is_positive_pair, distances + margin, distances)
  rows = row_sort.sort_rows(values, ~same, mining_backend)
  is_negative = rows.tags & (anchor_index[:, None] >= 0)
  is_positive = masks.sorted_positive_mask(~rows.tags, rows.perm, anchor_index)
  # Centre each row so that the running sums stay small and keep float32 precision.
  centred = rows.values - jnp.mean(rows.values, axis=1, keepdims=True)
  negatives_left = jnp.cumsum(is_negative, axis=1, dtype=jnp.int32)
  negative_sum_left = jnp.cumsum(jnp.where(is_negative, centred, 0.0), axis=1)
  per_positive = negatives_left.astype(jnp.float32) * centred - negative_sum_left
  num_positive = jnp.sum(is_positive, axis=1, dtype=jnp.int32)
  sums = BatchAllSums(
      hinge_sum=jnp.sum(jnp.where(is_positive, per_positive, 0.0)),
      num_active=jnp.sum(jnp.where(is_positive, negatives_left, 0).astype(jnp.float32)),
      num_valid=jnp.sum((num_positive * jnp.sum(is_negative, axis=1, dtype=jnp.int32))
                        .astype(jnp.float32)),
  )
  positives_right = num_positive[:, None] - jnp.cumsum(is_positive, axis=1, dtype=jnp.int32)
  # d hinge_sum / d value: +(negatives to the left) for a positive, -(positives to the right)
  # for a negative.
  gradient_sorted = (jnp.where(is_positive, negatives_left, 0)
                     - jnp.where(is_negative, positives_right, 0)).astype(jnp.float32)
  return sums, (rows.perm, gradient_sorted, sums.num_active)


def _batch_all_backward(mining_backend, residuals, cotangents):
  del mining_backend
  perm, gradient_sorted, num_active = residuals
  g = cotangents.hinge_sum
  return g * row_sort.unsort_rows(gradient_sorted, perm), None, None, g * num_active


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _batch_all_sums(distances, anchor_index, labels, margin, mining_backend):
  return _batch_all_forward(distances, anchor_index, labels, margin, mining_backend)[0]


_batch_all_sums.defvjp(_batch_all_forward, _batch_all_backward)


def batch_all_sums(distances: jax.Array, anchor_index: jax.Array, labels: jax.Array,
                   margin: jax.Array, mining_backend: str) -> BatchAllSums:
  """Batch-all triplet sums of some anchors.

  Differentiable in `distances` and `margin` (reverse mode); the counts are not differentiable.

  Args:
    distances: [C, B] float32 distances from the anchors to every example, >= 0.
    anchor_index: [C] int32 example index of each anchor row; -1 marks a padding row.
    labels: [B] integer labels of all examples.
    margin: float32 scalar margin.
    mining_backend: how the rows are sorted, a resolved backend (`backend.resolve_backend`).
  """
  # Inside shard_map a margin shared by the devices is typed as varying here, so that JAX sums
  # its gradient (this device's sums' share) over the devices.
  margin = shards.vary_like(margin, distances)
  return _batch_all_sums(distances, anchor_index, labels, margin, mining_backend)
