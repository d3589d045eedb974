"""The mined losses in `keras.ops`, for Keras' TensorFlow and PyTorch backends (and for a
callable `distance_metric` on any backend).

The same semantics as `tripletjax.losses` and `tripletjax.reference` (TensorFlow Addons'
`triplet_semihard_loss` and `triplet_hard_loss`, but 0 instead of NaN for a batch without a
positive pair), in O(B^2) memory: TFA tiles the distance matrix into a [B^2, B] tensor to find
each pair's semi-hard negative; here each anchor's negatives are sorted once and every positive
finds its negative with one batched binary search.

Every function takes `labels` [B] (int) and a float32 distance matrix [B, B] and returns a
float32 scalar; gradients flow to the distances through gathers only.
"""

from __future__ import annotations

import keras
from keras import ops


def label_masks(labels):
  """(positive, negative) [B, B] bool masks: same label off the diagonal, and another label."""
  same = ops.equal(labels[:, None], labels[None, :])
  not_diagonal = ops.logical_not(ops.eye(ops.shape(labels)[0], dtype="bool"))
  return ops.logical_and(same, not_diagonal), ops.logical_not(same)


def _active_part(x):
  """max(x, 0) whose gradient is 0 at x == 0, as in tripletjax's semi-hard gradient (a pair
  whose hinge is exactly 0 is not active)."""
  return ops.where(ops.greater(x, 0.0), x, 0.0)


def _hinge(x):
  """max(x, 0) whose gradient at x == 0 is 1/2, as JAX's `maximum` gives tripletjax's hard
  loss; elsewhere the usual 1 or 0. Backends differ at that kink, so it is spelled out."""
  return 0.5 * (_active_part(x) + ops.where(ops.greater_equal(x, 0.0), x, 0.0))


def _safe_mean(total, count):
  """total / count, and 0 (never NaN) when count is 0."""
  count = ops.cast(count, "float32")
  return ops.where(count > 0, total / ops.maximum(count, 1.0), 0.0)


def _count_at_most(sorted_rows, values):
  """[B, B] int32: entry (i, j) is the number of entries of `sorted_rows[i]` that are <= values[i, j].

  A binary search per row (`searchsorted(..., side="right")`), batched over the rows: Keras'
  `ops.searchsorted` takes one 1-D sequence only, so each backend's batched search is called.
  """
  backend = keras.backend.backend()
  if backend == "tensorflow":
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.searchsorted(sorted_rows, values, side="right", out_type=tf.int32)
  if backend == "torch":
    import torch  # pylint: disable=import-outside-toplevel
    return torch.searchsorted(sorted_rows.contiguous(), values.contiguous(), right=True,
                              out_int32=True)
  if backend == "jax":
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    search = jax.vmap(lambda row, value: jnp.searchsorted(row, value, side="right"))
    return search(sorted_rows, values).astype(jnp.int32)
  raise NotImplementedError(f"The {backend!r} Keras backend is not supported; use jax, "
                            "tensorflow or torch.")


def triplet_semihard_loss(labels, distances, margin):
  """TFA's semi-hard triplet loss from a distance matrix, in O(B^2) memory.

  For every ordered positive pair (i, j): the nearest negative of i strictly farther than
  D[i, j], or else i's farthest negative (0 if i has none); the loss is the mean over the pairs
  of max(margin + D[i, j] - D[i, neg], 0), and 0 without any positive pair.
  """
  positive, negative = label_masks(labels)
  # Each row's negatives in ascending order (stable: among equal distances the lower column
  # first, as in `tripletjax.mining`), the other entries moved to the end as +inf.
  masked = ops.where(negative, distances, float("inf"))
  order = ops.argsort(masked, axis=1)
  sorted_negatives = ops.take_along_axis(distances, order, axis=1)
  num_negatives = ops.sum(ops.cast(negative, "int32"), axis=1, keepdims=True)
  # Negatives at most D[i, j] come before the semi-hard one (TFA's strict ">").
  at_most = _count_at_most(ops.take_along_axis(masked, order, axis=1), distances)
  is_semihard = ops.less(at_most, num_negatives)
  chosen = ops.where(is_semihard, at_most, num_negatives - 1)
  negative_distance = ops.take_along_axis(sorted_negatives, ops.maximum(chosen, 0), axis=1)
  negative_distance = ops.where(num_negatives > 0, negative_distance, 0.0)
  hinge = _active_part(margin + distances - negative_distance)
  num_pairs = ops.sum(ops.cast(positive, "int32"))
  return _safe_mean(ops.sum(ops.where(positive, hinge, 0.0)), num_pairs)


def triplet_hard_loss(labels, distances, margin, soft: bool = False):
  """TFA's batch-hard triplet loss from a distance matrix.

  Per anchor: the farthest positive (0 if none) and the nearest negative (the row maximum if
  none); max(hp - hn + margin, 0), or softplus(hp - hn) with `soft`; the mean over anchors.
  """
  positive, negative = label_masks(labels)
  hardest_positive = ops.max(ops.where(positive, distances, 0.0), axis=1)
  row_max = ops.max(distances, axis=1, keepdims=True)
  hardest_negative = ops.min(ops.where(negative, distances, row_max), axis=1)
  gap = hardest_positive - hardest_negative
  per_anchor = ops.softplus(gap) if soft else _hinge(gap + margin)
  return ops.mean(per_anchor)


def batch_contrastive_loss(labels, distances, margin):
  """Contrastive loss over all unordered pairs i < j of a labelled batch:
  0.5 * mean(y d^2 + (1 - y) max(margin - d, 0)^2), y = 1 for a same-label pair; 0 if B < 2."""
  same = ops.equal(labels[:, None], labels[None, :])
  batch = ops.shape(labels)[0]
  upper = ops.greater(ops.arange(batch)[None, :], ops.arange(batch)[:, None])
  terms = 0.5 * ops.where(same, distances**2, ops.maximum(margin - distances, 0.0)**2)
  return _safe_mean(ops.sum(ops.where(upper, terms, 0.0)), ops.sum(ops.cast(upper, "int32")))
