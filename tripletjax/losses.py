"""Triplet and contrastive losses: pure functions of `labels[B]` and `embeddings[B, D]`.

Semantics follow the references exactly (TensorFlow Addons for the semi-hard and hard losses,
Moindrot's batch-all, Hadsell et al.'s contrastive loss, the explicit triplet loss of the Keras
Siamese-network example; see `tripletjax.reference`), with two
deliberate differences that only remove failures:
  * a batch without any positive pair (or valid triplet) gives a loss of 0, not NaN; the
    statistics say so (`num_positive_pairs == 0`);
  * distances are computed in float32 whatever the input dtype (TFA does the same), and the loss
    is returned in the input dtype.

Every mined loss takes `return_stats=True` to return `(loss, stats)`, where `stats` is a dict of
float32/int32 scalars describing the mining (fraction of active triplets, fallbacks, ...).
Memory is O(B^2) throughout; on finite inputs nothing is NaN, gradients included.

Every mined loss also takes `axis_name`: called inside `jax.shard_map` on one device's rows of
a batch split over that mesh axis, it mines that device's anchors against the all-gathered
batch and returns the loss of the whole batch (`mining.shards`; `tripletjax.sharded` wraps
this for a mesh), with O(B^2 / N) memory per device.

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

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from tripletjax import distances as distances_lib
from tripletjax import mining
from tripletjax import similarity_losses
from tripletjax import validation
from tripletjax.finite import finish as _finish
from tripletjax.finite import poison_unless_finite as _poison_unless_finite
from tripletjax.finite import safe_mean as _safe_mean
from tripletjax.mining import blocks
from tripletjax.mining import masks
from tripletjax.mining import shards


class _Batch(NamedTuple):
  """A checked batch, as the mined losses see it."""
  labels: jax.Array      # [B] int labels of the whole batch (gathered over the mesh axis).
  embeddings: jax.Array  # [B, D] float32 embeddings of the whole batch (gathered too).
  dtype: Any             # The input dtype: the loss comes back in it.
  margin: jax.Array      # float32 scalar.
  finite: jax.Array      # bool scalar: every embedding entry (on every device) is finite.
  axis_name: str | None  # The mesh axis the sums are totalled over; None: one device.
  shard: mining.ShardAnchors | None  # This device's anchors; None: all B rows.


def _prepare(labels, embeddings, margin, metric, axis_name: str | None = None) -> _Batch:
  """Checks the inputs and, with `axis_name`, gathers the batch split over that mesh axis.

  With `axis_name` (inside `jax.shard_map`), `labels` [b] and `embeddings` [b, D] are this
  device's rows of a global batch of B = N b rows split evenly over the N devices of the axis,
  device i holding rows [i b, (i + 1) b). Each device then mines its own b anchors against the
  whole gathered batch (`mining.shards`). On an axis of one device the batch is mined as
  without `axis_name` (bit for bit), and only the totals go through the (trivial) `psum`.
  """
  labels, embeddings = validation.check_labels_and_embeddings(labels, embeddings)
  validation.check_metric(metric)
  validation.check_margin(margin)
  (float_embeddings,), finite = _poison_unless_finite(embeddings.astype(jnp.float32),
                                                      axis_name=axis_name)
  shard = None
  if axis_name is not None and shards.axis_size(axis_name) > 1:
    shard = mining.shard_anchors(labels.shape[0], axis_name)
    labels = shards.gather(labels, axis_name)
    float_embeddings = shards.gather(float_embeddings, axis_name)
  return _Batch(labels, float_embeddings, embeddings.dtype, jnp.asarray(margin, jnp.float32),
                finite, axis_name, shard)


def _sorting_miner_totals(miner, batch: _Batch, metric: str, mining_backend: str):
  """The sums of a sorting miner (`mining.semihard_sums`, `mining.batch_all_sums`) over every
  anchor of the batch: `mining_backend` resolved for rows of B columns, the anchors mined in
  blocks (this device's anchors under `axis_name`), the devices' sums added."""
  mining_backend = mining.resolve_backend(mining_backend, num_columns=batch.labels.shape[0])
  sums = mining.sum_over_anchor_blocks(miner, batch.labels, batch.embeddings, batch.margin,
                                       metric, mining_backend, batch.shard)
  return shards.total(sums, batch.axis_name)


def _mean_over_anchors(values: jax.Array, batch: _Batch) -> jax.Array:
  """The mean of per-anchor `values` over all B anchors of the batch (of every device)."""
  if batch.axis_name is None:
    return jnp.mean(values)
  return shards.total(jnp.sum(values), batch.axis_name) / batch.labels.shape[0]


def triplet_semihard_loss(labels, embeddings, margin=1.0, metric: str = "l2",
                          return_stats: bool = False, mining_backend: str = "auto",
                          axis_name: str | None = None):
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
    mining_backend: where the rows are sorted and mined: "auto" (default: NumPy on the host
      on a single CPU device, XLA elsewhere), "numpy" or "xla". All give the same results;
      see `tripletjax.mining.backend`.
    axis_name: inside `jax.shard_map`, the mesh axis the batch is split over: `labels`
      and `embeddings` are then this device's rows (device i holding rows [i b, (i + 1) b) of
      the global batch), each device mines its own anchors against the gathered embeddings,
      and the loss and statistics (the same on every device) are those of the whole global
      batch, normalised exactly as on one device. None (default): the whole batch is given.

  Returns:
    Scalar loss in the dtype of `embeddings`, or `(loss, stats)` with stats keys
    `num_positive_pairs`, `fraction_active`, `num_fallback` (pairs that used the farthest
    negative), `mean_positive_distance`, `mean_negative_distance`.
  """
  batch = _prepare(labels, embeddings, margin, metric, axis_name)
  sums = _sorting_miner_totals(mining.semihard_sums, batch, metric, mining_backend)
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
  return _finish(loss, batch.dtype, stats, return_stats, batch.finite)


def triplet_hard_loss(labels, embeddings, margin=1.0, soft: bool = False, metric: str = "l2",
                      return_stats: bool = False, axis_name: str | None = None):
  """Batch-hard triplet loss, exactly as TensorFlow Addons' `triplet_hard_loss`.

  Per anchor: its farthest positive (0 if none) and nearest negative (the row maximum if none);
  loss_i = max(hp - hn + margin, 0), or softplus(hp - hn) with `soft=True` (margin unused).
  The loss is the mean over all B anchors.

  Args: as for `triplet_semihard_loss` (`axis_name`: mine a batch split over that mesh axis
  inside `jax.shard_map`).

  Returns:
    Scalar loss, or `(loss, stats)` with stats keys `num_valid_anchors` (with a positive and a
    negative), `fraction_active`, `mean_positive_distance`, `mean_negative_distance`.
  """
  batch = _prepare(labels, embeddings, margin, metric, axis_name)
  hardest = mining.map_over_anchor_blocks(mining.hardest_pairs, batch.labels, batch.embeddings,
                                          metric, batch.shard)
  gap = hardest.positive_distance - hardest.negative_distance
  per_anchor = jax.nn.softplus(gap) if soft else jnp.maximum(gap + batch.margin, 0.0)
  loss = _mean_over_anchors(per_anchor, batch)
  stats = None
  if return_stats:
    stats = {
        "num_valid_anchors": shards.total(
            jnp.sum(hardest.has_positive & hardest.has_negative, dtype=jnp.int32),
            batch.axis_name),
        "fraction_active": _mean_over_anchors((per_anchor > 0).astype(jnp.float32), batch),
        "mean_positive_distance": _mean_over_anchors(hardest.positive_distance, batch),
        "mean_negative_distance": _mean_over_anchors(hardest.negative_distance, batch),
    }
  return _finish(loss, batch.dtype, stats, return_stats, batch.finite)


def batch_all_triplet_loss(labels, embeddings, margin=1.0, metric: str = "l2",
                           return_stats: bool = False, mining_backend: str = "auto",
                           axis_name: str | None = None):
  """Batch-all triplet loss (Hermans et al.; Moindrot's formulation).

  Mean of max(D_ap - D_an + margin, 0) over the valid triplets (a != p same class, n another
  class) whose loss is positive; 0 if there is none. O(B^2 log B) time, O(B^2) memory.
  `mining_backend` says where the rows are sorted, as for `triplet_semihard_loss`.

  Args: as for `triplet_semihard_loss` (`axis_name`: mine a batch split over that mesh axis
  inside `jax.shard_map`).

  Returns:
    Scalar loss, or `(loss, stats)` with stats keys `num_valid_triplets`,
    `num_active_triplets`, `fraction_active` (active / valid).
  """
  batch = _prepare(labels, embeddings, margin, metric, axis_name)
  sums = _sorting_miner_totals(mining.batch_all_sums, batch, metric, mining_backend)
  num_active, num_valid = sums.num_active, sums.num_valid
  loss = _safe_mean(sums.hinge_sum, num_active)
  stats = None
  if return_stats:
    stats = {
        "num_valid_triplets": num_valid,
        "num_active_triplets": num_active,
        "fraction_active": _safe_mean(num_active, num_valid),
    }
  return _finish(loss, batch.dtype, stats, return_stats, batch.finite)


def _contrastive_terms(same, distance, margin):
  """0.5 * (y d^2 + (1 - y) max(m - d, 0)^2) per pair, y = 1 for the same class."""
  return 0.5 * jnp.where(same, distance**2, jnp.maximum(margin - distance, 0.0) ** 2)


class _ContrastiveSums(NamedTuple):
  """Sums over the pairs (i, j), i < j, of some anchors i."""
  term_sum: jax.Array           # float32, differentiable.
  num_pairs: jax.Array          # int32
  num_positive_pairs: jax.Array  # int32
  num_negative_pairs: jax.Array  # int32
  num_active: jax.Array         # int32: pairs with a non-zero term.


def _contrastive_sums(distances, anchor_index, labels, margin) -> _ContrastiveSums:
  """`_ContrastiveSums` of a block [C, B] of distance rows (anchor_index -1: padding row)."""
  column = jax.lax.broadcasted_iota(jnp.int32, distances.shape, 1)
  upper = (column > anchor_index[:, None]) & (anchor_index[:, None] >= 0)
  same = masks.block_same_class(anchor_index, labels)
  terms = _contrastive_terms(same, distances, margin)
  count = lambda mask: jnp.sum(mask, dtype=jnp.int32)
  return _ContrastiveSums(jnp.sum(jnp.where(upper, terms, 0.0)), count(upper),
                          count(upper & same), count(upper & ~same), count(upper & (terms > 0)))


def contrastive_loss(labels, embeddings, margin=1.0, metric: str = "l2",
                     return_stats: bool = False, axis_name: str | None = None):
  """Contrastive loss over all unordered pairs i < j of a labelled batch.

  L = 0.5 * mean(y d^2 + (1 - y) max(margin - d, 0)^2) with y = 1 when the two examples share a
  label (pull together) and y = 0 otherwise (push beyond the margin). 0 when B < 2.

  Args: as for `triplet_semihard_loss` (`axis_name`: mine a batch split over that mesh axis
  inside `jax.shard_map`).

  Returns:
    Scalar loss, or `(loss, stats)` with stats keys `num_positive_pairs`, `num_negative_pairs`
    and `fraction_active` (pairs with a non-zero term).
  """
  batch = _prepare(labels, embeddings, margin, metric, axis_name)
  per_block = blocks.over_anchor_blocks(
      lambda distances, anchor_index: _contrastive_sums(distances, anchor_index, batch.labels,
                                                        batch.margin),
      batch.embeddings, metric, recompute_block=True, shard=batch.shard)
  sums = shards.total(jax.tree.map(lambda x: jnp.sum(x, axis=0), per_block), batch.axis_name)
  loss = _safe_mean(sums.term_sum, sums.num_pairs)
  stats = None
  if return_stats:
    stats = {
        "num_positive_pairs": sums.num_positive_pairs,
        "num_negative_pairs": sums.num_negative_pairs,
        "fraction_active": _safe_mean(sums.num_active, sums.num_pairs),
    }
  return _finish(loss, batch.dtype, stats, return_stats, batch.finite)


def contrastive_pair_loss(same, left, right, margin=1.0):
  """Contrastive loss of given pairs (Hadsell et al.): `same[N]` is 1 for a same-class pair.

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
  distance = distances_lib.safe_sqrt(jnp.sum((left32 - right32) ** 2, axis=1))
  loss = jnp.mean(_contrastive_terms(same.astype(bool), distance, margin))
  return _finish(loss, left.dtype, None, False, finite)


def triplet_distances(anchor, positive, negative):
  """The distance layer of a three-tower (Siamese) network: squared L2 distances of each anchor
  to its positive and to its negative.

  Args:
    anchor, positive, negative: [N, D] embeddings.

  Returns:
    (d_ap, d_an): [N] float32 each, ||a - p||^2 and ||a - n||^2 row by row.
  """
  a, p, n = (jnp.asarray(t).astype(jnp.float32) for t in (anchor, positive, negative))
  return jnp.sum((a - p) ** 2, axis=1), jnp.sum((a - n) ** 2, axis=1)


def triplet_loss(anchor, positive, negative, margin=0.5, return_stats: bool = False):
  """Explicit triplet loss on squared L2, as in the Keras example "Image similarity estimation
  using a Siamese Network with a triplet loss".

  L = mean over rows of max(||a - p||^2 - ||a - n||^2 + margin, 0).

  Args:
    anchor, positive, negative: [N, D] embeddings.
    margin: margin >= 0 (default 0.5, as in that example).
    return_stats: also return statistics of the triplets.

  Returns:
    Scalar loss in the dtype of `anchor`, or `(loss, stats)` with stats keys
    `triplet_accuracy` (fraction of rows with d_ap < d_an), `fraction_active` (fraction with a
    positive loss), `mean_positive_distance` and `mean_negative_distance` (means of d_ap, d_an).
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
  positive_distance, negative_distance = triplet_distances(a, p, n)
  hinge = jnp.maximum(positive_distance - negative_distance + margin, 0.0)
  loss = jnp.mean(hinge)
  stats = {
      "triplet_accuracy": jnp.mean((positive_distance < negative_distance).astype(jnp.float32)),
      "fraction_active": jnp.mean((hinge > 0).astype(jnp.float32)),
      "mean_positive_distance": jnp.mean(positive_distance),
      "mean_negative_distance": jnp.mean(negative_distance),
  }
  return _finish(loss, anchor.dtype, stats, return_stats, finite)


@dataclasses.dataclass(frozen=True)
class MinedLoss:
  """A loss of `MINED_LOSSES`: called like its function, `loss(labels, embeddings, **options)`.

  Attributes:
    fn: the loss function.
    options: the keyword options it takes besides `return_stats`.
    stats: the keys of the statistics it returns with `return_stats=True`.
  """
  fn: Callable[..., Any]
  options: tuple[str, ...]
  stats: tuple[str, ...]

  def __call__(self, labels, embeddings, **options):
    return self.fn(labels, embeddings, **options)

  @property
  def sorts_rows(self) -> bool:
    """Whether its miner sorts distance rows (and so takes `mining_backend`)."""
    return "mining_backend" in self.options


# The losses of a labelled batch, by the names configs use. A new loss: its function above, its
# NumPy twin in `tripletjax.reference`, and an entry here; configs, the trainer, the benchmarks
# and the tests take their lists from this dict.
MINED_LOSSES: dict[str, MinedLoss] = {
    "semihard": MinedLoss(
        triplet_semihard_loss, options=("margin", "metric", "mining_backend"),
        stats=("num_positive_pairs", "fraction_active", "num_fallback",
               "mean_positive_distance", "mean_negative_distance")),
    "hard": MinedLoss(
        triplet_hard_loss, options=("margin", "soft", "metric"),
        stats=("num_valid_anchors", "fraction_active", "mean_positive_distance",
               "mean_negative_distance")),
    "batch_all": MinedLoss(
        batch_all_triplet_loss, options=("margin", "metric", "mining_backend"),
        stats=("num_valid_triplets", "num_active_triplets", "fraction_active")),
    "contrastive": MinedLoss(
        contrastive_loss, options=("margin", "metric"),
        stats=("num_positive_pairs", "num_negative_pairs", "fraction_active")),
    "multi_similarity": MinedLoss(
        similarity_losses.multi_similarity_loss,
        options=("alpha", "beta", "base", "epsilon", "mining"),
        stats=("num_positive_pairs", "num_negative_pairs", "fraction_positive_mined",
               "fraction_negative_mined", "mean_positive_similarity",
               "mean_negative_similarity")),
    "ntxent": MinedLoss(
        similarity_losses.ntxent_loss, options=("temperature",),
        stats=("num_positive_pairs", "num_negative_pairs", "mean_positive_similarity",
               "mean_negative_similarity")),
    "supcon": MinedLoss(
        similarity_losses.supcon_loss, options=("temperature",),
        stats=("num_positive_pairs", "num_negative_pairs", "num_anchors_in_mean",
               "mean_positive_similarity", "mean_negative_similarity")),
}

# The losses of cosine similarities, for the code that imports them from here.
multi_similarity_loss = similarity_losses.multi_similarity_loss
ntxent_loss = similarity_losses.ntxent_loss
supcon_loss = similarity_losses.supcon_loss
