"""Vectorised NumPy versions of the mined losses, with analytic gradients: the benchmark baseline.

Why not the package's host miner (`tripletjax.mining.host`, `mining.keys`): the baseline is
what a NumPy user would write without `tripletjax`, and a second, independent implementation
for the tests to compare with; its own algorithms (one binary search over all rows, 32-bit
batch-all keys) are described below.

`benchmarks.miners` times `tripletjax.losses` against these functions, which are the fastest
formulation we could write in plain NumPy (no autodiff, no compiled extensions), and against
the loop reference `tripletjax.reference`. They compute the same losses as the JAX package, with
the same semantics (see `tripletjax.losses`), under these restrictions:

  * metric: Euclidean distance ("l2", TensorFlow Addons' default) only;
  * float32 arithmetic like the JAX side: distances from one float32 Gram matrix,
    D_ij = sqrt(max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 0)), D_ii = 0; only long sums accumulate in
    float64;
  * no statistics, and the hard loss has `soft` but nothing else.

Every loss `name` has a forward function `name(labels, embeddings, margin)` returning the loss
as a Python float, and `name_and_grad(labels, embeddings, margin)` returning
`(loss, d loss / d embeddings)`, the gradient a float32 [B, D] array. `FORWARD` and
`FORWARD_AND_BACKWARD` map the benchmark's loss names to them.

Gradients. Each loss is a function of the distance matrix; with W = dL/dD and
A_ij = W_ij / D_ij (0 where D_ij = 0, where the JAX side's safe square root has a zero gradient),
dD_ij/dx_i = (x_i - x_j) / D_ij gives
    dL/dx_i = sum_j (A_ij + A_ji) (x_i - x_j) = (rowsum(A) + colsum(A))_i x_i - (A X + A^T X)_i,
two matrix products when A is dense, or a gather per entry when A has O(B) entries (hard loss).
Where the loss has a kink (ties, hinge exactly 0) the one-sided choice is the JAX one.

Mining sorts distance rows packed into integer keys: the bits of a non-negative float32 order
like the float itself. This module imports nothing from `tripletjax`, so that agreement with
the package (tested in tests/benchmarks/test_numpy_vectorized.py) is agreement of two
implementations:

  * semi-hard: every negative of anchor i becomes the uint64 key (i, distance bits, column),
    every other entry of row i a key after them; the rows sorted, the flattened keys are sorted
    as a whole. One binary search (`np.searchsorted`) of every ordered positive pair's key
    (i, D_ij bits, largest column) finds the nearest negative strictly farther than D_ij; a
    search that lands past row i's negatives falls back to the last one, the farthest. The
    package's CPU miner (`tripletjax.mining.host`) finds the same negatives differently, with
    a reverse running minimum over runs of tagged entries.
  * batch-all: 32-bit keys (distance bits << 1 | tag) order a row by (distance, tag); the
    forward function sorts them, the gradient function takes their `np.argsort`, whose
    permutation sends the gradient back to the original columns. Each anchor is moved to the
    end of its row (key = largest float, tagged like a negative), so every row ends with a
    known entry. The row holds D_ap + margin for positives and D_an for negatives, positives
    first on ties, so the active triplets of a positive are the negatives to its left: their
    number is (sorted column - rank among the row's positives) and their sum a running sum of
    the segments between consecutive positives (`np.add.reduceat`), over the flat sorted
    positions of the positives (one `flatnonzero`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_FLOAT32_MAX_BITS = 0x7F7FFFFF  # The largest finite float32: sorts after any distance.
_NOT_SIGN = 0x7FFFFFFF          # Clears the sign bit, so that -0.0 sorts like 0.0.


def _check_inputs(labels, embeddings, margin):
  """Returns (int labels [B], C-contiguous float32 embeddings [B, D], float32 margin)."""
  embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
  labels = np.asarray(labels)
  if embeddings.ndim != 2:
    raise ValueError(f"embeddings must have shape [B, D], got {embeddings.shape}.")
  if labels.shape != (embeddings.shape[0],):
    raise ValueError(f"labels must have shape [{embeddings.shape[0]}], got {labels.shape}.")
  if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
    raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}.")
  if not np.isfinite(margin) or margin < 0:
    raise ValueError(f"margin must be finite and >= 0, got {margin}.")
  return labels, embeddings, np.float32(margin)


def pairwise_l2_distances(embeddings: np.ndarray, return_squared: bool = False):
  """Euclidean distances [B, B] in float32 from the Gram matrix, as `tripletjax.distances`.

  Args:
    embeddings: [B, D] float32 embeddings.
    return_squared: also return the clamped squared distances.

  Returns:
    `distances`, or `(distances, squared_distances)`; the diagonal is exactly 0.
  """
  gram = embeddings @ embeddings.T
  squared_norms = np.diagonal(gram).copy()  # From the Gram diagonal, like the JAX side.
  squared = np.add.outer(squared_norms, squared_norms)
  gram *= 2.0
  squared -= gram
  np.maximum(squared, 0.0, out=squared)
  np.fill_diagonal(squared, 0.0)
  distances = np.sqrt(squared, out=gram)
  return (distances, squared) if return_squared else distances


def _same_class(labels: np.ndarray) -> np.ndarray:
  return labels[:, None] == labels[None, :]


def _diagonal(size: int):
  index = np.arange(size)
  return index, index


# ----------------------------------------------------------------------------------------------
# Gradients.


def _safe_reciprocal(values: np.ndarray) -> np.ndarray:
  """1 / values, and 0 where values == 0 (distances: the safe square root's zero gradient)."""
  safe = np.where(values > 0, values, np.float32(np.inf))
  return np.reciprocal(safe, out=safe)


def _gradient_from_dense(embeddings: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
  """d/dx of sum_ij W_ij D_ij for a dense A = W / D [B, B] (float32): see the module doc."""
  gradient = embeddings * (coefficients.sum(axis=1) + coefficients.sum(axis=0))[:, None]
  gradient -= coefficients @ embeddings
  gradient -= coefficients.T @ embeddings
  return gradient


def _gradient_from_entries(embeddings: np.ndarray, rows: np.ndarray, columns: np.ndarray,
                           coefficients: np.ndarray) -> np.ndarray:
  """d/dx of sum_k W_k D[rows_k, columns_k], given A_k = W_k / D[rows_k, columns_k].

  Uses a dense [B, B] A and two matrix products when there are many entries, else gathers.
  """
  batch = embeddings.shape[0]
  coefficients = coefficients.astype(np.float32, copy=False)
  if coefficients.size * 16 < batch * batch:
    differences = embeddings[rows] - embeddings[columns]
    differences *= coefficients[:, None]
    gradient = np.zeros_like(embeddings)
    np.add.at(gradient, rows, differences)
    np.subtract.at(gradient, columns, differences)
    return gradient
  dense = np.zeros((batch, batch), np.float32)
  np.add.at(dense.reshape(-1), rows * batch + columns, coefficients)
  return _gradient_from_dense(embeddings, dense)


# ----------------------------------------------------------------------------------------------
# Sort keys of distance rows.


def _keys32(values: np.ndarray, tags: np.ndarray, anchor_tag: bool) -> np.ndarray:
  """Rows of uint32 keys (value bits << 1 | tag), unsorted; each anchor's key the largest.

  Keys order like (value, tag); equal keys are equal entries.

  Args:
    values: [B, B] float32, >= 0 (-0.0 allowed).
    tags: [B, B] bool; on equal values untagged entries come first.
    anchor_tag: the tag given to the diagonal (each anchor, moved to the end of its row).
  """
  keys = np.bitwise_and(values.view(np.uint32), _NOT_SIGN)
  keys <<= 1
  keys |= tags
  keys[_diagonal(keys.shape[0])] = (_FLOAT32_MAX_BITS << 1) | int(anchor_tag)
  return keys


# ----------------------------------------------------------------------------------------------
# Semi-hard triplet loss.


class _SemiHardPairs(NamedTuple):
  """Every ordered positive pair (i, j), i != j, and the negative chosen for it."""
  row: np.ndarray                # [P] int64 anchor i.
  positive_column: np.ndarray    # [P] int64 j.
  positive_distance: np.ndarray  # [P] float32 D_ij.
  negative_column: np.ndarray    # [P] int64 column of the chosen negative (0 if none).
  negative_distance: np.ndarray  # [P] float32 its distance; 0 if anchor i has no negative.
  has_negative: np.ndarray       # [P] bool


def _semihard_pairs(labels: np.ndarray, distances: np.ndarray) -> _SemiHardPairs:
  """TensorFlow Addons' negative of every positive pair, by one binary search over all rows.

  Keys are row << (31 + c) | distance bits << c | column, c bits per column: among equal
  distances the lowest column is the semi-hard choice and the highest one the fallback.
  """
  batch = labels.shape[0]
  column_bits = max(1, (batch - 1).bit_length())
  if 31 + 2 * column_bits > 64:
    raise ValueError(f"Batches of {batch} do not fit the 64-bit keys.")
  same = _same_class(labels)
  shift = np.uint64(column_bits)
  row_shift = np.uint64(31 + column_bits)
  value_bits = lambda values: (values.view(np.uint32) & np.uint32(_NOT_SIGN)).astype(np.uint64)
  keys = value_bits(distances)
  keys <<= shift
  keys |= np.arange(batch, dtype=np.uint64)[None, :]
  keys |= np.arange(batch, dtype=np.uint64)[:, None] << row_shift
  # Not a negative: the value bits all set, above any finite float, after the row's negatives.
  keys[same] |= np.uint64(_NOT_SIGN) << shift
  keys.sort(axis=1)
  num_negatives = batch - np.count_nonzero(same, axis=1)

  same[_diagonal(batch)] = False  # Now the positive pairs.
  rows, positive_columns = np.nonzero(same)
  positive_distances = distances[rows, positive_columns]
  queries = value_bits(positive_distances)
  queries <<= shift
  queries |= rows.astype(np.uint64) << row_shift
  queries |= np.uint64((1 << column_bits) - 1)
  row_starts = rows * batch
  found = np.searchsorted(keys.reshape(-1), queries, side="right") - row_starts
  count = num_negatives[rows]
  has_negative = count > 0
  chosen = row_starts + np.where(found < count, found, np.maximum(count - 1, 0))
  chosen_keys = keys.reshape(-1)[chosen]
  negative_columns = (chosen_keys & np.uint64((1 << column_bits) - 1)).astype(np.int64)
  negative_bits = ((chosen_keys >> shift) & np.uint64(_NOT_SIGN)).astype(np.uint32)
  negative_distances = np.where(has_negative, negative_bits.view(np.float32), np.float32(0.0))
  negative_columns[~has_negative] = 0
  return _SemiHardPairs(rows, positive_columns, positive_distances, negative_columns,
                        negative_distances, has_negative)


def _semihard_hinge(pairs: _SemiHardPairs, margin) -> np.ndarray:
  return np.maximum(margin + pairs.positive_distance - pairs.negative_distance, np.float32(0.0))


def triplet_semihard_loss(labels, embeddings, margin: float = 1.0) -> float:
  """Semi-hard triplet loss (TensorFlow Addons' semantics, 0 without positive pairs), l2."""
  labels, embeddings, margin = _check_inputs(labels, embeddings, margin)
  pairs = _semihard_pairs(labels, pairwise_l2_distances(embeddings))
  if pairs.row.size == 0:
    return 0.0
  return float(_semihard_hinge(pairs, margin).sum(dtype=np.float64) / pairs.row.size)


def triplet_semihard_loss_and_grad(labels, embeddings, margin: float = 1.0):
  """`triplet_semihard_loss` and its gradient with respect to `embeddings`."""
  labels, embeddings, margin = _check_inputs(labels, embeddings, margin)
  pairs = _semihard_pairs(labels, pairwise_l2_distances(embeddings))
  num_pairs = pairs.row.size
  if num_pairs == 0:
    return 0.0, np.zeros_like(embeddings)
  hinge = _semihard_hinge(pairs, margin)
  loss = float(hinge.sum(dtype=np.float64) / num_pairs)

  # Each active pair adds +1 / P to D[i, j] and -1 / P to D[i, negative] (if i has one).
  active = hinge > 0
  rows = pairs.row[active]
  scale = np.float32(1.0 / num_pairs)
  positive_coefficient = scale * _safe_reciprocal(pairs.positive_distance[active])
  negative_coefficient = -scale * _safe_reciprocal(pairs.negative_distance[active])
  negative_coefficient[~pairs.has_negative[active]] = 0.0
  gradient = _gradient_from_entries(
      embeddings, np.concatenate([rows, rows]),
      np.concatenate([pairs.positive_column[active], pairs.negative_column[active]]),
      np.concatenate([positive_coefficient, negative_coefficient]))
  return loss, gradient


# ----------------------------------------------------------------------------------------------
# Batch-hard triplet loss.


class _HardestPairs(NamedTuple):
  positive_column: np.ndarray    # [B] column of the farthest positive.
  negative_column: np.ndarray    # [B] column of the nearest negative (of the row max if none).
  has_positive: np.ndarray       # [B] bool
  gap: np.ndarray                # [B] float32 hp - hn.


def _hardest_pairs(distances: np.ndarray, labels: np.ndarray) -> _HardestPairs:
  same = _same_class(labels)
  rows = np.arange(labels.shape[0])
  positive_distances = np.where(same, distances, np.float32(-1.0))
  positive_distances[rows, rows] = -1.0
  positive_column = np.argmax(positive_distances, axis=1)
  has_positive = positive_distances[rows, positive_column] >= 0
  hardest_positive = np.where(has_positive, distances[rows, positive_column], np.float32(0.0))
  # Without negatives TFA takes the row maximum (a same-class entry or the diagonal).
  negative_distances = np.where(same, np.float32(np.inf), distances)
  negative_column = np.argmin(negative_distances, axis=1)
  no_negative = np.isinf(negative_distances[rows, negative_column])
  negative_column[no_negative] = np.argmax(distances[no_negative], axis=1)
  hardest_negative = distances[rows, negative_column]
  return _HardestPairs(positive_column, negative_column, has_positive,
                       hardest_positive - hardest_negative)


def _hard_per_anchor(gap: np.ndarray, margin, soft: bool):
  """Per-anchor losses and their derivatives with respect to the gap hp - hn."""
  if soft:
    return np.logaddexp(np.float32(0.0), gap), 0.5 * (1.0 + np.tanh(0.5 * gap))  # sigmoid
  hinge = np.maximum(gap + margin, np.float32(0.0))
  return hinge, (hinge > 0).astype(np.float32)


def triplet_hard_loss(labels, embeddings, margin: float = 1.0, soft: bool = False) -> float:
  """Batch-hard triplet loss (TensorFlow Addons' semantics), l2."""
  labels, embeddings, margin = _check_inputs(labels, embeddings, margin)
  hardest = _hardest_pairs(pairwise_l2_distances(embeddings), labels)
  per_anchor, _ = _hard_per_anchor(hardest.gap, margin, soft)
  return float(per_anchor.mean(dtype=np.float64))


def triplet_hard_loss_and_grad(labels, embeddings, margin: float = 1.0, soft: bool = False):
  """`triplet_hard_loss` and its gradient with respect to `embeddings`."""
  labels, embeddings, margin = _check_inputs(labels, embeddings, margin)
  distances = pairwise_l2_distances(embeddings)
  hardest = _hardest_pairs(distances, labels)
  per_anchor, slope = _hard_per_anchor(hardest.gap, margin, soft)
  batch = labels.shape[0]
  rows = np.arange(batch)
  slope = slope / np.float32(batch)
  positive_coefficient = np.where(hardest.has_positive, slope, np.float32(0.0)) * \
      _safe_reciprocal(distances[rows, hardest.positive_column])
  negative_coefficient = -slope * _safe_reciprocal(distances[rows, hardest.negative_column])
  gradient = _gradient_from_entries(
      embeddings, np.concatenate([rows, rows]),
      np.concatenate([hardest.positive_column, hardest.negative_column]),
      np.concatenate([positive_coefficient, negative_coefficient]))
  return float(per_anchor.mean(dtype=np.float64)), gradient


# ----------------------------------------------------------------------------------------------
# Batch-all triplet loss.


class _BatchAllPositives(NamedTuple):
  """The ordered positive pairs in the sorted rows of shifted distances."""
  position: np.ndarray        # [P] int64 flat sorted position.
  negatives_left: np.ndarray  # [P] int64 number of active triplets (negatives to the left).
  hinge_sum: np.ndarray       # [P] float64 sum of their hinges.
  row_count: np.ndarray       # [B] number of positives of each anchor.


def _batch_all_values(distances: np.ndarray, same: np.ndarray, margin) -> np.ndarray:
  """D + margin for same-class entries (the anchor's own is replaced when sorting), else D."""
  return distances + margin * same


def _batch_all_positives(values: np.ndarray, positions: np.ndarray) -> _BatchAllPositives:
  """Batch-all sums from the sorted rows `values` and the flat sorted `positions` of positives.

  Args:
    values: [B, C] float32 sorted rows (positives first on ties, anchor last).
    positions: [P] ascending flat positions of the positives in `values`.
  """
  batch, num_columns = values.shape
  rows, columns = np.divmod(positions, num_columns)
  row_count = np.bincount(rows, minlength=batch)
  row_first = np.cumsum(row_count) - row_count  # Index in `positions` of each row's first.
  rank = np.arange(positions.size) - row_first[rows]
  negatives_left = columns - rank
  # Sum of the negatives left of each positive: sums of the segments between consecutive
  # positives of a row (one `reduceat` over the flat rows, interleaving segment starts and ends;
  # segments are short, so float32 is exact enough), accumulated along the row in float64.
  segment_start = np.empty_like(positions)
  segment_start[0:1] = 0
  segment_start[1:] = positions[:-1] + 1
  segment_start[rank == 0] = rows[rank == 0] * num_columns
  bounds = np.empty(2 * positions.size, np.int64)
  bounds[0::2], bounds[1::2] = segment_start, positions
  with np.errstate(over="ignore"):  # Unused end-of-row segments may add up several anchors.
    segment_sum = np.add.reduceat(values.reshape(-1), bounds)[0::2].astype(np.float64)
  segment_sum[segment_start == positions] = 0.0  # reduceat gives one element for an empty one.
  running = np.cumsum(segment_sum)
  first = row_first[rows]
  negative_sum = running - (running[first] - segment_sum[first])
  positive_value = values.reshape(-1)[positions].astype(np.float64)
  hinge_sum = negatives_left * positive_value - negative_sum
  return _BatchAllPositives(positions, negatives_left, hinge_sum, row_count)


def batch_all_triplet_loss(labels, embeddings, margin: float = 1.0) -> float:
  """Batch-all triplet loss: mean hinge over the valid triplets with a positive loss, l2."""
  labels, embeddings, margin = _check_inputs(labels, embeddings, margin)
  distances = pairwise_l2_distances(embeddings)
  same = _same_class(labels)
  keys = _keys32(_batch_all_values(distances, same, margin), ~same, anchor_tag=True)
  keys.sort(axis=1)
  positions = np.flatnonzero((keys & 1) == 0)
  if positions.size == 0:
    return 0.0
  values = (keys >> 1).view(np.float32)
  positives = _batch_all_positives(values, positions)
  num_active = positives.negatives_left.sum()
  return float(positives.hinge_sum.sum() / num_active) if num_active else 0.0


def batch_all_triplet_loss_and_grad(labels, embeddings, margin: float = 1.0):
  """`batch_all_triplet_loss` and its gradient with respect to `embeddings`."""
  labels, embeddings, margin = _check_inputs(labels, embeddings, margin)
  distances = pairwise_l2_distances(embeddings)
  same = _same_class(labels)
  keys = _keys32(_batch_all_values(distances, same, margin), ~same, anchor_tag=True)
  # The permutation sends the gradient back to the original columns. Equal keys are entries
  # with the same value and tag, whose gradients are equal: their order does not matter.
  order = np.argsort(keys, axis=1)
  keys = np.take_along_axis(keys, order, axis=1)
  batch, num_columns = keys.shape
  positions = np.flatnonzero((keys & 1) == 0)
  if positions.size == 0:
    return 0.0, np.zeros_like(embeddings)
  values = (keys >> 1).view(np.float32)
  positives = _batch_all_positives(values, positions)
  num_active = positives.negatives_left.sum()
  if num_active == 0:
    return 0.0, np.zeros_like(embeddings)
  loss = float(positives.hinge_sum.sum() / num_active)

  # d hinge_sum / d value, in sorted order: +(negatives to the left) for a positive,
  # -(positives to the right) for a negative; the anchor (last) gets 0.
  sorted_gradient = np.zeros((batch, num_columns), np.float32)
  flat_gradient = sorted_gradient.reshape(-1)
  flat_gradient[positions] = 1.0
  np.cumsum(sorted_gradient, axis=1, out=sorted_gradient)  # Positives so far (exact integers).
  sorted_gradient -= positives.row_count[:, None].astype(np.float32)
  flat_gradient[positions] = positives.negatives_left
  # Back to the original columns, then divided by the distances.
  order += (np.arange(batch) * num_columns)[:, None]
  coefficients = np.empty(batch * num_columns, np.float32)
  coefficients[order.reshape(-1)] = flat_gradient
  coefficients = coefficients.reshape(batch, num_columns)
  coefficients *= _safe_reciprocal(distances)
  gradient = _gradient_from_dense(embeddings, coefficients)
  gradient *= np.float32(1.0 / num_active)
  return loss, gradient


# ----------------------------------------------------------------------------------------------
# Contrastive loss over all pairs.


def _contrastive_parts(labels, embeddings, margin):
  distances, squared = pairwise_l2_distances(embeddings, return_squared=True)
  same = _same_class(labels)
  shortfall = np.maximum(margin - distances, np.float32(0.0))  # max(m - d, 0)
  shortfall[same] = 0.0
  batch = labels.shape[0]
  num_pairs = batch * (batch - 1) // 2
  # Every unordered pair appears twice in the full matrix; the diagonal terms are 0.
  total = (np.sum(np.where(same, squared, np.float32(0.0)), dtype=np.float64)
           + np.sum(shortfall * shortfall, dtype=np.float64))
  loss = 0.25 * total / num_pairs if num_pairs else 0.0
  return loss, distances, same, shortfall, num_pairs


def contrastive_loss(labels, embeddings, margin: float = 1.0) -> float:
  """Contrastive loss over all unordered pairs, y = 1 for the same class, l2.

  0.5 * mean over i < j of (y d^2 + (1 - y) max(margin - d, 0)^2); 0 when B < 2.
  """
  labels, embeddings, margin = _check_inputs(labels, embeddings, margin)
  return float(_contrastive_parts(labels, embeddings, margin)[0])


def contrastive_loss_and_grad(labels, embeddings, margin: float = 1.0):
  """`contrastive_loss` and its gradient with respect to `embeddings`."""
  labels, embeddings, margin = _check_inputs(labels, embeddings, margin)
  loss, distances, same, shortfall, num_pairs = _contrastive_parts(labels, embeddings, margin)
  if num_pairs == 0:
    return 0.0, np.zeros_like(embeddings)
  # Over the full symmetric matrix, dL/dD_ij = (d or -max(m - d, 0)) / (2 N); A = that / d.
  coefficients = shortfall
  coefficients *= _safe_reciprocal(distances)
  np.negative(coefficients, out=coefficients)
  coefficients[same & (distances > 0)] = 1.0
  coefficients *= np.float32(0.5 / num_pairs)
  # A is symmetric: rowsum + colsum = 2 rowsum and A X + A^T X = 2 A X.
  gradient = embeddings * (2.0 * coefficients.sum(axis=1))[:, None]
  gradient -= 2.0 * (coefficients @ embeddings)
  return float(loss), gradient


FORWARD = {
    "semihard": triplet_semihard_loss,
    "hard": triplet_hard_loss,
    "batch_all": batch_all_triplet_loss,
    "contrastive": contrastive_loss,
}
"""Forward functions by the benchmark's loss name: f(labels, embeddings, margin) -> float."""

FORWARD_AND_BACKWARD = {
    "semihard": triplet_semihard_loss_and_grad,
    "hard": triplet_hard_loss_and_grad,
    "batch_all": batch_all_triplet_loss_and_grad,
    "contrastive": contrastive_loss_and_grad,
}
"""Forward+backward functions: f(labels, embeddings, margin) -> (loss, d loss / d embeddings)."""
