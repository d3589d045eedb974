"""Batch-hard mining (TensorFlow Addons' `triplet_hard_loss`): per anchor, the farthest positive
and the nearest negative. O(C B) for a block of C anchor rows."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tripletjax.mining import masks


class HardestPairs(NamedTuple):
  """Batch-hard mining: per anchor, its farthest positive and nearest negative."""
  positive_distance: jax.Array  # [C]; 0 for an anchor without positives (TFA).
  negative_distance: jax.Array  # [C]; the row maximum for an anchor without negatives (TFA).
  has_positive: jax.Array       # [C] bool
  has_negative: jax.Array       # [C] bool


def hardest_pairs(distances: jax.Array, labels: jax.Array,
                  anchor_index: jax.Array | None = None) -> HardestPairs:
  """TFA's `triplet_hard_loss` mining. Differentiable in `distances`.

  Args:
    distances: [B, B] pairwise distances, or a block [C, B] of their rows.
    labels: [B] integer labels.
    anchor_index: for a block, the [C] example index of each row (padding rows: any value,
      their results are meaningless); default: all rows, `arange(B)`.

  Returns:
    `HardestPairs` of the C anchors.
  """
  if anchor_index is None:
    anchor_index = jnp.arange(distances.shape[0], dtype=jnp.int32)
  same = masks.block_same_class(anchor_index, labels)
  positive = masks.block_positive_pairs(anchor_index, labels, same)
  negative = ~same
  # Distances are >= 0 and the anchor's own entry is 0, so a masked-out 0 is TFA's empty-row
  # result.
  positive_distance = jnp.max(jnp.where(positive, distances, 0.0), axis=1)
  row_max = jnp.max(distances, axis=1, keepdims=True)
  negative_distance = jnp.min(jnp.where(negative, distances, row_max), axis=1)
  return HardestPairs(positive_distance, negative_distance,
                      jnp.any(positive, axis=1), jnp.any(negative, axis=1))
