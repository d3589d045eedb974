"""Pairwise distances in `keras.ops`, with TensorFlow Addons' metric names.

The same formulas as `tripletjax.distances` (one Gram matrix, O(B^2) memory, float32, an
exactly-zero diagonal, finite gradients at zero distance), written in `keras.ops` so that they
run on every Keras 3 backend.
"""

from __future__ import annotations

from typing import Callable, Union

import keras
from keras import ops

# TFA's `distance_metric` names -> tripletjax's `metric` names.
METRIC_NAMES = {"L2": "l2", "squared-L2": "squared_l2", "angular": "angular"}

DistanceMetric = Union[str, Callable]

# tf.math.l2_normalize's epsilon on the squared norm (TFA's angular distance).
_L2_NORMALIZE_EPS = 1e-12


def check_distance_metric(distance_metric: DistanceMetric) -> DistanceMetric:
  """Accepts TFA's names ("L2", "squared-L2", "angular") or a callable; anything else is an
  error that lists them."""
  if callable(distance_metric) or distance_metric in METRIC_NAMES:
    return distance_metric
  raise ValueError(f"Unknown distance_metric {distance_metric!r}; expected one of "
                   f"{tuple(METRIC_NAMES)} or a callable mapping embeddings [B, D] to a "
                   "[B, B] distance matrix.")


def safe_sqrt(squared):
  """sqrt with a zero (not infinite) gradient where the argument is 0."""
  positive = ops.greater(squared, 0.0)
  return ops.where(positive, ops.sqrt(ops.where(positive, squared, 1.0)), 0.0)


def pairwise_distances(embeddings, distance_metric: DistanceMetric = "L2"):
  """[B, B] float32 distances between the rows of `embeddings` [B, D].

  Args:
    embeddings: [B, D] floating-point embeddings (computed in float32).
    distance_metric: "L2" (Euclidean), "squared-L2", "angular" (1 - cosine of the
      L2-normalised rows, clamped at 0), or a callable returning the [B, B] matrix (cast to
      float32; used as is).

  Returns:
    [B, B] float32 distances, >= 0 with a zero diagonal for the named metrics.
  """
  check_distance_metric(distance_metric)
  embeddings = ops.cast(embeddings, "float32")
  if callable(distance_metric):
    return ops.cast(distance_metric(embeddings), "float32")
  gram = ops.matmul(embeddings, ops.transpose(embeddings))
  # Norms from the Gram diagonal: duplicate rows are then exactly 0 apart.
  squared_norms = ops.diagonal(gram)
  if distance_metric == "angular":
    clamped = ops.maximum(squared_norms, _L2_NORMALIZE_EPS)
    norms = ops.sqrt(clamped[:, None] * clamped[None, :])
    distances = ops.maximum(1.0 - gram / norms, 0.0)
  else:
    squared = ops.maximum(squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram, 0.0)
    distances = squared if distance_metric == "squared-L2" else safe_sqrt(squared)
  diagonal = ops.eye(ops.shape(embeddings)[0], dtype="bool")
  return ops.where(diagonal, 0.0, distances)


def is_jax_backend() -> bool:
  return keras.backend.backend() == "jax"
