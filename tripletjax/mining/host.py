"""Semi-hard mining in NumPy, on the host: the "numpy" backend of `mining.semihard_sums`.

After one NumPy sort of every row, semi-hard mining needs only the O(B^2 / classes) positive
pairs, where XLA would make a dozen dense passes over the [C, B] block. `mining.semihard`
calls `semihard_sums` here through `jax.pure_callback`.

The sort. Each row's entries become keys (`keys.pack_keys64`: value, tag, column). Among equal
distances untagged entries (negatives) come first, so every negative to the right of a
positive is strictly farther from the anchor: TensorFlow Addons' strict ">". The anchor's own
entry is moved to the end of its row (key = largest float, tagged), so every row ends with a
known tagged entry.

Mining on the positive pairs. With the flat sorted positions of the tagged entries in hand (one
`flatnonzero`), the semi-hard negative of a positive is the first untagged entry to its right:
the end of the positive's run of adjacent tagged entries, found for all positives at once with a
reverse running minimum. A run that reaches the anchor at the end of the row has no farther
negative, so its pairs fall back to the entry just before the run (the farthest negative), or to
0 when the run fills the row (the anchor has no negative).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import NamedTuple

import numpy as np

from tripletjax.mining import keys


def sorted_keys_anchor_last(values: np.ndarray, tags: np.ndarray,
                            anchor_columns: np.ndarray) -> np.ndarray:
  """Rows of uint64 keys (`keys.pack_keys64`), each row sorted, its anchor's entry last.

  Args:
    values: [C, B] float32, >= 0 (-0.0 allowed).
    tags: [C, B] bool; among equal values untagged entries come first.
    anchor_columns: [C] column of each row's anchor, whose key becomes the largest one
      (tagged).

  Returns:
    [C, B] uint64 sorted keys.
  """
  row_keys = keys.pack_keys64(values, tags)
  words = keys.key_words(row_keys)
  rows = np.arange(row_keys.shape[0])
  anchor_columns = np.asarray(anchor_columns, np.int64)
  words[rows, anchor_columns, keys.HIGH] = keys.FLOAT32_MAX_BITS
  words[rows, anchor_columns, keys.LOW] = anchor_columns.astype(np.uint32) | np.uint32(keys.TAG_BIT)
  row_keys.sort(axis=1)
  return row_keys


class SemiHardPairs(NamedTuple):
  """The ordered positive pairs, as flat positions in the sorted [C, B] key array."""
  positive: np.ndarray      # [P] int64 sorted position of the positive, ascending.
  negative: np.ndarray      # [P] int64 sorted position of its negative (valid if has_negative).
  has_negative: np.ndarray  # [P] bool: the anchor has a negative.
  is_semihard: np.ndarray   # [P] bool: a negative strictly farther than the positive exists.


def semihard_pairs(tagged: np.ndarray, num_columns: int) -> SemiHardPairs:
  """Semi-hard negatives from the flat sorted positions of the tagged (same-class) entries.

  Args:
    tagged: ascending flat positions of the tagged entries of the sorted rows; each row's last
      one is its anchor, at the last column.
    num_columns: row length.

  Returns:
    `SemiHardPairs`; the negatives' positions never decrease along the pairs.
  """
  following = tagged + 1
  is_anchor = following % num_columns == 0
  # The next tagged entry is the adjacent one, in the same row.
  continues = (tagged[1:] == following[:-1]) & ~is_anchor[:-1]
  # The first untagged entry right of each tagged one ends its run of adjacent tagged entries.
  run_end = following.copy()
  run_end[:-1][continues] = np.iinfo(np.int64).max
  first_untagged = np.minimum.accumulate(run_end[::-1])[::-1]
  run_start = tagged.copy()
  run_start[1:][continues] = -1
  run_start = np.maximum.accumulate(run_start)
  # A run that reaches the anchor at the row's end points to the next row's start: no farther
  # negative; the fallback is the entry before the run, unless the run fills the whole row.
  fallback = first_untagged % num_columns == 0
  negative = np.where(fallback, run_start - 1, first_untagged)
  has_negative = ~fallback | (run_start % num_columns != 0)
  is_positive = ~is_anchor
  negative = np.where(has_negative, negative, 0)[is_positive]
  return SemiHardPairs(tagged[is_positive], negative, has_negative[is_positive],
                       ~fallback[is_positive])


class SemiHardTotals(NamedTuple):
  """What `semihard_sums` returns: the fields of `mining.SemiHardSums`, then the gradient."""
  hinge_sum: np.ndarray             # float32 scalar.
  num_positive_pairs: np.ndarray    # int32 scalar.
  num_active: np.ndarray            # int32 scalar.
  num_fallback: np.ndarray          # int32 scalar.
  positive_distance_sum: np.ndarray  # float32 scalar.
  negative_distance_sum: np.ndarray  # float32 scalar.
  gradient: np.ndarray | None       # [C, B] float32 d hinge_sum / d distances, if asked for.


# NumPy sorts on one thread but releases the GIL: blocks of at least this many entries are
# split into one slice of rows per core, mined in parallel (smaller blocks are not worth the
# threads' overhead).
_PARALLEL_MIN_ENTRIES = 2**18
_pool = None


def _thread_pool():
  global _pool
  if _pool is None:
    _pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=len(os.sched_getaffinity(0)), thread_name_prefix="tripletjax-mining")
  return _pool


def _quiet_float_errors(fn):
  """Runs `fn` without NumPy's overflow and invalid-value warnings.

  Infinite distances (from non-finite embeddings, whose loss is NaN anyway: see `losses`) make
  inf - inf and float32 overflows; they must not print warnings on every training step. A fresh
  `errstate` per call: the mining threads run concurrently.
  """
  @functools.wraps(fn)
  def quiet(*args, **kwargs):
    with np.errstate(over="ignore", invalid="ignore"):
      return fn(*args, **kwargs)
  return quiet


@_quiet_float_errors
def _semihard_rows(distances, same, anchor_columns, margin, gradient):
  """Totals of some full rows (no padding); writes their gradient rows if `gradient` is given.

  Returns:
    (hinge sum, pairs, active, fallback, positive distance sum, negative distance sum), sums in
    float64.
  """
  num_columns = distances.shape[1]
  row_keys = sorted_keys_anchor_last(distances, same, anchor_columns)
  pairs = semihard_pairs(np.flatnonzero(keys.low_words(row_keys) < 0), num_columns)
  flat_keys = row_keys.reshape(-1)
  positive_keys = flat_keys[pairs.positive]
  negative_keys = flat_keys[pairs.negative]
  positive_distance = keys.key_values(positive_keys)
  negative_distance = np.where(pairs.has_negative, keys.key_values(negative_keys),
                               np.float32(0.0))
  hinge = np.maximum(margin + positive_distance - negative_distance, np.float32(0.0))
  active = hinge > 0
  if gradient is not None:
    # Every active pair adds +1 at its positive (each pair has its own entry) and -1 at its
    # negative. Negatives shared by several pairs are adjacent in the (non-decreasing) list of
    # negative positions, so their counts are run lengths.
    row_start = lambda position: position - position % num_columns
    flat = gradient.reshape(-1)
    positive = pairs.positive[active]
    flat[row_start(positive) + keys.key_columns(positive_keys[active])] = 1.0
    with_negative = active & pairs.has_negative
    negative = pairs.negative[with_negative]
    if negative.size:
      starts = np.flatnonzero(np.diff(negative, prepend=-1))
      counts = np.diff(starts, append=negative.size).astype(np.float32)
      flat[row_start(negative[starts])
           + keys.key_columns(negative_keys[with_negative][starts])] -= counts
  return (hinge.sum(dtype=np.float64), pairs.positive.size, np.count_nonzero(active),
          np.count_nonzero(pairs.has_negative & ~pairs.is_semihard),
          positive_distance.sum(dtype=np.float64), negative_distance.sum(dtype=np.float64))


@_quiet_float_errors
def semihard_sums(distances: np.ndarray, same: np.ndarray, anchor_index: np.ndarray,
                  margin: np.ndarray, with_gradient: bool) -> SemiHardTotals:
  """Semi-hard hinge sums over the positive pairs of a block of anchors (TFA semantics).

  The NumPy twin of `mining.semihard.semihard_sums` (see there for the semantics); sums
  accumulate in float64. Rows are independent, so large blocks are mined in slices of rows, one
  per core.

  Args:
    distances: [C, B] float32 distances from the anchors to every example, >= 0.
    same: [C, B] bool, whether example j has the class of anchor row c.
    anchor_index: [C] int32 example index of each anchor row; -1 marks a padding row.
    margin: float32 scalar.
    with_gradient: also return d hinge_sum / d distances as a dense [C, B] float32 array: +1 at
      every active pair's positive, -1 at its negative, per active pair.
  """
  distances = np.asarray(distances, np.float32)
  num_rows, num_columns = distances.shape
  anchor_index = np.asarray(anchor_index)
  same = np.asarray(same, bool)
  margin = np.float32(margin)
  gradient = np.zeros((num_rows, num_columns), np.float32) if with_gradient else None
  rows = np.flatnonzero(anchor_index >= 0)  # Padding rows add nothing.
  num_slices = 1
  if rows.size * num_columns >= _PARALLEL_MIN_ENTRIES:
    num_slices = min(len(os.sched_getaffinity(0)), rows.size)
  slices = np.array_split(rows, num_slices)

  def mine(slice_rows):
    if slice_rows.size and slice_rows[-1] - slice_rows[0] + 1 == slice_rows.size:
      # Consecutive rows (the usual case: padding rows come last): views, no copies.
      part = slice(slice_rows[0], slice_rows[-1] + 1)
      return _semihard_rows(distances[part], same[part], anchor_index[part], margin,
                            None if gradient is None else gradient[part])
    part_gradient = None if gradient is None else gradient[slice_rows]
    totals = _semihard_rows(distances[slice_rows], same[slice_rows], anchor_index[slice_rows],
                            margin, part_gradient)
    if gradient is not None:
      gradient[slice_rows] = part_gradient
    return totals

  parts = list(_thread_pool().map(mine, slices)) if num_slices > 1 else [mine(slices[0])]
  totals = [sum(values) for values in zip(*parts)]
  return SemiHardTotals(
      hinge_sum=np.float32(totals[0]),
      num_positive_pairs=np.int32(totals[1]),
      num_active=np.int32(totals[2]),
      num_fallback=np.int32(totals[3]),
      positive_distance_sum=np.float32(totals[4]),
      negative_distance_sum=np.float32(totals[5]),
      gradient=gradient,
  )
