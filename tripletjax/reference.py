"""NumPy reference implementation of every loss, written for clarity rather than speed.

Why not the package's miners: the reference is the definitions written literally (loops in
float64), so that the tests compare the fast miners with something plainly right.

This module is the ground truth that the tests and benchmarks compare `tripletjax.losses`
against, so it follows the published definitions literally and shares no code with the JAX
implementation:

  * semi-hard and hard: TensorFlow Addons' `triplet_semihard_loss` and `triplet_hard_loss`
    (tensorflow_addons/losses/triplet.py), except that a batch without a positive pair gives 0
    where TFA gives NaN;
  * batch-all: O. Moindrot, "Triplet Loss and Online Triplet Mining in TensorFlow" (2018);
  * contrastive: Hadsell, Chopra and LeCun, 2006, L = 0.5 * (y d^2 + (1 - y) max(m - d, 0)^2);
  * explicit triplets: the Keras "Image similarity estimation using a Siamese Network with a
    triplet loss" example, max(||a - p||^2 - ||a - n||^2 + m, 0);
  * multi-similarity (with its miner), NT-Xent, SupCon and the cross-batch memory:
    pytorch-metric-learning 2.9's `MultiSimilarityLoss`, `MultiSimilarityMiner`, `NTXentLoss`,
    `SupConLoss` and `CrossBatchMemory` on cosine similarities, their quirks included.

How it is written:

  * everything is computed in float64 from the inputs (half-precision inputs are upcast);
  * distances come from exact differences x_i - x_j, never from the Gram-matrix identity;
  * distances and mining are explicit loops over rows, anchors and positive pairs, vectorised
    at most over one row (so a B=130 batch is still compared in tens of milliseconds).

Functions have the same names, signatures and statistics keys as the JAX API; they return
Python floats (and dicts of Python floats when `return_stats=True`).

Label convention of the contrastive losses: 1 (or True) means "same class", 0 "different".
"""

from __future__ import annotations

import numpy as np

METRICS = ("l2", "squared_l2", "angular")

# Batch-all averages only over triplets whose loss exceeds this (Moindrot's "positive" triplets).
ACTIVE_TRIPLET_THRESHOLD = 1e-16

# Same guard as tf.math.l2_normalize: x / sqrt(max(sum(x^2), eps)), so a zero row stays zero.
_L2_NORMALIZE_EPS = 1e-12


def _as_float64_matrix(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must have shape [B, D], got shape {x.shape}.")
  # astype (not np.asarray(..., dtype)) so bfloat16 arrays from ml_dtypes are converted too.
  return x.astype(np.float64)


def _check_metric(metric: str) -> None:
  if metric not in METRICS:
    raise ValueError(f"Unknown metric {metric!r}; expected one of {METRICS}.")


def _check_margin(margin: float) -> None:
  if not np.isfinite(margin) or margin < 0:
    raise ValueError(f"margin must be finite and >= 0, got {margin}.")


def _check_labels(labels, num_rows: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must have shape [B], got shape {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}.")
  if labels.shape[0] != num_rows:
    raise ValueError(f"labels has {labels.shape[0]} entries but embeddings has {num_rows} rows.")
  return labels


def _l2_normalize(rows: np.ndarray) -> np.ndarray:
  squared_norms = np.sum(rows * rows, axis=-1, keepdims=True)
  return rows / np.sqrt(np.maximum(squared_norms, _L2_NORMALIZE_EPS))


def _distances_from_row(row: np.ndarray, others: np.ndarray, metric: str) -> np.ndarray:
  """Distances from one float64 vector `row` [D] to every row of `others` [C, D]."""
  if metric == "angular":
    unit_row, unit_others = _l2_normalize(row), _l2_normalize(others)
    distances = np.maximum(1.0 - unit_others @ unit_row, 0.0)
    # Identical directions are exactly 0 apart; 1 - dot would leave float64 rounding noise
    # (~1e-16) that could flip the strict ">" of semi-hard mining between duplicates.
    distances[np.all(unit_others == unit_row, axis=1)] = 0.0
    return distances
  differences = others - row  # Exact differences, not |x|^2 + |y|^2 - 2 x.y.
  squared = np.sum(differences * differences, axis=1)
  return squared if metric == "squared_l2" else np.sqrt(squared)


def pairwise_distances(x, y=None, metric: str = "l2") -> np.ndarray:
  """Distances between the rows of `x` and the rows of `y` (default: `x` itself).

  Args:
    x: [B, D] embeddings.
    y: optional [C, D] embeddings; when omitted the self-distances of `x` are returned, with an
      exactly-zero diagonal for every metric.
    metric: "l2" (Euclidean), "squared_l2", or "angular" (max(1 - cosine, 0) of the
      L2-normalised rows).

  Returns:
    [B, C] float64 array.
  """
  _check_metric(metric)
  x = _as_float64_matrix(x, "x")
  self_distances = y is None
  y = x if self_distances else _as_float64_matrix(y, "y")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x and y must have the same feature size, got {x.shape} and {y.shape}.")
  distances = np.array([_distances_from_row(row, y, metric) for row in x], np.float64).reshape(
      x.shape[0], y.shape[0])
  if self_distances:
    np.fill_diagonal(distances, 0.0)  # A point is at distance exactly 0 from itself.
  return distances


def _prepare_mined_loss(labels, embeddings, margin: float, metric: str):
  """Checks the inputs and returns (labels, distance matrix)."""
  _check_metric(metric)
  _check_margin(margin)
  embeddings = _as_float64_matrix(embeddings, "embeddings")
  labels = _check_labels(labels, embeddings.shape[0])
  return labels, pairwise_distances(embeddings, metric=metric)


def triplet_semihard_loss(labels, embeddings, margin: float = 1.0, metric: str = "l2",
                          return_stats: bool = False):
  """Semi-hard triplet loss with TensorFlow Addons' semantics (finite without positives).

  For every ordered positive pair (i, j), i != j, the negative is the closest negative of anchor
  i that is strictly farther than D[i, j]; if there is none, the farthest negative of i; if i has
  no negative at all, 0. The loss is the mean of max(margin + D[i, j] - negative, 0) over all
  ordered positive pairs, and 0.0 when there is no positive pair (TFA returns NaN there).

  Args:
    labels: [B] integer class ids.
    embeddings: [B, D] embeddings.
    margin: hinge margin, >= 0.
    metric: "l2", "squared_l2" or "angular".
    return_stats: also return the mining statistics.

  Returns:
    The loss as a float, or `(loss, stats)` with stats keys `num_positive_pairs`,
    `fraction_active`, `num_fallback`, `mean_positive_distance`, `mean_negative_distance`.
  """
  labels, distances = _prepare_mined_loss(labels, embeddings, margin, metric)
  batch_size = labels.shape[0]

  total_loss = 0.0
  num_positive_pairs = num_active = num_fallback = 0
  sum_positive_distance = sum_negative_distance = 0.0
  for i in range(batch_size):
    negative_distances = distances[i][labels != labels[i]]
    for j in range(batch_size):
      if j == i or labels[j] != labels[i]:
        continue
      positive_distance = distances[i, j]
      if negative_distances.size == 0:
        negative_distance = 0.0  # TFA's masked maximum of an empty row.
      else:
        farther = negative_distances[negative_distances > positive_distance]  # Strict >.
        if farther.size > 0:
          negative_distance = float(farther.min())  # The semi-hard negative.
        else:
          negative_distance = float(negative_distances.max())  # Fallback: farthest negative.
          num_fallback += 1
      pair_loss = max(margin + positive_distance - negative_distance, 0.0)
      total_loss += pair_loss
      num_positive_pairs += 1
      num_active += pair_loss > 0
      sum_positive_distance += positive_distance
      sum_negative_distance += negative_distance

  loss = total_loss / num_positive_pairs if num_positive_pairs else 0.0
  if not return_stats:
    return loss
  stats = {
      "num_positive_pairs": float(num_positive_pairs),
      "fraction_active": _safe_ratio(num_active, num_positive_pairs),
      "num_fallback": float(num_fallback),
      "mean_positive_distance": _safe_ratio(sum_positive_distance, num_positive_pairs),
      "mean_negative_distance": _safe_ratio(sum_negative_distance, num_positive_pairs),
  }
  return loss, stats


def triplet_hard_loss(labels, embeddings, margin: float = 1.0, soft: bool = False,
                      metric: str = "l2", return_stats: bool = False):
  """Batch-hard triplet loss with TensorFlow Addons' semantics.

  Per anchor i: hardest positive hp = max of D[i, j] over positives j != i (0 if none); hardest
  negative hn = min of D[i, k] over negatives k (if none: the maximum of row i of D, diagonal
  included). loss_i = max(hp - hn + margin, 0), or log1p(exp(hp - hn)) when `soft` (the margin is
  then ignored). The loss is the mean of loss_i over all B anchors.

  Args:
    labels: [B] integer class ids.
    embeddings: [B, D] embeddings.
    margin: hinge margin, >= 0.
    soft: use the soft-plus of hp - hn instead of the hinge.
    metric: "l2", "squared_l2" or "angular".
    return_stats: also return the mining statistics.

  Returns:
    The loss as a float, or `(loss, stats)` with stats keys `num_valid_anchors`,
    `fraction_active`, `mean_positive_distance`, `mean_negative_distance`.
  """
  labels, distances = _prepare_mined_loss(labels, embeddings, margin, metric)
  batch_size = labels.shape[0]

  anchor_losses, hardest_positives, hardest_negatives = [], [], []
  num_valid_anchors = 0
  for i in range(batch_size):
    is_positive = (labels == labels[i]) & (np.arange(batch_size) != i)
    is_negative = labels != labels[i]
    hardest_positive = float(distances[i][is_positive].max()) if is_positive.any() else 0.0
    if is_negative.any():
      hardest_negative = float(distances[i][is_negative].min())
    else:
      hardest_negative = float(distances[i].max())
    difference = hardest_positive - hardest_negative
    if soft:
      anchor_loss = float(np.logaddexp(0.0, difference))  # log1p(exp(d)) without overflow.
    else:
      anchor_loss = max(difference + margin, 0.0)
    anchor_losses.append(anchor_loss)
    hardest_positives.append(hardest_positive)
    hardest_negatives.append(hardest_negative)
    num_valid_anchors += bool(is_positive.any() and is_negative.any())

  loss = float(np.mean(anchor_losses))
  if not return_stats:
    return loss
  stats = {
      "num_valid_anchors": float(num_valid_anchors),
      "fraction_active": float(np.mean([anchor_loss > 0 for anchor_loss in anchor_losses])),
      "mean_positive_distance": float(np.mean(hardest_positives)),
      "mean_negative_distance": float(np.mean(hardest_negatives)),
  }
  return loss, stats


def batch_all_triplet_loss(labels, embeddings, margin: float = 1.0, metric: str = "l2",
                           return_stats: bool = False):
  """Batch-all triplet loss (Moindrot): mean hinge over the triplets that still have a loss.

  Valid triplets are all (a, p, n) with a != p, y_a == y_p and y_a != y_n. The loss is the mean
  of max(D[a, p] - D[a, n] + margin, 0) over the valid triplets whose loss is > 1e-16, and 0.0
  when there is none.

  Args:
    labels: [B] integer class ids.
    embeddings: [B, D] embeddings.
    margin: hinge margin, >= 0.
    metric: "l2", "squared_l2" or "angular".
    return_stats: also return the mining statistics.

  Returns:
    The loss as a float, or `(loss, stats)` with stats keys `num_valid_triplets`,
    `num_active_triplets`, `fraction_active`.
  """
  labels, distances = _prepare_mined_loss(labels, embeddings, margin, metric)
  batch_size = labels.shape[0]

  total_active_loss = 0.0
  num_valid = num_active = 0
  for anchor in range(batch_size):
    negative_distances = distances[anchor][labels != labels[anchor]]
    for positive in range(batch_size):
      if positive == anchor or labels[positive] != labels[anchor]:
        continue
      # All negatives n of this (anchor, positive) at once: one triplet per entry.
      triplet_losses = np.maximum(distances[anchor, positive] - negative_distances + margin, 0.0)
      active = triplet_losses > ACTIVE_TRIPLET_THRESHOLD
      num_valid += triplet_losses.size
      num_active += int(active.sum())
      total_active_loss += float(triplet_losses[active].sum())

  loss = total_active_loss / num_active if num_active else 0.0
  if not return_stats:
    return loss
  stats = {
      "num_valid_triplets": float(num_valid),
      "num_active_triplets": float(num_active),
      "fraction_active": _safe_ratio(num_active, num_valid),
  }
  return loss, stats


def _contrastive_term(same: bool, distance: float, margin: float) -> float:
  """y * d^2 + (1 - y) * max(m - d, 0)^2 for one pair (without the 0.5 factor)."""
  if same:
    return distance**2
  return max(margin - distance, 0.0)**2


def contrastive_loss(labels, embeddings, margin: float = 1.0, metric: str = "l2",
                     return_stats: bool = False):
  """Contrastive loss over all unordered pairs i < j of the batch.

  With y = 1 for a same-class pair and 0 otherwise, and d the pair's distance:
  loss = 0.5 * mean(y * d^2 + (1 - y) * max(margin - d, 0)^2); 0.0 when B < 2.

  Args:
    labels: [B] integer class ids.
    embeddings: [B, D] embeddings.
    margin: margin of the negative pairs, >= 0.
    metric: "l2", "squared_l2" or "angular".
    return_stats: also return the pair statistics.

  Returns:
    The loss as a float, or `(loss, stats)` with stats keys `num_positive_pairs`,
    `num_negative_pairs`, `fraction_active`.
  """
  labels, distances = _prepare_mined_loss(labels, embeddings, margin, metric)
  batch_size = labels.shape[0]

  terms = []
  num_positive_pairs = num_negative_pairs = 0
  for i in range(batch_size):
    for j in range(i + 1, batch_size):
      same = bool(labels[i] == labels[j])
      terms.append(_contrastive_term(same, distances[i, j], margin))
      num_positive_pairs += same
      num_negative_pairs += not same

  loss = 0.5 * float(np.mean(terms)) if terms else 0.0
  if not return_stats:
    return loss
  stats = {
      "num_positive_pairs": float(num_positive_pairs),
      "num_negative_pairs": float(num_negative_pairs),
      "fraction_active": _safe_ratio(sum(term > 0 for term in terms), len(terms)),
  }
  return loss, stats


def contrastive_pair_loss(same, left, right, margin: float = 1.0) -> float:
  """Contrastive loss of given pairs: 0.5 * mean(y d^2 + (1 - y) max(m - d, 0)^2).

  Args:
    same: [N] labels in {0, 1}; 1 (True) means the two rows show the same class.
    left: [N, D] first embedding of each pair.
    right: [N, D] second embedding of each pair.
    margin: margin of the different-class pairs, >= 0.

  Returns:
    The loss as a float; d is the Euclidean distance between left[n] and right[n].
  """
  _check_margin(margin)
  left = _as_float64_matrix(left, "left")
  right = _as_float64_matrix(right, "right")
  same = np.asarray(same)
  if left.shape != right.shape or same.shape != (left.shape[0],):
    raise ValueError(
        f"Expected same [N], left and right [N, D]; got {same.shape}, {left.shape}, "
        f"{right.shape}.")
  terms = [
      _contrastive_term(bool(same[n]), float(np.linalg.norm(left[n] - right[n])), margin)
      for n in range(left.shape[0])
  ]
  return 0.5 * float(np.mean(terms)) if terms else 0.0


def triplet_loss(anchor, positive, negative, margin: float = 0.5) -> float:
  """Explicit triplet loss: mean over rows of max(|a - p|^2 - |a - n|^2 + margin, 0).

  Args:
    anchor: [N, D] anchor embeddings.
    positive: [N, D] embeddings of the anchors' class.
    negative: [N, D] embeddings of another class.
    margin: hinge margin, >= 0.

  Returns:
    The loss as a float.
  """
  _check_margin(margin)
  anchor = _as_float64_matrix(anchor, "anchor")
  positive = _as_float64_matrix(positive, "positive")
  negative = _as_float64_matrix(negative, "negative")
  if not anchor.shape == positive.shape == negative.shape:
    raise ValueError(
        f"anchor, positive and negative must have the same shape, got {anchor.shape}, "
        f"{positive.shape}, {negative.shape}.")
  row_losses = [
      max(np.sum((anchor[n] - positive[n])**2) - np.sum((anchor[n] - negative[n])**2) + margin,
          0.0)
      for n in range(anchor.shape[0])
  ]
  return float(np.mean(row_losses)) if row_losses else 0.0


# ----------------------------------------------------------------------------------------------
# Losses of cosine similarities, as pytorch-metric-learning 2.9 computes them.

# torch.nn.functional.normalize: x / max(|x|, 1e-12).
_TORCH_NORMALIZE_EPS = 1e-12


def _cosine_similarities(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """[B, R] cosine similarities of the float64 rows of x and y, each divided by max(|.|, 1e-12)."""
  unit = lambda rows: rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True),
                                        _TORCH_NORMALIZE_EPS)
  return unit(x) @ unit(y).T


def _similarity_pairs(labels, embeddings, references=None):
  """(similarities [B, R], positive, negative, miner_positive [B, R] bool) of a batch.

  Without `references` the batch is compared with itself: positives are the other same-label
  rows. With `references = (reference_labels [R], reference_embeddings [R, D], own_slot [B])`
  (a cross-batch memory, the batch already in it) positives are the same-label references
  but each anchor's own slot, which the multi-similarity miner still counts as a positive
  (pytorch-metric-learning removes the self-comparisons after mining).
  """
  embeddings = _as_float64_matrix(embeddings, "embeddings")
  labels = _check_labels(labels, embeddings.shape[0])
  if references is None:
    reference_labels, reference_embeddings = labels, embeddings
    own_slot = np.arange(labels.shape[0])
  else:
    reference_labels, reference_embeddings, own_slot = references
    reference_embeddings = _as_float64_matrix(reference_embeddings, "reference_embeddings")
  similarities = _cosine_similarities(embeddings, reference_embeddings)
  same = labels[:, None] == np.asarray(reference_labels)[None, :]
  own = np.arange(same.shape[1])[None, :] == np.asarray(own_slot)[:, None]
  positive = same & ~own
  miner_positive = positive if references is None else same
  return similarities, positive, ~same, miner_positive


def _log_one_plus_sum_exp(values) -> float:
  """log(1 + sum exp(values)) in float64, without overflow."""
  return float(np.logaddexp.reduce(np.concatenate([[0.0], np.asarray(values, np.float64)])))


def _too_few_pairs(num_positive: int, num_negative: int) -> bool:
  """pytorch-metric-learning's `GenericPairLoss` gives 0 for at most one pair of each kind."""
  return num_positive <= 1 and num_negative <= 1


def _mean_similarities(similarities, positive, negative) -> dict:
  return {"mean_positive_similarity": _safe_ratio(similarities[positive].sum(), positive.sum()),
          "mean_negative_similarity": _safe_ratio(similarities[negative].sum(), negative.sum())}


def multi_similarity_loss(labels, embeddings, alpha: float = 2.0, beta: float = 50.0,
                          base: float = 0.5, epsilon: float = 0.1, mining: bool = True,
                          return_stats: bool = False, references=None):
  """Multi-similarity loss: `MultiSimilarityLoss(alpha, beta, base)` of pytorch-metric-learning,
  after `MultiSimilarityMiner(epsilon)` when `mining`.

  The miner keeps a positive (a, p) if s_ap - epsilon < max_n s_an and a negative (a, n) if
  s_an + epsilon > min_p s_ap, and nothing at all if the batch has no positive or no negative
  pair. Per anchor, over its kept pairs,
  (1/alpha) log(1 + sum_p exp(alpha (base - s_ap))) + (1/beta) log(1 + sum_n exp(beta (s_an - base)));
  the loss is the mean over all anchors (0 if at most one pair of each kind is kept).
  `references`: see `_similarity_pairs` (the cross-batch memory).

  Returns:
    The loss as a float, or `(loss, stats)` with the stats keys of
    `tripletjax.multi_similarity_loss`.
  """
  similarities, positive, negative, miner_positive = _similarity_pairs(labels, embeddings,
                                                                       references)
  keep_positive, keep_negative = positive.copy(), negative.copy()
  if mining:
    if not miner_positive.any() or not negative.any():
      keep_positive[:], keep_negative[:] = False, False
    for a, row in enumerate(similarities):
      hardest_negative = row[negative[a]].max() if negative[a].any() else -np.inf
      hardest_positive = row[miner_positive[a]].min() if miner_positive[a].any() else np.inf
      keep_positive[a] &= row - epsilon < hardest_negative
      keep_negative[a] &= row + epsilon > hardest_positive
  per_anchor = [
      _log_one_plus_sum_exp(alpha * (base - row[keep_positive[a]])) / alpha
      + _log_one_plus_sum_exp(beta * (row[keep_negative[a]] - base)) / beta
      for a, row in enumerate(similarities)]
  num_positive, num_negative = int(keep_positive.sum()), int(keep_negative.sum())
  loss = 0.0 if _too_few_pairs(num_positive, num_negative) else float(np.mean(per_anchor))
  if not return_stats:
    return loss
  return loss, {"num_positive_pairs": int(positive.sum()),
                "num_negative_pairs": int(negative.sum()),
                "fraction_positive_mined": _safe_ratio(num_positive, positive.sum()),
                "fraction_negative_mined": _safe_ratio(num_negative, negative.sum()),
                **_mean_similarities(similarities, positive, negative)}


def ntxent_loss(labels, embeddings, temperature: float = 0.07, return_stats: bool = False,
                references=None):
  """NT-Xent: `NTXentLoss(temperature)` of pytorch-metric-learning on a labelled batch.

  Per positive pair (a, p): log(exp(s_ap / t) + sum_n exp(s_an / t)) - s_ap / t over a's
  negatives n; the mean over positive pairs, 0 without positive or negative pairs.
  """
  similarities, positive, negative, _ = _similarity_pairs(labels, embeddings, references)
  logits = similarities / temperature
  num_positive, num_negative = int(positive.sum()), int(negative.sum())
  pair_losses = [float(np.logaddexp.reduce(np.concatenate([[logits[a, p]],
                                                           logits[a][negative[a]]]))
                       - logits[a, p])
                 for a, p in zip(*np.nonzero(positive))]
  empty = num_positive == 0 or num_negative == 0 or _too_few_pairs(num_positive, num_negative)
  loss = 0.0 if empty else float(np.mean(pair_losses))
  if not return_stats:
    return loss
  return loss, {"num_positive_pairs": num_positive, "num_negative_pairs": num_negative,
                **_mean_similarities(similarities, positive, negative)}


def supcon_loss(labels, embeddings, temperature: float = 0.1, return_stats: bool = False,
                references=None):
  """SupCon: `SupConLoss(temperature)` of pytorch-metric-learning.

  Per anchor a with positives: -mean_p (s_ap / t - log sum_{j != a} exp(s_aj / t)); the mean
  over the anchors whose loss is > 0 (`AvgNonZeroReducer`), 0 without positive or negative
  pairs.
  """
  similarities, positive, negative, _ = _similarity_pairs(labels, embeddings, references)
  logits = similarities / temperature
  num_positive, num_negative = int(positive.sum()), int(negative.sum())
  per_anchor = []
  for a, row in enumerate(logits):
    if positive[a].any():
      log_denominator = np.logaddexp.reduce(row[positive[a] | negative[a]])
      per_anchor.append(-float(np.mean(row[positive[a]] - log_denominator)))
  counted = [value for value in per_anchor if value > 0]
  empty = num_positive == 0 or num_negative == 0 or _too_few_pairs(num_positive, num_negative)
  loss = 0.0 if empty or not counted else float(np.mean(counted))
  if not return_stats:
    return loss
  return loss, {"num_positive_pairs": num_positive, "num_negative_pairs": num_negative,
                "num_anchors_in_mean": 0 if empty else len(counted),
                **_mean_similarities(similarities, positive, negative)}


class CrossBatchMemory:
  """pytorch-metric-learning's `CrossBatchMemory(loss, embedding_size, memory_size)`, in NumPy.

  Each call first writes the batch into a ring buffer at the write position (wrapping), then
  returns the loss of the batch's anchors against the filled part of the memory (the batch
  included), each anchor's own slot excluded from its positives.

  Args:
    loss: `multi_similarity_loss`, `ntxent_loss` or `supcon_loss` of this module.
    embedding_size: D.
    memory_size: M >= the batch size.
  """

  def __init__(self, loss, embedding_size: int, memory_size: int):
    self.loss = loss
    self.embeddings = np.zeros((memory_size, embedding_size), np.float64)
    self.labels = np.zeros(memory_size, np.int64)
    self.count = 0
    self.position = 0

  def __call__(self, labels, embeddings, **options):
    embeddings = _as_float64_matrix(embeddings, "embeddings")
    memory_size = self.labels.shape[0]
    slots = (self.position + np.arange(embeddings.shape[0])) % memory_size
    self.embeddings[slots] = embeddings
    self.labels[slots] = labels
    self.count = min(self.count + embeddings.shape[0], memory_size)
    self.position = (self.position + embeddings.shape[0]) % memory_size
    references = (self.labels[:self.count], self.embeddings[:self.count], slots)
    return self.loss(labels, embeddings, references=references, **options)


def _safe_ratio(numerator: float, denominator: float) -> float:
  """numerator / denominator, and 0.0 when there is nothing to divide by."""
  return float(numerator) / float(denominator) if denominator else 0.0


# The reference of every loss of `tripletjax.losses.MINED_LOSSES`, by the same names.
MINED_LOSSES = {
    "semihard": triplet_semihard_loss,
    "hard": triplet_hard_loss,
    "batch_all": batch_all_triplet_loss,
    "contrastive": contrastive_loss,
    "multi_similarity": multi_similarity_loss,
    "ntxent": ntxent_loss,
    "supcon": supcon_loss,
}
