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


def _is_concrete_number(value) -> bool:
  return isinstance(value, numbers.Real) or (isinstance(value, np.ndarray) and value.ndim == 0)


def check_finite(value, name: str) -> None:
  """Rejects a concrete option that is not a finite number (a traced one is trusted)."""
  if _is_concrete_number(value) and not np.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}.")


def check_positive(value, name: str) -> None:
  """Rejects a concrete option that is not a finite number > 0 (a traced one is trusted)."""
  check_finite(value, name)
  if _is_concrete_number(value) and not value > 0:
    raise ValueError(f"{name} must be > 0, got {value}.")


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


def check_label_dtype(labels) -> None:
  """Rejects labels that are not integers (strings, floats, booleans, objects) with a
  `TypeError` naming `labels`, before JAX tries to convert them.

  Booleans are rejected too: two classes are better said with 0 and 1, and a boolean mask
  passed by mistake would otherwise be taken for class ids.
  """
  if hasattr(labels, "dtype"):  # NumPy and JAX arrays, tracers included.
    dtype = np.dtype(labels.dtype)
  else:
    try:
      dtype = np.asarray(labels).dtype
    except (OverflowError, ValueError):  # Ragged lists and the like: the rank check says.
      return
    if np.size(labels) == 0:  # An empty list: NumPy calls it float64.
      return
  if dtype.kind not in "iuO":
    raise TypeError(
        f"labels must be integer class ids, got dtype {dtype}; map class names or other "
        "values to 0..C-1 first, e.g. np.unique(labels, return_inverse=True)[1], or cast "
        "whole numbers with labels.astype(np.int32).")
  if dtype.kind == "O" and not all(isinstance(x, numbers.Integral) and not isinstance(x, bool)
                                   for x in np.asarray(labels).reshape(-1)):
    raise TypeError("labels must be integer class ids, got Python objects that are not all "
                    "integers.")


def check_labels_and_embeddings(labels, embeddings):
  """Returns `(labels, embeddings)` as arrays after checking ranks, dtypes, batch sizes and the
  int32 range of concrete labels."""
  check_label_dtype(labels)
  check_label_range(labels)
  if not hasattr(labels, "dtype") or np.dtype(labels.dtype).kind == "O":
    labels = np.asarray(labels)
    if labels.dtype.kind == "O":  # Python integers, within int32 (checked above).
      labels = labels.astype(np.int64)
  labels = jnp.asarray(labels)
  embeddings = check_embeddings(embeddings)
  if labels.ndim != 1:
    raise ValueError(f"labels must have shape [B], got shape {labels.shape}.")
  if labels.shape[0] != embeddings.shape[0]:
    raise ValueError(
        f"labels and embeddings disagree on the batch size: labels has {labels.shape[0]} "
        f"entries, embeddings has {embeddings.shape[0]} rows.")
  return labels, embeddings
