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


def _safe_sqrt(squared: jax.Array) -> jax.Array:
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
  # HIGHEST: on GPUs the default matmul precision is TF32, whose 1e-3 error would move ties.
  dot = lambda a, b: jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)

  if metric == "angular":
    # cos = G_ij / sqrt(|x_i|^2 |y_j|^2) from one Gram matrix, which equals TFA's dot product of
    # l2-normalised rows (same eps) but is exact where it matters: duplicate rows give
    # G / sqrt(G * G) = 1 exactly (IEEE sqrt of a square is exact), orthogonal rows give 0.
    gram = dot(x, y)
    if self_distances:
      sq_x = sq_y = jnp.diagonal(gram)
    else:
      sq_x, sq_y = jnp.sum(x * x, axis=1), jnp.sum(y * y, axis=1)
    eps = 1e-12  # tf.math.l2_normalize's epsilon on the squared norm.
    norms = jnp.sqrt(jnp.maximum(sq_x, eps)[:, None] * jnp.maximum(sq_y, eps)[None, :])
    distances = jnp.maximum(1.0 - gram / norms, 0.0)
  else:
    gram = dot(x, y)
    if self_distances:
      # Norms from the Gram diagonal: for duplicate rows the three terms are then computed by the
      # same kernel and cancel exactly, so duplicates are at distance exactly 0.
      sq_x = sq_y = jnp.diagonal(gram)
    else:
      sq_x, sq_y = jnp.sum(x * x, axis=1), jnp.sum(y * y, axis=1)
    squared = jnp.maximum(sq_x[:, None] + sq_y[None, :] - 2.0 * gram, 0.0)
    distances = squared if metric == "squared_l2" else _safe_sqrt(squared)

  if self_distances:
    distances = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, distances)
  return distances
