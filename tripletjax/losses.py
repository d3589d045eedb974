"""Triplet and contrastive losses: pure functions of `labels[B]` and `embeddings[B, D]`.

Semantics follow the references exactly (TensorFlow Addons for the semi-hard and hard losses,
Moindrot's batch-all, the contrastive and explicit triplet losses of the seeds), with two
deliberate differences that only remove failures:
  * a batch without any positive pair (or valid triplet) gives a loss of 0, not NaN; the
    statistics say so (`num_positive_pairs == 0`);
  * distances are computed in float32 whatever the input dtype (TFA does the same), and the loss
    is returned in the input dtype.

Every mined loss takes `return_stats=True` to return `(loss, stats)`, where `stats` is a dict of
float32/int32 scalars describing the mining (fraction of active triplets, fallbacks, ...).
Memory is O(B^2) throughout; on finite inputs nothing is NaN, gradients included.

NaN in gives NaN out: when any embedding entry is NaN or infinite, every loss returns NaN, its
gradient is NaN in every row, and so is every floating-point statistic (the integer counts are
then meaningless). A miner alone would hide a diverged model: it treats a NaN distance as
some number, so the semi-hard loss of a batch with one NaN row came out finite while its
gradient was NaN. The check is one `isfinite` reduction over the embeddings; on finite inputs
values and gradients are bit-for-bit what they are without it.

References:
  Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and Clustering", 2015.
  Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification", 2017.
  Hadsell et al., "Dimensionality Reduction by Learning an Invariant Mapping", 2006.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp

from tripletjax import distances as distances_lib
from tripletjax import mining
from tripletjax import validation


# The miners process at most this many distance-matrix entries at once (about 200 MB of working
# set); larger batches are processed in blocks of anchor rows, which bounds peak memory by what
# the backward pass keeps per entry (4 bytes for semi-hard, nothing for batch-hard) instead of
# ~50 bytes.
_BLOCK_ENTRIES = 2048 * 2048


def _prepare(labels, embeddings, margin, metric):
  """Checks the inputs.

  Returns:
    (labels, input dtype, float32 embeddings, float32 margin, finite): `finite` says whether
    every embedding entry is finite (see `_poison_unless_finite`).
  """
  labels, embeddings = validation.check_labels_and_embeddings(labels, embeddings)
  validation.check_metric(metric)
  validation.check_margin(margin)
  (float_embeddings,), finite = _poison_unless_finite(embeddings.astype(jnp.float32))
  return (labels, embeddings.dtype, float_embeddings, jnp.asarray(margin, jnp.float32), finite)


def _poison_unless_finite(*arrays):
  """`(arrays, finite)`: the arrays unchanged, but their gradients NaN unless all are finite.

  `finite` says whether every entry of every array is finite; the losses select NaN for their
  value when it is not (`_finish`), because a miner need not turn a NaN distance into a NaN
  loss, and this makes the gradient of every input NaN as well (a `where` alone would give
  zeros). The forward values are untouched, so finite inputs give the same bits as without it.
  """
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))
  return tuple(_nan_gradient_unless(a, finite) for a in arrays), finite


@jax.custom_jvp
def _nan_gradient_unless(x, finite):
  """The identity, whose derivative is NaN unless `finite` (a traced bool)."""
  del finite
  return x


@_nan_gradient_unless.defjvp
def _nan_gradient_unless_jvp(primals, tangents):
  x, finite = primals
  scale = jnp.where(finite, 1.0, jnp.nan).astype(x.dtype)
  # The barrier keeps XLA from fusing the scaling into the gradient's computation, which could
  # change its rounding.
  return x, jax.lax.optimization_barrier(tangents[0]) * scale


def _over_anchor_blocks(block_fn, embeddings, metric, *, recompute_block: bool):
  """Applies `block_fn(block_distances[C, B], anchor_index[C])` to blocks covering all anchors.

  One block (the whole [B, B] matrix, C = B) when the batch is small; otherwise a `lax.scan`
  over blocks of anchor rows whose distance rows are computed inside the block; `anchor_index`
  is -1 on the padding rows of the last block. Each block's distances are recomputed in the
  backward pass (one matmul) instead of all being kept alive: that saves ~5 bytes per matrix
  entry of peak memory. With `recompute_block`, the whole block is (for miners without a
  custom gradient, whose autodiff residuals would otherwise be [C, B] arrays).

  Returns:
    The outputs of `block_fn`, stacked over blocks: [num_blocks, ...] each.
  """
  batch = embeddings.shape[0]
  if batch * batch <= _BLOCK_ENTRIES:
    distances = distances_lib.pairwise_distances(embeddings, metric=metric)
    outputs = block_fn(distances, jnp.arange(batch, dtype=jnp.int32))
    return jax.tree.map(lambda x: x[None], outputs)
  rows_per_block = max(1, _BLOCK_ENTRIES // batch)
  num_blocks = -(-batch // rows_per_block)
  anchor_index = jnp.arange(num_blocks * rows_per_block, dtype=jnp.int32)
  anchor_index = jnp.where(anchor_index < batch, anchor_index, -1)  # -1: padding rows.
  squared_norms = jnp.sum(embeddings * embeddings, axis=1)
  block_distances_fn = jax.checkpoint(distances_lib.anchor_distances, static_argnums=(2,))

  def one_block(block_index):
    return block_fn(block_distances_fn(embeddings, block_index, metric, squared_norms),
                    block_index)

  if recompute_block:
    one_block = jax.checkpoint(one_block)
  _, outputs = jax.lax.scan(lambda carry, index: (carry, one_block(index)), None,
                            anchor_index.reshape(num_blocks, rows_per_block))
  return outputs


def _sum_over_anchor_blocks(sums_fn, labels, embeddings, margin, metric):
  """Sums of a block miner (`mining.semihard_sums`, `mining.batch_all_sums`) over all anchors."""
  per_block = _over_anchor_blocks(
      lambda distances, anchor_index: sums_fn(distances, anchor_index, labels, margin),
      embeddings, metric, recompute_block=False)
  return jax.tree.map(lambda x: jnp.sum(x, axis=0), per_block)


def _map_over_anchor_blocks(block_fn, labels, embeddings, metric):
  """Per-anchor results of `block_fn(block_distances, labels, anchor_index)`: [B, ...] each."""
  per_block = _over_anchor_blocks(
      lambda distances, anchor_index: block_fn(distances, labels, anchor_index),
      embeddings, metric, recompute_block=True)
  batch = labels.shape[0]
  return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:batch], per_block)


def _safe_mean(total, count):
  """total / count, and 0 (never NaN) when count is 0."""
  count = jnp.asarray(count, jnp.float32)
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def _finish(loss, dtype, stats, return_stats, finite):
  """The loss in `dtype`, and the stats; NaN loss and float stats unless the inputs were finite."""
  nan_unless_finite = lambda x: jnp.where(finite, x, jnp.nan)
  loss = nan_unless_finite(loss).astype(dtype)
  if not return_stats:
    return loss
  return loss, {name: nan_unless_finite(value) if jnp.issubdtype(value.dtype, jnp.floating)
                else value for name, value in stats.items()}


def _check_backend(backend: str) -> None:
  if backend not in mining.BACKENDS:
    raise ValueError(f"Unknown mining_backend {backend!r}; expected one of {mining.BACKENDS}.")


def triplet_semihard_loss(labels, embeddings, margin=1.0, metric: str = "l2",
                          return_stats: bool = False, mining_backend: str = "auto"):
  """Semi-hard triplet loss, exactly as TensorFlow Addons' `triplet_semihard_loss`.

  For every ordered positive pair (i, j), i != j, the negative is the nearest one strictly
  farther from i than j, or else the farthest negative of i (0 if i has none); the loss is
  mean over all ordered positive pairs of max(margin + D[i, j] - D[i, neg], 0).

  Args:
    labels: [B] integer class ids.
    embeddings: [B, D] float embeddings (need not be normalised).
    margin: margin >= 0 (TFA's default 1.0).
    metric: "l2" (default, TFA's), "squared_l2" or "angular".
    return_stats: also return the mining statistics.
    mining_backend: "auto" (default): NumPy on the host on CPU, XLA elsewhere; "numpy" or
      "xla" to choose. Both give the same results; inside a program sharded over several CPU
      devices use "xla" (see `mining.semihard_sums`).

  Returns:
    Scalar loss in the dtype of `embeddings`, or `(loss, stats)` with stats keys
    `num_positive_pairs`, `fraction_active`, `num_fallback` (pairs that used the farthest
    negative), `mean_positive_distance`, `mean_negative_distance`.
  """
  labels, dtype, embeddings, margin, finite = _prepare(labels, embeddings, margin, metric)
  _check_backend(mining_backend)
  sums_fn = functools.partial(mining.semihard_sums, backend=mining_backend)
  sums = _sum_over_anchor_blocks(sums_fn, labels, embeddings, margin, metric)
  num_pairs = sums.num_positive_pairs
  loss = _safe_mean(sums.hinge_sum, num_pairs)
  stats = None
  if return_stats:
    stats = {
        "num_positive_pairs": num_pairs,
        "fraction_active": _safe_mean(sums.num_active, num_pairs),
        "num_fallback": sums.num_fallback,
        "mean_positive_distance": _safe_mean(sums.positive_distance_sum, num_pairs),
        "mean_negative_distance": _safe_mean(sums.negative_distance_sum, num_pairs),
    }
  return _finish(loss, dtype, stats, return_stats, finite)


def triplet_hard_loss(labels, embeddings, margin=1.0, soft: bool = False, metric: str = "l2",
                      return_stats: bool = False):
  """Batch-hard triplet loss, exactly as TensorFlow Addons' `triplet_hard_loss`.

  Per anchor: its farthest positive (0 if none) and nearest negative (the row maximum if none);
  loss_i = max(hp - hn + margin, 0), or softplus(hp - hn) with `soft=True` (margin unused).
  The loss is the mean over all B anchors.

  Returns:
    Scalar loss, or `(loss, stats)` with stats keys `num_valid_anchors` (with a positive and a
    negative), `fraction_active`, `mean_positive_distance`, `mean_negative_distance`.
  """
  labels, dtype, embeddings, margin, finite = _prepare(labels, embeddings, margin, metric)
  hardest = _map_over_anchor_blocks(mining.hardest_pairs, labels, embeddings, metric)
  gap = hardest.positive_distance - hardest.negative_distance
  per_anchor = jax.nn.softplus(gap) if soft else jnp.maximum(gap + margin, 0.0)
  loss = jnp.mean(per_anchor)
  stats = None
  if return_stats:
    stats = {
        "num_valid_anchors": jnp.sum(hardest.has_positive & hardest.has_negative,
                                     dtype=jnp.int32),
        "fraction_active": jnp.mean((per_anchor > 0).astype(jnp.float32)),
        "mean_positive_distance": jnp.mean(hardest.positive_distance),
        "mean_negative_distance": jnp.mean(hardest.negative_distance),
    }
  return _finish(loss, dtype, stats, return_stats, finite)


def batch_all_triplet_loss(labels, embeddings, margin=1.0, metric: str = "l2",
                           return_stats: bool = False, mining_backend: str = "auto"):
  """Batch-all triplet loss (Hermans et al.; Moindrot's formulation).

  Mean of max(D_ap - D_an + margin, 0) over the valid triplets (a != p same class, n another
  class) whose loss is positive; 0 if there is none. O(B^2 log B) time, O(B^2) memory.
  `mining_backend` says where the rows are sorted, as for `triplet_semihard_loss`.

  Returns:
    Scalar loss, or `(loss, stats)` with stats keys `num_valid_triplets`,
    `num_active_triplets`, `fraction_active` (active / valid).
  """
  labels, dtype, embeddings, margin, finite = _prepare(labels, embeddings, margin, metric)
  _check_backend(mining_backend)
  sums_fn = functools.partial(mining.batch_all_sums, backend=mining_backend)
  sums = _sum_over_anchor_blocks(sums_fn, labels, embeddings, margin, metric)
  num_active, num_valid = sums.num_active, sums.num_valid
  loss = _safe_mean(sums.hinge_sum, num_active)
  stats = None
  if return_stats:
    stats = {
        "num_valid_triplets": num_valid,
        "num_active_triplets": num_active,
        "fraction_active": _safe_mean(num_active, num_valid),
    }
  return _finish(loss, dtype, stats, return_stats, finite)


def _contrastive_terms(same, distance, margin):
  """0.5 * (y d^2 + (1 - y) max(m - d, 0)^2) per pair, y = 1 for the same class."""
  return 0.5 * jnp.where(same, distance**2, jnp.maximum(margin - distance, 0.0) ** 2)


def contrastive_loss(labels, embeddings, margin=1.0, metric: str = "l2",
                     return_stats: bool = False):
  """Contrastive loss over all unordered pairs i < j of a labelled batch.

  L = 0.5 * mean(y d^2 + (1 - y) max(margin - d, 0)^2) with y = 1 when the two examples share a
  label (pull together) and y = 0 otherwise (push beyond the margin). 0 when B < 2.

  Returns:
    Scalar loss, or `(loss, stats)` with stats keys `num_positive_pairs`, `num_negative_pairs`
    and `fraction_active` (pairs with a non-zero term).
  """
  labels, dtype, embeddings, margin, finite = _prepare(labels, embeddings, margin, metric)
  distances = distances_lib.pairwise_distances(embeddings, metric=metric)
  masks = mining.label_masks(labels)
  upper = jnp.triu(jnp.ones(distances.shape, bool), k=1)
  terms = _contrastive_terms(masks.positive, distances, margin)
  num_pairs = jnp.sum(upper, dtype=jnp.int32)
  loss = _safe_mean(jnp.sum(jnp.where(upper, terms, 0.0)), num_pairs)
  stats = None
  if return_stats:
    stats = {
        "num_positive_pairs": jnp.sum(upper & masks.positive, dtype=jnp.int32),
        "num_negative_pairs": jnp.sum(upper & masks.negative, dtype=jnp.int32),
        "fraction_active": _safe_mean(jnp.sum(upper & (terms > 0)), num_pairs),
    }
  return _finish(loss, dtype, stats, return_stats, finite)


def contrastive_pair_loss(same, left, right, margin=1.0):
  """Contrastive loss of given pairs (seed 001): `same[N]` is 1 for a same-class pair, else 0.

  Args:
    same: [N] 0/1 (int or bool): 1 = same class (pull together), 0 = different (push apart).
    left, right: [N, D] embeddings of the two sides of each pair.
    margin: margin >= 0 for the different-class pairs.

  Returns:
    0.5 * mean(same d^2 + (1 - same) max(margin - d, 0)^2), d the Euclidean distance.
  """
  left = validation.check_embeddings(left, "left")
  right = validation.check_embeddings(right, "right")
  same = jnp.asarray(same)
  if left.shape != right.shape:
    raise ValueError(f"left and right must have the same shape, got {left.shape} and "
                     f"{right.shape}.")
  if same.shape != (left.shape[0],):
    raise ValueError(f"same must have shape [{left.shape[0]}], got {same.shape}.")
  if not (jnp.issubdtype(same.dtype, jnp.integer) or same.dtype == jnp.bool_):
    raise TypeError(f"same must hold 0/1 integers or booleans, got dtype {same.dtype}.")
  validation.check_margin(margin)
  (left32, right32), finite = _poison_unless_finite(left.astype(jnp.float32),
                                                    right.astype(jnp.float32))
  distance = distances_lib._safe_sqrt(jnp.sum((left32 - right32) ** 2, axis=1))
  loss = jnp.mean(_contrastive_terms(same.astype(bool), distance, margin))
  return _finish(loss, left.dtype, None, False, finite)


def triplet_loss(anchor, positive, negative, margin=0.5):
  """Explicit triplet loss on squared L2 (seed 003, the Keras Siamese network).

  L = mean over rows of max(||a - p||^2 - ||a - n||^2 + margin, 0).

  Args:
    anchor, positive, negative: [N, D] embeddings.
    margin: margin >= 0 (default 0.5, as in seed 003).
  """
  anchor = validation.check_embeddings(anchor, "anchor")
  positive = validation.check_embeddings(positive, "positive")
  negative = validation.check_embeddings(negative, "negative")
  if not anchor.shape == positive.shape == negative.shape:
    raise ValueError("anchor, positive and negative must have the same shape, got "
                     f"{anchor.shape}, {positive.shape} and {negative.shape}.")
  validation.check_margin(margin)
  (a, p, n), finite = _poison_unless_finite(
      *(t.astype(jnp.float32) for t in (anchor, positive, negative)))
  positive_distance = jnp.sum((a - p) ** 2, axis=1)
  negative_distance = jnp.sum((a - n) ** 2, axis=1)
  loss = jnp.mean(jnp.maximum(positive_distance - negative_distance + margin, 0.0))
  return _finish(loss, anchor.dtype, None, False, finite)


# Mined losses by name, as configs refer to them. Each takes (labels, embeddings, **options).
MINED_LOSSES = {
    "semihard": triplet_semihard_loss,
    "hard": triplet_hard_loss,
    "batch_all": batch_all_triplet_loss,
    "contrastive": contrastive_loss,
}
# The losses of `MINED_LOSSES` whose miners sort rows and so take `mining_backend`.
SORTING_LOSSES = tuple(name for name, loss in MINED_LOSSES.items()
                       if "mining_backend" in inspect.signature(loss).parameters)
