"""In-batch mining: label masks, semi-hard negatives, hardest pairs, batch-all sums.

Every function is pure, jit-able and uses O(B^2) memory: no [B, B, B] array is ever built.
Inputs are a [B, B] distance matrix (see `tripletjax.distances`) and integer `labels[B]`.

The semi-hard and batch-all miners sort each row of the distance matrix once
(`row_sort.sort_rows`) and work in sorted order, where "the nearest negative farther than this
positive" is "the first negative to the right", found for all pairs at once with a reverse
cumulative minimum. Their loss sums have custom gradients computed in sorted order as well and
sent back to the original columns with one scatter, which is cheaper than differentiating
through the gathers.

On CPU the semi-hard sums and their gradient are computed by `host_mining` in NumPy instead
(through a callback): after one NumPy sort, only the O(B^2 / classes) positive pairs need work,
where XLA:CPU would make a dozen dense passes after a much slower sort.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tripletjax import host_mining
from tripletjax import row_sort

# Where the sorting miners run: "numpy" on the host (fast on CPU), "xla" on the device, "auto"
# picks "numpy" on CPU and "xla" elsewhere. See `semihard_sums`.
BACKENDS = row_sort.SORT_METHODS


class LabelMasks(NamedTuple):
  """[B, B] bool masks. The diagonal is neither a positive pair nor a negative."""
  positive: jax.Array  # same label, i != j
  negative: jax.Array  # different label


def label_masks(labels: jax.Array) -> LabelMasks:
  same = labels[:, None] == labels[None, :]
  not_diagonal = ~jnp.eye(labels.shape[0], dtype=bool)
  return LabelMasks(positive=same & not_diagonal, negative=~same)


def _positions(shape) -> jax.Array:
  return jax.lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)


def _sorted_positive_mask(same_sorted: jax.Array, perm: jax.Array,
                          anchor_index: jax.Array) -> jax.Array:
  """Positive pairs in sorted order: same class, not the anchor itself, not a padding row."""
  anchor = anchor_index[:, None]
  return same_sorted & (perm != anchor) & (anchor >= 0)


def _block_same_class(anchor_index: jax.Array, labels: jax.Array) -> jax.Array:
  """[C, B] same-class mask between the anchors (rows `anchor_index`) and all examples."""
  return labels[jnp.maximum(anchor_index, 0)][:, None] == labels[None, :]


# ----------------------------------------------------------------------------------------------
# Semi-hard mining.


class _SemiHardChoice(NamedTuple):
  """Semi-hard choice in sorted order, for every sorted position of every row."""
  position: jax.Array       # [B, B] sorted position of the chosen negative.
  is_semihard: jax.Array    # [B, B] a negative strictly farther than this entry exists.
  last_negative: jax.Array  # [B, 1] sorted position of the farthest negative, -1 if none.


def _sort_for_semihard(distances, same, sort_method) -> row_sort.SortedRows:
  # On equal distances negatives (tag False) come first, so every negative to the right of a
  # positive is strictly farther from the anchor than the positive: TFA's strict ">".
  return row_sort.sort_rows(distances, same, sort_method)


def _semihard_choice(rows: row_sort.SortedRows) -> _SemiHardChoice:
  num_columns = rows.values.shape[-1]
  is_negative = ~rows.tags
  # Positions as float32 (exact below 2^24): XLA:CPU's cumulative min is 4x faster on floats.
  position = _positions(rows.values.shape).astype(jnp.float32)
  next_negative = jax.lax.cummin(
      jnp.where(is_negative, position, num_columns), axis=1, reverse=True)
  # Strictly to the right: shift left by one position.
  next_negative = jnp.concatenate(
      [next_negative[:, 1:], jnp.full_like(next_negative[:, :1], num_columns)], axis=1)
  last_negative = jnp.max(jnp.where(is_negative, position, -1.0), axis=1, keepdims=True)
  is_semihard = next_negative < num_columns
  chosen = jnp.where(is_semihard, next_negative, jnp.maximum(last_negative, 0.0))
  return _SemiHardChoice(chosen.astype(jnp.int32), is_semihard,
                         last_negative.astype(jnp.int32))


class SemiHardNegatives(NamedTuple):
  """The negative chosen for every ordered pair (i, j), as TensorFlow Addons chooses it.

  Only entries where `LabelMasks.positive` holds are meaningful.
  """
  index: jax.Array         # [B, B] int32: column k of the negative chosen for (i, j).
  distance: jax.Array      # [B, B] float32: distances[i, index[i, j]]; 0 if i has no negative.
  is_semihard: jax.Array   # [B, B] bool: a negative strictly farther than D[i, j] existed.
  has_negative: jax.Array  # [B] bool: anchor i has at least one negative.


def semihard_negatives(distances: jax.Array, labels: jax.Array,
                       sort_method: str = "auto") -> SemiHardNegatives:
  """The semi-hard negative of every anchor-positive pair (FaceNet, TFA semantics).

  For anchor i and positive j: the nearest negative k with D[i, k] > D[i, j] (strictly); if there
  is none, the farthest negative of i (TFA's fallback); if i has no negative, distance 0. Among
  equally distant negatives the lowest column is chosen (the highest one for the fallback).

  Args:
    distances: [B, B] float32 pairwise distances, >= 0.
    labels: [B] integer labels.
    sort_method: see `row_sort.sort_rows`.

  Returns:
    `SemiHardNegatives`; `distance` is differentiable with respect to `distances`.
  """
  rows = _sort_for_semihard(distances, labels[:, None] == labels[None, :], sort_method)
  choice = _semihard_choice(rows)
  chosen_column = jnp.take_along_axis(rows.perm, choice.position, axis=1)
  # One scatter brings both results back to the original column order: the sign holds the flag.
  packed = jnp.where(choice.is_semihard, chosen_column, -1 - chosen_column)
  packed = row_sort.unsort_rows(packed, rows.perm)
  is_semihard = packed >= 0
  index = jnp.where(is_semihard, packed, -1 - packed)
  has_negative = choice.last_negative[:, 0] >= 0
  distance = jnp.where(has_negative[:, None], jnp.take_along_axis(distances, index, axis=1), 0.0)
  return SemiHardNegatives(index, distance, is_semihard, has_negative)


class SemiHardSums(NamedTuple):
  """Sums over the ordered positive pairs of a batch, for the semi-hard loss and its stats."""
  hinge_sum: jax.Array          # sum of max(m + D_ij - D_i,neg, 0); differentiable.
  num_positive_pairs: jax.Array  # int32
  num_active: jax.Array          # int32: pairs with a positive hinge.
  num_fallback: jax.Array        # int32: pairs that used the farthest negative.
  positive_distance_sum: jax.Array
  negative_distance_sum: jax.Array


def _semihard_in_xla(distances, anchor_index, labels, margin, sort_method, with_gradient):
  """`SemiHardSums` and (optionally) d hinge_sum / d distances, with dense [C, B] XLA passes."""
  rows = _sort_for_semihard(distances, _block_same_class(anchor_index, labels), sort_method)
  choice = _semihard_choice(rows)
  is_positive = _sorted_positive_mask(rows.tags, rows.perm, anchor_index)
  has_negative = choice.last_negative >= 0
  negative_distance = jnp.where(
      has_negative, jnp.take_along_axis(rows.values, choice.position, axis=1), 0.0)
  hinge = jnp.maximum(margin + rows.values - negative_distance, 0.0)
  is_active = is_positive & (hinge > 0)
  sums = SemiHardSums(
      hinge_sum=jnp.sum(jnp.where(is_positive, hinge, 0.0)),
      num_positive_pairs=jnp.sum(is_positive, dtype=jnp.int32),
      num_active=jnp.sum(is_active, dtype=jnp.int32),
      num_fallback=jnp.sum(is_positive & has_negative & ~choice.is_semihard, dtype=jnp.int32),
      positive_distance_sum=jnp.sum(jnp.where(is_positive, rows.values, 0.0)),
      negative_distance_sum=jnp.sum(jnp.where(is_positive, negative_distance, 0.0)),
  )
  if not with_gradient:
    return sums, None
  is_negative = ~rows.tags
  position = _positions(rows.perm.shape)
  # Each active pair adds +1 to its positive and -1 to its chosen negative. The pairs choosing
  # the negative at sorted position q are the positives strictly between the previous negative
  # and q, so a running count of active pairs, read at consecutive negatives, gives every
  # negative's total at once. (float32 counts are exact below 2^24 and faster on XLA:CPU.)
  active_count = jnp.cumsum(is_active.astype(jnp.float32), axis=1)
  # active_count never decreases, so a running max of its values at negatives is its value at
  # the latest negative so far.
  count_at_negative = jax.lax.cummax(jnp.where(is_negative, active_count, 0.0), axis=1)
  count_before = jnp.concatenate(
      [jnp.zeros_like(count_at_negative[:, :1]), count_at_negative[:, :-1]], axis=1)
  chosen_count = jnp.where(is_negative, active_count - count_before, 0.0)
  # Active pairs with no farther negative all fall back to the farthest one.
  fallback_count = active_count[:, -1:] - count_at_negative[:, -1:]
  chosen_count += jnp.where(position == choice.last_negative, fallback_count, 0.0)
  gradient_sorted = is_active.astype(jnp.float32) - chosen_count
  return sums, row_sort.unsort_rows(gradient_sorted, rows.perm)


def _semihard_on_host(distances, anchor_index, labels, margin, with_gradient):
  """The same as `_semihard_in_xla`, computed by `host_mining.semihard_sums` in NumPy."""
  num_rows, num_columns = distances.shape
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)
  shapes = host_mining.SemiHardTotals(
      scalar(jnp.float32), scalar(jnp.int32), scalar(jnp.int32), scalar(jnp.int32),
      scalar(jnp.float32), scalar(jnp.float32),
      jax.ShapeDtypeStruct((num_rows, num_columns), jnp.float32) if with_gradient else None)
  # Canonical zero, as `row_sort.sort_rows` does: -0.0 would sort after every distance.
  values = jnp.where(distances > 0, jax.lax.stop_gradient(distances), 0.0).astype(jnp.float32)
  totals = jax.pure_callback(
      functools.partial(host_mining.semihard_sums, with_gradient=with_gradient), shapes,
      values, _block_same_class(anchor_index, labels), anchor_index, margin,
      vmap_method="sequential")
  return SemiHardSums(*totals[:-1]), totals.gradient


def _semihard_sums_and_gradient(distances, anchor_index, labels, margin, backend,
                                with_gradient):
  if backend not in BACKENDS:
    raise ValueError(f"Unknown mining backend {backend!r}; expected one of {BACKENDS}.")
  margin = jnp.asarray(margin, jnp.float32)
  on_host = lambda *args: _semihard_on_host(*args, with_gradient)
  in_xla = lambda *args: _semihard_in_xla(*args, "xla", with_gradient)
  args = (distances, anchor_index, labels, margin)
  if backend == "numpy":
    return on_host(*args)
  if backend == "xla":
    return in_xla(*args)
  return jax.lax.platform_dependent(*args, cpu=on_host, default=in_xla)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def semihard_sums(distances: jax.Array, anchor_index: jax.Array, labels: jax.Array,
                  margin: jax.Array, backend: str = "auto") -> SemiHardSums:
  """Sums of the semi-hard hinge over the ordered positive pairs of some anchors (TFA semantics).

  Works on a block of rows of the distance matrix so that large batches can be processed block
  by block; pass `distances` [B, B] and `anchor_index = arange(B)` for the whole batch.
  Differentiable in `distances` and `margin` (reverse mode); the counts are not differentiable.

  Two implementations give the same results: "numpy" sorts and mines in NumPy on the host
  (`host_mining`, through a callback; on a 2-core CPU its forward+backward on a 2048 x 2048
  block takes 95 ms against 0.68 s for "xla": only the O(B^2 / classes) positive pairs need
  work after the sort), "xla" sorts with `lax.sort` (`row_sort`) and mines with dense
  [C, B] passes (for GPU and TPU). "auto" picks "numpy" on CPU and "xla" elsewhere. Inside a
  program sharded over several CPU devices use "xla": there XLA:CPU deadlocks in collectives
  when a host callback runs (jax 0.10.2).

  Args:
    distances: [C, B] float32 distances from the anchors to every example, >= 0.
    anchor_index: [C] int32 example index of each anchor row; -1 marks a padding row.
    labels: [B] integer labels of all examples.
    margin: float32 scalar margin.
    backend: "auto", "numpy" or "xla", see above.
  """
  return _semihard_sums_and_gradient(distances, anchor_index, labels, margin, backend,
                                     with_gradient=False)[0]


def _semihard_sums_forward(distances, anchor_index, labels, margin, backend):
  sums, gradient = _semihard_sums_and_gradient(distances, anchor_index, labels, margin,
                                               backend, with_gradient=True)
  return sums, (gradient, sums.num_active)


def _semihard_sums_backward(backend, residuals, cotangents):
  del backend
  gradient, num_active = residuals
  g = cotangents.hinge_sum
  return g * gradient, None, None, g * num_active.astype(jnp.float32)


semihard_sums.defvjp(_semihard_sums_forward, _semihard_sums_backward)


# ----------------------------------------------------------------------------------------------
# Batch-hard mining.


class HardestPairs(NamedTuple):
  """Batch-hard mining: per anchor, its farthest positive and nearest negative."""
  positive_distance: jax.Array  # [B]; 0 for an anchor without positives (TFA).
  negative_distance: jax.Array  # [B]; the row maximum for an anchor without negatives (TFA).
  has_positive: jax.Array       # [B] bool
  has_negative: jax.Array       # [B] bool


def hardest_pairs(distances: jax.Array, labels: jax.Array,
                  anchor_index: jax.Array | None = None) -> HardestPairs:
  """TFA's `triplet_hard_loss` mining, O(B^2). Differentiable in `distances`.

  Args:
    distances: [B, B] pairwise distances, or a block [C, B] of their rows.
    labels: [B] integer labels.
    anchor_index: for a block, the [C] example index of each row (padding rows: any value,
      their results are meaningless); default: all rows, `arange(B)`.

  Returns:
    `HardestPairs` of the C anchors.
  """
  if anchor_index is None:
    anchor_index = jnp.arange(distances.shape[0], dtype=jnp.int32)
  same = _block_same_class(anchor_index, labels)
  column = jax.lax.broadcasted_iota(jnp.int32, distances.shape, 1)
  positive = same & (column != anchor_index[:, None])
  negative = ~same
  # Distances are >= 0 and the anchor's own entry is 0, so a masked-out 0 is TFA's empty-row
  # result.
  positive_distance = jnp.max(jnp.where(positive, distances, 0.0), axis=1)
  row_max = jnp.max(distances, axis=1, keepdims=True)
  negative_distance = jnp.min(jnp.where(negative, distances, row_max), axis=1)
  return HardestPairs(positive_distance, negative_distance,
                      jnp.any(positive, axis=1), jnp.any(negative, axis=1))


# ----------------------------------------------------------------------------------------------
# Batch-all mining.


def valid_triplet_counts(labels: jax.Array) -> jax.Array:
  """[B] number of valid triplets (a, p, n) per anchor a: its positives times its negatives."""
  masks = label_masks(labels)
  return (jnp.sum(masks.positive, axis=1, dtype=jnp.int32)
          * jnp.sum(masks.negative, axis=1, dtype=jnp.int32))


class BatchAllSums(NamedTuple):
  """Sums over all valid triplets (a, p, n) of the hinge max(D_ap - D_an + m, 0)."""
  hinge_sum: jax.Array    # float32, differentiable.
  num_active: jax.Array   # float32 (counts reach B^3): triplets with a positive hinge.
  num_valid: jax.Array    # float32: all valid triplets.


def _batch_all_forward(distances, anchor_index, labels, margin, backend):
  same = _block_same_class(anchor_index, labels)
  column = jax.lax.broadcasted_iota(jnp.int32, distances.shape, 1)
  is_positive_pair = same & (column != anchor_index[:, None])
  # Put the shifted positives D_ap + m and the negatives D_an of each anchor in one sorted row,
  # shifted positives first on ties (an exact tie has zero loss). Each positive's active
  # negatives are then exactly the negatives to its left, and its hinge sum is
  # count * (D_ap + m) - (sum of those negatives): two running sums, no [B, B, B] tensor.
  values = jnp.where(is_positive_pair, distances + margin, distances)
  rows = row_sort.sort_rows(values, ~same, backend)
  is_negative = rows.tags & (anchor_index[:, None] >= 0)
  is_positive = _sorted_positive_mask(~rows.tags, rows.perm, anchor_index)
  # Centre each row so that the running sums stay small and keep float32 precision.
  centred = rows.values - jnp.mean(rows.values, axis=1, keepdims=True)
  negatives_left = jnp.cumsum(is_negative, axis=1, dtype=jnp.int32)
  negative_sum_left = jnp.cumsum(jnp.where(is_negative, centred, 0.0), axis=1)
  per_positive = negatives_left.astype(jnp.float32) * centred - negative_sum_left
  num_positive = jnp.sum(is_positive, axis=1, dtype=jnp.int32)
  sums = BatchAllSums(
      hinge_sum=jnp.sum(jnp.where(is_positive, per_positive, 0.0)),
      num_active=jnp.sum(jnp.where(is_positive, negatives_left, 0).astype(jnp.float32)),
      num_valid=jnp.sum((num_positive * jnp.sum(is_negative, axis=1, dtype=jnp.int32))
                        .astype(jnp.float32)),
  )
  positives_right = num_positive[:, None] - jnp.cumsum(is_positive, axis=1, dtype=jnp.int32)
  # d hinge_sum / d value: +(negatives to the left) for a positive, -(positives to the right)
  # for a negative.
  gradient_sorted = (jnp.where(is_positive, negatives_left, 0)
                     - jnp.where(is_negative, positives_right, 0)).astype(jnp.float32)
  return sums, (rows.perm, gradient_sorted, sums.num_active)


def _batch_all_backward(backend, residuals, cotangents):
  del backend
  perm, gradient_sorted, num_active = residuals
  g = cotangents.hinge_sum
  return g * row_sort.unsort_rows(gradient_sorted, perm), None, None, g * num_active


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def batch_all_sums(distances: jax.Array, anchor_index: jax.Array, labels: jax.Array,
                   margin: jax.Array, backend: str = "auto") -> BatchAllSums:
  """Batch-all triplet sums of some anchors in O(C B log B) time and O(C B) memory.

  Differentiable in `distances` and `margin` (reverse mode); the counts are not differentiable.

  Args:
    distances: [C, B] float32 distances from the anchors to every example, >= 0.
    anchor_index: [C] int32 example index of each anchor row; -1 marks a padding row.
    labels: [B] integer labels of all examples.
    margin: float32 scalar margin.
    backend: where the rows are sorted: "auto", "numpy" or "xla", as for `semihard_sums`.
  """
  return _batch_all_forward(distances, anchor_index, labels, margin, backend)[0]


batch_all_sums.defvjp(_batch_all_forward, _batch_all_backward)
