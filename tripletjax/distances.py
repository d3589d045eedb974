"""Pairwise distances with finite gradients everywhere.

Metrics follow TensorFlow Addons' meanings:
  * "l2": Euclidean distance ||x_i - y_j||;
  * "squared_l2": ||x_i - y_j||^2;
  * "angular": 1 - cos(x_i, y_j) of the L2-normalised inputs, clamped at 0.

All are computed in float32 (half-precision inputs are upcast) from one Gram matrix, so memory
is O(B^2) and never O(B^2 D).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tripletjax import validation


def safe_sqrt(squared: jax.Array) -> jax.Array:
  """sqrt with a zero (not infinite) gradient where the argument is 0.

  sqrt'(0) = inf, and inf * 0 = NaN in the chain rule, which is the NaN users of
  TF's triplet losses meet on duplicate embeddings. Evaluate sqrt on a harmless value there
  and select 0 afterwards, so both the value and the gradient are 0.
  """
  positive = squared > 0.0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def pairwise_distances(x: jax.Array, y: jax.Array | None = None, metric: str = "l2") -> jax.Array:
  """Distances between the rows of `x` and the rows of `y` (default: `x` itself).

  Args:
    x: [B, D] floating-point embeddings.
    y: optional [C, D] embeddings; when omitted the self-distances of `x` are returned and the
      diagonal is exactly 0.
    metric: "l2", "squared_l2" or "angular".

  Returns:
    [B, C] float32 distances, >= 0, with finite gradients (also at 0: the diagonal and
    duplicate embeddings).
  """
  validation.check_metric(metric)
  x = validation.check_embeddings(x, "x").astype(jnp.float32)
  self_distances = y is None
  y = x if self_distances else validation.check_embeddings(y, "y").astype(jnp.float32)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x and y must have the same feature size, got {x.shape} and {y.shape}.")
  gram = _gram(x, y)
  if self_distances:
    # Norms from the Gram diagonal: for duplicate rows all terms then come from the same kernel
    # and cancel exactly, so duplicates are at distance exactly 0.
    sq_x = sq_y = jnp.diagonal(gram)
  else:
    sq_x, sq_y = _squared_norms(x), _squared_norms(y)
  distances = _distances_from_gram(gram, sq_x, sq_y, metric)
  if self_distances:
    distances = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, distances)
  return distances


def anchor_distances(embeddings: jax.Array, anchor_index: jax.Array, metric: str = "l2",
                     squared_norms: jax.Array | None = None) -> jax.Array:
  """Distances from some rows of `embeddings` (the anchors) to all rows: one block of rows of
  `pairwise_distances(embeddings)`, for computing it block by block.

  Args:
    embeddings: [B, D] float32 embeddings.
    anchor_index: [C] int32 row indices of the anchors; negative entries are padding (their
      row is computed from row 0 and should be ignored by the caller).
    metric: "l2", "squared_l2" or "angular".
    squared_norms: optional precomputed [B] squared norms of `embeddings`.

  Returns:
    [C, B] float32 distances; entry (c, anchor_index[c]) is exactly 0.
  """
  if squared_norms is None:
    squared_norms = _squared_norms(embeddings)
  safe_index = jnp.maximum(anchor_index, 0)
  gram = _gram(embeddings[safe_index], embeddings)
  return _anchor_distances_from_gram(gram, anchor_index, squared_norms[safe_index],
                                     squared_norms, metric)


def shard_anchor_distances(embeddings: jax.Array, anchor_index: jax.Array, gather_norms,
                           metric: str = "l2") -> jax.Array:
  """This device's rows of `pairwise_distances(embeddings)` when the rows are split over devices.

  The squared norms come from the Gram diagonal, as in `pairwise_distances`: each device takes
  those of its own anchors from its block of the Gram matrix and `gather_norms` collects them
  from every device, so duplicate rows are at distance exactly 0 here too, and (where the
  matrix product computes a row the same way in a block as in the whole, as XLA:CPU does) the
  rows are those of the one-device matrix bit for bit.

  Args:
    embeddings: [B, D] float32 embeddings of the whole batch.
    anchor_index: [C] int32 row indices of this device's anchors; the anchors of all devices,
      in device order, are rows 0 .. B-1.
    gather_norms: maps this device's [C] values to the [B] values of all devices, in order
      (`mining.shards.gather`).
    metric: "l2", "squared_l2" or "angular".

  Returns:
    [C, B] float32 distances; entry (c, anchor_index[c]) is exactly 0.
  """
  gram = _gram(embeddings[anchor_index], embeddings)
  own_norms = jnp.take_along_axis(gram, anchor_index[:, None], axis=1)[:, 0]
  return _anchor_distances_from_gram(gram, anchor_index, own_norms, gather_norms(own_norms),
                                     metric)


def _anchor_distances_from_gram(gram, anchor_index, sq_anchors, sq_all, metric: str):
  """[C, B] distances of anchor rows from their Gram block, 0 at each anchor's own column."""
  distances = _distances_from_gram(gram, sq_anchors, sq_all, metric)
  column = jax.lax.broadcasted_iota(jnp.int32, distances.shape, 1)
  return jnp.where(column == anchor_index[:, None], 0.0, distances)


def _gram(x: jax.Array, y: jax.Array) -> jax.Array:
  # HIGHEST: on GPUs the default matmul precision is TF32, whose 1e-3 error would move ties.
  return jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)


def _squared_norms(x: jax.Array) -> jax.Array:
  return jnp.sum(x * x, axis=1)


def _distances_from_gram(gram, sq_rows, sq_cols, metric: str) -> jax.Array:
  """Distances from the Gram matrix [B, C] and the squared norms of its rows and columns."""
  if metric == "angular":
    # cos = G_ij / sqrt(|x_i|^2 |y_j|^2) equals TFA's dot product of l2-normalised rows (same
    # eps) but is exact where it matters: duplicate rows give G / sqrt(G * G) = 1 exactly (the
    # IEEE square root of a square is exact) and orthogonal rows give 0.
    eps = 1e-12  # tf.math.l2_normalize's epsilon on the squared norm.
    norms = jnp.sqrt(jnp.maximum(sq_rows, eps)[:, None] * jnp.maximum(sq_cols, eps)[None, :])
    return jnp.maximum(1.0 - gram / norms, 0.0)
  squared = jnp.maximum(sq_rows[:, None] + sq_cols[None, :] - 2.0 * gram, 0.0)
  return squared if metric == "squared_l2" else safe_sqrt(squared)
