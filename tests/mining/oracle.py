"""An independent float64 NumPy oracle of the sorting miners, with their gradients.

Why not the package's miners: an oracle that shared their code would share their bugs; this
one searches each row on its own, in float64, with the tie rules written out.

`tripletjax.reference` is the ground truth for values and statistics but has no gradient, and
finite differences of it are only valid away from ties and on tiny batches. This oracle computes
the semi-hard and batch-all losses with the package's documented tie rules (the semi-hard
negative is the lowest column among equally distant candidates, the fallback the highest one)
and returns d loss / d distances, so gradients can be checked exactly on large batches with
ties. It is vectorised over one row at a time and shares no code with `tripletjax`;
`assert_matches` checks a result of the package against both the reference and the oracle.

On embeddings with small integer coordinates every squared distance is an integer, exact in
float32 and float64, so the package and this oracle make the same mining decisions and their
counts must agree exactly (`check_exact_decisions` verifies the precondition).
"""

from __future__ import annotations

from typing import NamedTuple

import functools

import numpy as np

from tripletjax import reference


class Mined(NamedTuple):
  loss: float
  stats: dict                  # Counts as Python ints, means and fractions as floats.
  distance_gradient: np.ndarray  # [B, B] float64 d loss / d D_ij.


def integer_grid(rng: np.random.Generator, batch_size: int, dim: int = 8) -> np.ndarray:
  """[B, dim] float32 points with coordinates in {0, 1, 2}: exact distances, many ties."""
  return rng.integers(0, 3, size=(batch_size, dim)).astype(np.float32)


def distances(embeddings: np.ndarray, metric: str) -> np.ndarray:
  """[B, B] float64 distances from exact differences ("l2" or "squared_l2")."""
  x = np.asarray(embeddings, np.float64)
  squared = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
  if metric == "squared_l2":
    return squared
  if metric == "l2":
    return np.sqrt(squared)
  raise ValueError(f"The oracle has no metric {metric!r}.")


def row_order(values: np.ndarray, tags: np.ndarray) -> np.ndarray:
  """[..., C] permutation that sorts each row by (value, tag, column), by `np.lexsort`: the
  order every sort of the miners must give."""
  flat_values = values.reshape(-1, values.shape[-1])
  flat_tags = tags.reshape(-1, values.shape[-1])
  columns = np.arange(values.shape[-1])
  # np.lexsort sorts by its last key first.
  return np.stack([np.lexsort((columns, t, v)) for v, t in zip(flat_values, flat_tags)]
                  ).reshape(values.shape)


def check_exact_decisions(distance_matrix: np.ndarray, margins, min_gap: float = 1e-5) -> None:
  """Asserts that float32 rounding cannot flip a comparison the miners make on this batch.

  The miners compare distances with each other (D_ij < D_ik) and shifted by the margin
  (D_ij + m against D_ik); both must be either exact ties or farther apart than `min_gap`.
  """
  values = np.unique(distance_matrix)
  differences = values[:, None] - values[None, :]
  for shift in (0.0, *margins):
    gaps = np.abs(differences + shift)
    assert gaps[gaps > 0].min() > min_gap, f"near-tie at shift {shift}: counts are not exact"


def semihard(labels: np.ndarray, distance_matrix: np.ndarray, margin: float,
             anchors=None) -> Mined:
  """TensorFlow Addons' semi-hard loss, its statistics and d loss / d distances.

  Args:
    labels: [B] class ids.
    distance_matrix: [B, B] distances.
    margin: the hinge margin.
    anchors: the anchor rows to mine (default: all B); the loss is the mean over their pairs
      and the gradient has one row per anchor, [len(anchors), B].
  """
  labels = np.asarray(labels)
  batch = labels.shape[0]
  anchors = np.arange(batch) if anchors is None else np.asarray(anchors)
  columns = np.arange(batch)
  same = labels[:, None] == labels[None, :]
  gradient = np.zeros((len(anchors), batch))
  hinge_sum = positive_sum = negative_sum = 0.0
  num_pairs = num_active = num_fallback = 0
  for row, i in enumerate(anchors):
    negatives = columns[~same[i]]
    # Sorted by (distance, column): the first candidate of equal ones has the lowest column.
    negatives = negatives[np.lexsort((negatives, distance_matrix[i, negatives]))]
    negative_values = distance_matrix[i, negatives]
    positives = columns[same[i] & (columns != i)]
    positive_values = distance_matrix[i, positives]
    if negatives.size:
      first_farther = np.searchsorted(negative_values, positive_values, side="right")
      is_semihard = first_farther < negatives.size
      # No farther negative: the farthest one, the last in (distance, column) order.
      chosen = np.where(is_semihard, first_farther, negatives.size - 1)
      chosen_column, chosen_value = negatives[chosen], negative_values[chosen]
      num_fallback += int(np.count_nonzero(~is_semihard))
    else:
      chosen_column, chosen_value = None, np.zeros_like(positive_values)
    hinge = np.maximum(margin + positive_values - chosen_value, 0.0)
    active = hinge > 0
    gradient[row, positives[active]] += 1.0
    if chosen_column is not None:
      np.add.at(gradient[row], chosen_column[active], -1.0)
    hinge_sum += hinge.sum()
    num_pairs += positives.size
    num_active += int(np.count_nonzero(active))
    positive_sum += positive_values.sum()
    negative_sum += chosen_value.sum()
  ratio = lambda total: total / num_pairs if num_pairs else 0.0
  stats = {"hinge_sum": hinge_sum, "num_positive_pairs": num_pairs, "num_active": num_active,
           "num_fallback": num_fallback, "fraction_active": ratio(num_active),
           "mean_positive_distance": ratio(positive_sum),
           "mean_negative_distance": ratio(negative_sum)}
  return Mined(ratio(hinge_sum), stats, gradient / max(num_pairs, 1))


def batch_all(labels: np.ndarray, distance_matrix: np.ndarray, margin: float) -> Mined:
  """Batch-all loss (mean hinge over active triplets), its statistics and d loss / d distances."""
  labels = np.asarray(labels)
  batch = labels.shape[0]
  columns = np.arange(batch)
  same = labels[:, None] == labels[None, :]
  gradient = np.zeros((batch, batch))
  hinge_sum = 0.0
  num_valid = num_active = 0
  for a in range(batch):
    positives = columns[same[a] & (columns != a)]
    negatives = columns[~same[a]]
    hinge = (margin + distance_matrix[a, positives][:, None]
             - distance_matrix[a, negatives][None, :])
    active = hinge > 0
    hinge_sum += hinge[active].sum()
    num_valid += hinge.size
    num_active += int(np.count_nonzero(active))
    gradient[a, positives] += active.sum(axis=1)
    gradient[a, negatives] -= active.sum(axis=0)
  stats = {"num_valid_triplets": num_valid, "num_active_triplets": num_active,
           "fraction_active": num_active / num_valid if num_valid else 0.0}
  loss = hinge_sum / num_active if num_active else 0.0
  return Mined(loss, stats, gradient / max(num_active, 1))


MINERS = {"semihard": semihard, "batch_all": batch_all}


def embedding_gradient(embeddings: np.ndarray, distance_matrix: np.ndarray,
                       distance_gradient: np.ndarray, metric: str) -> np.ndarray:
  """d loss / d embeddings from d loss / d D, by the chain rule through the distances.

  "l2": dD_ij / dx_i = (x_i - x_j) / D_ij, taken as 0 where D_ij = 0 (the package's safe square
  root); "squared_l2": 2 (x_i - x_j).
  """
  x = np.asarray(embeddings, np.float64)
  if metric == "l2":
    safe = np.where(distance_matrix > 0, distance_matrix, 1.0)
    coefficients = np.where(distance_matrix > 0, distance_gradient / safe, 0.0)
  else:
    coefficients = 2.0 * distance_gradient
  symmetric = coefficients + coefficients.T
  return symmetric.sum(axis=1)[:, None] * x - symmetric @ x


def central_differences(fn, x: np.ndarray, step: float = 1e-4) -> np.ndarray:
  """Central finite differences of the scalar `fn` at the float64 point `x`."""
  x = np.asarray(x, np.float64)
  gradient = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    shift = np.zeros_like(x)
    shift[index] = step
    gradient[index] = (fn(x + shift) - fn(x - shift)) / (2 * step)
  return gradient


# ----------------------------------------------------------------------------------------------
# Checking a result of the package.


REFERENCE = {"semihard": reference.triplet_semihard_loss,
             "batch_all": reference.batch_all_triplet_loss}
# Integer statistics, compared exactly; the active count is fraction_active x its denominator.
COUNTS = {"semihard": ("num_positive_pairs", "num_fallback"),
          "batch_all": ("num_valid_triplets", "num_active_triplets")}
ACTIVE_DENOMINATOR = {"semihard": "num_positive_pairs", "batch_all": "num_valid_triplets"}
ORACLE_ACTIVE = {"semihard": "num_active", "batch_all": "num_active_triplets"}


@functools.lru_cache(maxsize=None)
def _expected(variant, labels_bytes, embeddings_bytes, shape, margin, metric):
  labels = np.frombuffer(labels_bytes, np.int32)
  embeddings = np.frombuffer(embeddings_bytes, np.float32).reshape(shape)
  reference_result = REFERENCE[variant](labels, embeddings, margin=margin, metric=metric,
                                        return_stats=True)
  distance_matrix = distances(embeddings, metric)
  check_exact_decisions(distance_matrix, [margin])
  mined = MINERS[variant](labels, distance_matrix, margin)
  gradient = embedding_gradient(embeddings, distance_matrix, mined.distance_gradient, metric)
  return reference_result, mined, gradient


def expected(variant, labels, embeddings, margin, metric):
  """(reference (loss, stats), oracle result, oracle d loss / d embeddings), cached."""
  return _expected(variant, labels.tobytes(), embeddings.tobytes(), embeddings.shape, margin,
                   metric)


def assert_matches(variant, result, labels, embeddings, margin, metric, where):
  """Loss, statistics (counts exactly) and gradient of one JAX result, against the truth."""
  (loss, stats), gradient = result
  (expected_loss, expected_stats), mined, expected_gradient = expected(
      variant, labels, embeddings, margin, metric)
  # The oracle is the reference, plus a gradient.
  np.testing.assert_allclose(mined.loss, expected_loss, rtol=1e-12, atol=1e-12, err_msg=where)
  for key, value in expected_stats.items():
    np.testing.assert_allclose(mined.stats[key], value, rtol=1e-12, atol=1e-12, err_msg=where)

  assert set(stats) == set(expected_stats), where
  for key in COUNTS[variant]:
    assert float(stats[key]) == expected_stats[key], (
        f"{where} stats[{key!r}]: {float(stats[key]):.0f}, expected {expected_stats[key]:.0f}")
  active = float(stats["fraction_active"]) * float(stats[ACTIVE_DENOMINATOR[variant]])
  assert round(active) == mined.stats[ORACLE_ACTIVE[variant]], (
      f"{where} active count: {round(active)}, expected {mined.stats[ORACLE_ACTIVE[variant]]}")
  np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5, atol=1e-6, err_msg=where)
  for key in set(expected_stats) - set(COUNTS[variant]):
    np.testing.assert_allclose(float(stats[key]), expected_stats[key], rtol=1e-5, atol=1e-6,
                               err_msg=f"{where} stats[{key!r}]")
  scale = np.abs(expected_gradient).max()
  np.testing.assert_allclose(np.asarray(gradient), expected_gradient, rtol=1e-4,
                             atol=1e-5 * max(scale, 1e-3), err_msg=f"{where} gradient")
