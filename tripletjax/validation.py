"""Input checks shared by the losses: fail early, with a message that names the problem.

The checks run at trace time on shapes and dtypes (free under `jit`); values such as the
margin are checked only when they are concrete Python numbers.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("l2", "squared_l2", "angular")


def check_metric(metric: str) -> str:
  if metric not in METRICS:
    raise ValueError(f"Unknown metric {metric!r}; expected one of {METRICS}.")
  return metric


def check_margin(margin, name: str = "margin") -> None:
  """Rejects a negative margin when it is concrete (a traced margin is trusted)."""
  if isinstance(margin, numbers.Real) or (isinstance(margin, np.ndarray) and margin.ndim == 0):
    if not np.isfinite(margin):
      raise ValueError(f"{name} must be finite, got {margin}.")
    if margin < 0:
      raise ValueError(f"{name} must be >= 0, got {margin}.")


def check_embeddings(embeddings, name: str = "embeddings"):
  embeddings = jnp.asarray(embeddings)
  if embeddings.ndim != 2:
    raise ValueError(f"{name} must have shape [B, D], got shape {embeddings.shape}.")
  if not jnp.issubdtype(embeddings.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {embeddings.dtype}.")
  return embeddings


INT32_RANGE = (-2**31, 2**31 - 1)


def check_label_range(labels) -> None:
  """Rejects concrete integer labels outside int32, which `jnp.asarray` would silently wrap.

  In JAX's default 32-bit mode int64 ids such as 2**40 + 1 and 1 would become the same class.
  Checked on the value before conversion, and only when its dtype may not fit; traced labels
  (inside `jit`) already have JAX's integer width and are trusted.
  """
  if isinstance(labels, jax.core.Tracer):
    return
  if not hasattr(labels, "dtype"):  # Python ints and lists: NumPy makes int64 (object if larger).
    try:
      labels = np.asarray(labels)
    except (OverflowError, ValueError):  # Ragged lists and the like: the other checks say.
      return
  dtype = np.dtype(labels.dtype)
  if np.size(labels) == 0 or dtype.kind not in "iuO" or (dtype.kind in "iu" and
                                                         np.can_cast(dtype, np.int32)):
    return
  values = np.asarray(labels).reshape(-1)
  if dtype.kind == "O" and not all(isinstance(x, numbers.Integral) for x in values):
    return
  low, high = values.min(), values.max()
  if low < INT32_RANGE[0] or high > INT32_RANGE[1]:
    raise ValueError(
        f"labels must fit in int32 [{INT32_RANGE[0]}, {INT32_RANGE[1]}], got values in "
        f"[{low}, {high}] (dtype {dtype}), which JAX would wrap silently; map the ids to "
        "0..C-1 first, e.g. np.unique(labels, return_inverse=True)[1].")


def check_labels_and_embeddings(labels, embeddings):
  """Returns `(labels, embeddings)` as arrays after checking ranks, dtypes, batch sizes and the
  int32 range of concrete labels."""
  check_label_range(labels)
  labels = jnp.asarray(labels)
  embeddings = check_embeddings(embeddings)
  if labels.ndim != 1:
    raise ValueError(f"labels must have shape [B], got shape {labels.shape}.")
  if not (jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_):
    raise TypeError(
        f"labels must be integer class ids, got dtype {labels.dtype}; "
        "cast them with labels.astype(jnp.int32) if they hold whole numbers.")
  if labels.shape[0] != embeddings.shape[0]:
    raise ValueError(
        f"labels and embeddings disagree on the batch size: labels has {labels.shape[0]} "
        f"entries, embeddings has {embeddings.shape[0]} rows.")
  return labels, embeddings
