"""Label masks of a batch, or of a block of anchor rows, and positions in sorted rows."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LabelMasks(NamedTuple):
  """[B, B] bool masks. The diagonal is neither a positive pair nor a negative."""
  positive: jax.Array  # same label, i != j
  negative: jax.Array  # different label


def label_masks(labels: jax.Array) -> LabelMasks:
  same = labels[:, None] == labels[None, :]
  not_diagonal = ~jnp.eye(labels.shape[0], dtype=bool)
  return LabelMasks(positive=same & not_diagonal, negative=~same)


def block_same_class(anchor_index: jax.Array, labels: jax.Array) -> jax.Array:
  """[C, B] same-class mask between the anchors (rows `anchor_index`) and all examples."""
  return labels[jnp.maximum(anchor_index, 0)][:, None] == labels[None, :]


def block_positive_pairs(anchor_index: jax.Array, labels: jax.Array,
                         same: jax.Array | None = None) -> jax.Array:
  """[C, B] positive pairs of a block: same class, not the anchor itself."""
  if same is None:
    same = block_same_class(anchor_index, labels)
  column = jax.lax.broadcasted_iota(jnp.int32, same.shape, 1)
  return same & (column != anchor_index[:, None])


def sorted_positive_mask(same_sorted: jax.Array, perm: jax.Array,
                         anchor_index: jax.Array) -> jax.Array:
  """Positive pairs in sorted order: same class, not the anchor itself, not a padding row."""
  anchor = anchor_index[:, None]
  return same_sorted & (perm != anchor) & (anchor >= 0)


def positions(shape) -> jax.Array:
  """int32 positions along the last axis of an array of `shape`."""
  return jax.lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)
