"""Tests of the NumPy reference itself, on tiny batches whose answers are worked out by hand.

The reference is the ground truth for the JAX losses, so it is checked against numbers derived
on paper from the published definitions it follows (`tripletjax/reference.py`), not against
another implementation. Most batches are 1-D
points on a line, where every distance is a plain difference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tripletjax import reference

# Batch "LINE": points on a line, two classes.
#   index:   0    1    2    3
#   x:       0    1    3    1.5
#   label:   0    0    1    1
# Euclidean distances |x_i - x_j|:
#         0     1     2     3
#   0 [   0     1     3    1.5 ]
#   1 [   1     0     2    0.5 ]
#   2 [   3     2     0    1.5 ]
#   3 [  1.5   0.5   1.5    0  ]
# Row 3 has a positive (index 2) and a negative (index 0) both at 1.5: an exact tie.
LINE_X = np.array([[0.0], [1.0], [3.0], [1.5]])
LINE_LABELS = np.array([0, 0, 1, 1])


def _stats_close(actual: dict, expected: dict) -> None:
  assert set(actual) == set(expected)
  for key, value in expected.items():
    assert actual[key] == pytest.approx(value, abs=1e-12), key
    assert isinstance(actual[key], float), key


# ----------------------------------------------------------------------------------------------
# Distances.

# Rows chosen so that every metric has an obvious value:
#   0: (3, 4)   1: (0, 0)   2: (6, 8) (same direction as row 0)   3: (0, 1)   4: (-3, -4)
METRIC_X = np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [0.0, 1.0], [-3.0, -4.0]])


def test_l2_distances():
  d = reference.pairwise_distances(METRIC_X, metric="l2")
  assert d[0, 1] == 5.0            # |(3, 4)|
  assert d[0, 2] == 5.0            # |(3, 4)|
  assert d[1, 2] == 10.0           # |(6, 8)|
  assert d[0, 3] == pytest.approx(math.sqrt(18.0))  # (3, 3)
  assert d[0, 4] == 10.0           # (6, 8)
  np.testing.assert_array_equal(d, d.T)


def test_squared_l2_distances():
  d = reference.pairwise_distances(METRIC_X, metric="squared_l2")
  assert (d[0, 1], d[0, 2], d[1, 2], d[0, 3], d[0, 4]) == (25.0, 25.0, 100.0, 18.0, 100.0)


def test_angular_distances():
  d = reference.pairwise_distances(METRIC_X, metric="angular")
  assert d[0, 2] == 0.0                           # Same direction: exactly 0, no rounding noise.
  assert d[0, 3] == pytest.approx(1.0 - 4.0 / 5.0)  # cos = (3, 4).(0, 1) / 5 = 0.8.
  assert d[0, 4] == pytest.approx(2.0)              # Opposite directions: 1 - (-1).
  # The zero row stays zero after tf-style normalisation, so its cosine with anything is 0.
  assert d[1, 0] == pytest.approx(1.0)
  assert d[1, 3] == pytest.approx(1.0)


@pytest.mark.parametrize("metric", reference.METRICS)
def test_self_distances_have_exactly_zero_diagonal(metric):
  # Also for the zero row, whose angular distance to itself would be 1 - 0 = 1 by the formula.
  d = reference.pairwise_distances(METRIC_X, metric=metric)
  np.testing.assert_array_equal(np.diag(d), 0.0)
  assert d.dtype == np.float64


def test_duplicate_rows_are_exactly_zero_apart():
  x = np.array([[0.1, 0.7, -0.3], [0.1, 0.7, -0.3], [1.0, 2.0, 3.0]], np.float32)
  for metric in reference.METRICS:
    assert reference.pairwise_distances(x, metric=metric)[0, 1] == 0.0, metric


def test_distances_between_two_sets():
  x = np.array([[0.0, 0.0], [1.0, 0.0]])
  y = np.array([[0.0, 3.0], [1.0, 0.0], [4.0, 4.0]])
  # x0 -> (3, 1, sqrt 32); x1 -> (sqrt 10, 0, 5).  No diagonal is zeroed: x1 == y1 anyway.
  np.testing.assert_allclose(
      reference.pairwise_distances(x, y), [[3.0, 1.0, math.sqrt(32)], [math.sqrt(10), 0.0, 5.0]])


def test_half_precision_inputs_are_upcast():
  import ml_dtypes  # Installed with JAX.
  x = METRIC_X.astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(reference.pairwise_distances(x), reference.pairwise_distances(
      METRIC_X))


# ----------------------------------------------------------------------------------------------
# Semi-hard loss.


def test_semihard_choice_fallback_and_strict_tie():
  # Ordered positive pairs of LINE, margin 1; N_i = distances from i to the other class.
  #   (0, 1): D = 1,   N_0 = {3, 1.5}; > 1: {3, 1.5}, smallest 1.5  -> 1 + 1 - 1.5 = 0.5
  #   (1, 0): D = 1,   N_1 = {2, 0.5}; > 1: {2}                     -> 1 + 1 - 2   = 0
  #   (2, 3): D = 1.5, N_2 = {3, 2};   > 1.5: {3, 2}, smallest 2    -> 1 + 1.5 - 2 = 0.5
  #   (3, 2): D = 1.5, N_3 = {1.5, 0.5}; nothing STRICTLY > 1.5 (1.5 ties), fallback to
  #           max(N_3) = 1.5                                        -> 1 + 1.5 - 1.5 = 1
  # loss = (0.5 + 0 + 0.5 + 1) / 4 = 0.5; the zero-loss pair (1, 0) stays in the mean.
  loss, stats = reference.triplet_semihard_loss(LINE_LABELS, LINE_X, margin=1.0,
                                                return_stats=True)
  assert loss == pytest.approx(0.5)
  _stats_close(stats, {
      "num_positive_pairs": 4.0,
      "fraction_active": 3 / 4,                         # All but (1, 0).
      "num_fallback": 1.0,                              # (3, 2).
      "mean_positive_distance": (1 + 1 + 1.5 + 1.5) / 4,
      "mean_negative_distance": (1.5 + 2 + 2 + 1.5) / 4,
  })
  assert reference.triplet_semihard_loss(LINE_LABELS, LINE_X) == loss  # Defaults: m=1, "l2".


def test_semihard_squared_l2_and_small_margin():
  # Squared distances of LINE: D01 = 1, D02 = 9, D03 = 2.25, D12 = 4, D13 = 0.25, D23 = 2.25.
  #   (0, 1): D = 1,    N_0 = {9, 2.25} -> 2.25; 0.2 + 1 - 2.25 < 0        -> 0
  #   (1, 0): D = 1,    N_1 = {4, 0.25} -> 4;                              -> 0
  #   (2, 3): D = 2.25, N_2 = {9, 4}    -> 4;                              -> 0
  #   (3, 2): D = 2.25, N_3 = {2.25, 0.25}: none > 2.25, fallback 2.25     -> 0.2
  # loss = 0.2 / 4.
  loss, stats = reference.triplet_semihard_loss(LINE_LABELS, LINE_X, margin=0.2,
                                                metric="squared_l2", return_stats=True)
  assert loss == pytest.approx(0.05)
  assert stats["num_fallback"] == 1.0
  assert stats["fraction_active"] == 0.25


def test_semihard_without_negatives_uses_zero():
  # One class, x = 0, 1, 3: every anchor has an empty N_i, so neg = 0 and each pair costs
  # m + D. Ordered pairs: D = 1, 3 (from 0), 1, 2 (from 1), 3, 2 (from 2): sum 12, 6 pairs.
  # loss = (6 * 1 + 12) / 6 = 3. These are not fallbacks: there is no negative to fall back to.
  x = np.array([[0.0], [1.0], [3.0]])
  loss, stats = reference.triplet_semihard_loss([0, 0, 0], x, margin=1.0, return_stats=True)
  assert loss == pytest.approx(3.0)
  _stats_close(stats, {
      "num_positive_pairs": 6.0, "fraction_active": 1.0, "num_fallback": 0.0,
      "mean_positive_distance": 2.0, "mean_negative_distance": 0.0,
  })


def test_semihard_without_positive_pairs_is_zero_not_nan():
  loss, stats = reference.triplet_semihard_loss([0, 1, 2], [[0.0], [1.0], [3.0]],
                                                return_stats=True)
  assert loss == 0.0
  _stats_close(stats, {
      "num_positive_pairs": 0.0, "fraction_active": 0.0, "num_fallback": 0.0,
      "mean_positive_distance": 0.0, "mean_negative_distance": 0.0,
  })


def test_semihard_picks_smallest_farther_negative_not_farthest():
  # Anchor 0 at 0, positive 1 at 1, negatives at 0.5, 1.25, 4 (class 1).
  #   (0, 1): D = 1; negatives > 1: {1.25, 4} -> 1.25 (not 4, not 0.5); 1 + 1 - 1.25 = 0.75
  #   (1, 0): D = 1; N_1 = {0.5, 0.25, 3}; > 1: {3}          ; 1 + 1 - 3 < 0 -> 0
  # The negatives' own pairs: 2-3 (D 0.75), 2-4 (3.5), 3-4 (2.75), in both orders.
  #   (2, 3): D 0.75, N_2 = {0.5, 0.5};  nothing > 0.75: fallback 0.5  -> 1 + 0.75 - 0.5 = 1.25
  #   (3, 2): D 0.75, N_3 = {1.25, 0.25}: > 0.75: 1.25                -> 1 + 0.75 - 1.25 = 0.5
  #   (2, 4): D 3.5,  N_2 = {0.5, 0.5}: fallback 0.5                   -> 4
  #   (4, 2): D 3.5,  N_4 = {4, 3}: > 3.5: 4                           -> 0.5
  #   (3, 4): D 2.75, N_3 = {1.25, 0.25}: fallback 1.25                -> 2.5
  #   (4, 3): D 2.75, N_4 = {4, 3}: > 2.75: 3                          -> 0.75
  # loss = (0.75 + 0 + 1.25 + 0.5 + 4 + 0.5 + 2.5 + 0.75) / 8 = 10.25 / 8
  x = np.array([[0.0], [1.0], [0.5], [1.25], [4.0]])
  loss, stats = reference.triplet_semihard_loss([0, 0, 1, 1, 1], x, return_stats=True)
  assert loss == pytest.approx(10.25 / 8)
  assert stats["num_fallback"] == 3.0
  assert stats["num_positive_pairs"] == 8.0
  assert stats["fraction_active"] == 7 / 8


def test_semihard_duplicates_positive_at_zero():
  # Anchor and positive are duplicates (D = 0); a negative duplicate is also at 0, which is not
  # strictly farther, so the semi-hard negative is the one at 2.
  # x: 0 (class 0), 0 (class 0), 0 (class 1), 2 (class 1).
  #   (0, 1), (1, 0): D 0, N = {0, 2} -> 2: max(1 + 0 - 2, 0) = 0.
  #   (2, 3): D 2, N_2 = {0, 0}: fallback 0 -> 3.   (3, 2): D 2, N_3 = {2, 2}: fallback 2 -> 1.
  x = np.array([[0.0], [0.0], [0.0], [2.0]])
  loss, stats = reference.triplet_semihard_loss([0, 0, 1, 1], x, return_stats=True)
  assert loss == pytest.approx(4.0 / 4)
  assert stats["num_fallback"] == 2.0


def test_semihard_is_invariant_to_batch_order():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 3))
  labels = rng.integers(0, 3, size=12)
  order = rng.permutation(12)
  assert reference.triplet_semihard_loss(labels, x) == pytest.approx(
      reference.triplet_semihard_loss(labels[order], x[order]))


# ----------------------------------------------------------------------------------------------
# Hard loss.


def test_hard_loss_with_positives_and_negatives():
  # LINE, margin 1. Per anchor: hp = farthest positive, hn = nearest negative.
  #   0: hp 1,   hn min(3, 1.5) = 1.5 -> 1 - 1.5 + 1 = 0.5
  #   1: hp 1,   hn min(2, 0.5) = 0.5 -> 1.5
  #   2: hp 1.5, hn min(3, 2)   = 2   -> 0.5
  #   3: hp 1.5, hn min(1.5, .5)= 0.5 -> 2
  # loss = 4.5 / 4.
  loss, stats = reference.triplet_hard_loss(LINE_LABELS, LINE_X, margin=1.0, return_stats=True)
  assert loss == pytest.approx(1.125)
  _stats_close(stats, {
      "num_valid_anchors": 4.0, "fraction_active": 1.0,
      "mean_positive_distance": 1.25, "mean_negative_distance": (1.5 + 0.5 + 2 + 0.5) / 4,
  })


def test_hard_loss_soft():
  # Same gaps hp - hn as above: -0.5, 0.5, -0.5, 1; soft loss ignores the margin.
  expected = np.mean([math.log1p(math.exp(g)) for g in (-0.5, 0.5, -0.5, 1.0)])
  for margin in (0.0, 1.0, 5.0):
    assert reference.triplet_hard_loss(LINE_LABELS, LINE_X, margin=margin,
                                       soft=True) == pytest.approx(expected)


def test_hard_loss_without_positives():
  # Labels all distinct, x = 0, 1, 3: hp = 0; hn = nearest other point: 1, 1, 2.
  # margin 1.5: max(1.5 - hn, 0) = 0.5, 0.5, 0 -> 1/3; margin 1: all 0.
  x = np.array([[0.0], [1.0], [3.0]])
  loss, stats = reference.triplet_hard_loss([0, 1, 2], x, margin=1.5, return_stats=True)
  assert loss == pytest.approx(1.0 / 3)
  _stats_close(stats, {
      "num_valid_anchors": 0.0, "fraction_active": 2 / 3,
      "mean_positive_distance": 0.0, "mean_negative_distance": 4 / 3,
  })
  assert reference.triplet_hard_loss([0, 1, 2], x, margin=1.0) == 0.0


def test_hard_loss_without_negatives_uses_row_maximum():
  # One class, x = 0, 1, 3: hp = farthest positive = 3, 2, 3; hn = row maximum (diagonal
  # included) = the same 3, 2, 3. So every anchor costs exactly the margin.
  x = np.array([[0.0], [1.0], [3.0]])
  loss, stats = reference.triplet_hard_loss([7, 7, 7], x, margin=0.3, return_stats=True)
  assert loss == pytest.approx(0.3)
  assert stats["mean_negative_distance"] == pytest.approx(8 / 3)
  assert stats["num_valid_anchors"] == 0.0


def test_hard_loss_row_maximum_includes_the_diagonal():
  # A single example: no positive (hp = 0) and no negative: hn = max of row [0] = 0.
  loss = reference.triplet_hard_loss([0], [[5.0]], margin=0.7)
  assert loss == pytest.approx(0.7)


def test_hard_loss_mixed_anchors():
  # labels 0, 0, 1 at x = 0, 1, 3, margin 2.
  #   0: hp 1, hn 3 -> 0;   1: hp 1, hn 2 -> 1;   2: no positive, hp 0, hn min(3, 2) = 2 -> 0.
  loss, stats = reference.triplet_hard_loss([0, 0, 1], [[0.0], [1.0], [3.0]], margin=2.0,
                                            return_stats=True)
  assert loss == pytest.approx(1.0 / 3)
  assert stats["num_valid_anchors"] == 2.0
  assert stats["fraction_active"] == pytest.approx(1 / 3)


def test_hard_loss_angular():
  # (1, 0) and (0, 1) in class 0, (1, 1) in class 1. Angular distances: the two axes are
  # orthogonal, 1 - 0 = 1; each axis to the diagonal: 1 - 1/sqrt(2).
  #   0 and 1: hp = 1, hn = 1 - 1/sqrt(2): loss = 1/sqrt(2) (margin 0).
  #   2: no positive, hp = 0, hn = 1 - 1/sqrt(2): loss = max(-hn, 0) = 0.
  # mean = 2 / (3 sqrt(2)) = sqrt(2) / 3.
  x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  loss = reference.triplet_hard_loss([0, 0, 1], x, margin=0.0, metric="angular")
  assert loss == pytest.approx(math.sqrt(2) / 3)


# ----------------------------------------------------------------------------------------------
# Batch-all loss.


def test_batch_all_counts_and_mean_over_active():
  # LINE, margin 1; triplets (a, p, n): D_ap - D_an + 1.
  #   (0, 1, 2): 1 - 3 + 1 = -1 -> 0      (0, 1, 3): 1 - 1.5 + 1 = 0.5
  #   (1, 0, 2): 1 - 2 + 1 = 0 (exactly, inactive)   (1, 0, 3): 1 - 0.5 + 1 = 1.5
  #   (2, 3, 0): 1.5 - 3 + 1 -> 0         (2, 3, 1): 1.5 - 2 + 1 = 0.5
  #   (3, 2, 0): 1.5 - 1.5 + 1 = 1        (3, 2, 1): 1.5 - 0.5 + 1 = 2
  # 8 valid, 5 active, loss = (0.5 + 1.5 + 0.5 + 1 + 2) / 5 = 1.1.
  loss, stats = reference.batch_all_triplet_loss(LINE_LABELS, LINE_X, return_stats=True)
  assert loss == pytest.approx(1.1)
  _stats_close(stats, {
      "num_valid_triplets": 8.0, "num_active_triplets": 5.0, "fraction_active": 5 / 8})


def test_batch_all_activity_threshold():
  # labels 0, 0, 1 at x = 0, 1, -1: (0, 1, 2): 1 - 1 + m = m;  (1, 0, 2): 1 - 2 + m < 0.
  # A triplet is active only if its loss is > 1e-16.
  x = np.array([[0.0], [1.0], [-1.0]])
  loss, stats = reference.batch_all_triplet_loss([0, 0, 1], x, margin=1e-17, return_stats=True)
  assert loss == 0.0
  assert (stats["num_valid_triplets"], stats["num_active_triplets"]) == (2.0, 0.0)
  loss, stats = reference.batch_all_triplet_loss([0, 0, 1], x, margin=1e-15, return_stats=True)
  assert loss == pytest.approx(1e-15, rel=1e-6)
  assert stats["num_active_triplets"] == 1.0 and stats["fraction_active"] == 0.5


@pytest.mark.parametrize("labels", [[0, 0, 0], [0, 1, 2]])
def test_batch_all_without_valid_triplets(labels):
  loss, stats = reference.batch_all_triplet_loss(labels, [[0.0], [1.0], [3.0]],
                                                 return_stats=True)
  assert loss == 0.0
  _stats_close(stats, {
      "num_valid_triplets": 0.0, "num_active_triplets": 0.0, "fraction_active": 0.0})


def test_batch_all_counts_on_a_larger_batch():
  # Classes of sizes 3, 2, 1 (B = 6): valid triplets = sum over classes of s (s - 1) (B - s)
  #   = 3*2*3 + 2*1*4 + 0 = 26. With a huge margin every one of them is active.
  x = np.arange(6.0)[:, None]
  _, stats = reference.batch_all_triplet_loss([0, 0, 0, 1, 1, 2], x, margin=100.0,
                                              return_stats=True)
  assert stats["num_valid_triplets"] == 26.0
  assert stats["num_active_triplets"] == 26.0


# ----------------------------------------------------------------------------------------------
# Contrastive losses (1 = same class).


def test_contrastive_loss_both_label_values():
  # labels 0, 0, 1 at x = 0, 1, 3, margin 2.5. Unordered pairs:
  #   (0, 1) same, d 1: d^2 = 1
  #   (0, 2) different, d 3: max(2.5 - 3, 0)^2 = 0   (beyond the margin, inactive)
  #   (1, 2) different, d 2: max(2.5 - 2, 0)^2 = 0.25
  # loss = 0.5 * (1 + 0 + 0.25) / 3.
  loss, stats = reference.contrastive_loss([0, 0, 1], [[0.0], [1.0], [3.0]], margin=2.5,
                                           return_stats=True)
  assert loss == pytest.approx(0.5 * 1.25 / 3)
  _stats_close(stats, {
      "num_positive_pairs": 1.0, "num_negative_pairs": 2.0, "fraction_active": 2 / 3})


def test_contrastive_loss_metric_and_degenerate_batches():
  # squared_l2: the (0, 1) pair has d = 1 still; (1, 2) has d = 4 > 2.5: 0.5 * (1 + 0 + 0) / 3.
  assert reference.contrastive_loss([0, 0, 1], [[0.0], [1.0], [3.0]], margin=2.5,
                                    metric="squared_l2") == pytest.approx(0.5 / 3)
  # B < 2: no pair at all.
  loss, stats = reference.contrastive_loss([3], [[1.0, 2.0]], return_stats=True)
  assert loss == 0.0 and stats["fraction_active"] == 0.0
  # A duplicate same-class pair costs nothing and is inactive.
  loss, stats = reference.contrastive_loss([1, 1], [[2.0], [2.0]], return_stats=True)
  assert loss == 0.0 and stats["fraction_active"] == 0.0


def test_contrastive_pair_loss():
  # Pairs: same, d = |(3, 4)| = 5 -> 25;  different, d = 5, margin 6 -> 1;
  #        different, d = 1 -> 25.  loss = 0.5 * 51 / 3 = 8.5.
  left = np.zeros((3, 2))
  right = np.array([[3.0, 4.0], [3.0, 4.0], [0.0, 1.0]])
  assert reference.contrastive_pair_loss([1, 0, 0], left, right, margin=6.0) == pytest.approx(8.5)
  assert reference.contrastive_pair_loss(np.array([True, False, False]), left, right,
                                         margin=6.0) == pytest.approx(8.5)


def test_triplet_loss():
  # Row 0: |a-p|^2 = 1, |a-n|^2 = 4: 1 - 4 + 0.5 < 0 -> 0.
  # Row 1: |a-p|^2 = 4, |a-n|^2 = 1: 4 - 1 + 0.5 = 3.5.   Mean 1.75 (default margin 0.5).
  anchor = np.zeros((2, 2))
  positive = np.array([[1.0, 0.0], [0.0, 2.0]])
  negative = np.array([[0.0, 2.0], [1.0, 0.0]])
  assert reference.triplet_loss(anchor, positive, negative) == pytest.approx(1.75)


# ----------------------------------------------------------------------------------------------
# Input errors.


@pytest.mark.parametrize("loss_fn", [
    reference.triplet_semihard_loss, reference.triplet_hard_loss,
    reference.batch_all_triplet_loss, reference.contrastive_loss])
def test_mined_loss_input_errors(loss_fn):
  x = np.zeros((3, 2))
  with pytest.raises(ValueError):
    loss_fn([0, 1, 2], np.zeros(3))            # Embeddings of rank 1.
  with pytest.raises(ValueError):
    loss_fn([[0, 1, 2]], x)                    # Labels of rank 2.
  with pytest.raises(ValueError):
    loss_fn([0, 1], x)                         # Batch sizes disagree.
  with pytest.raises(ValueError):
    loss_fn([0, 1, 2], x, metric="cosine")
  with pytest.raises(ValueError):
    loss_fn([0, 1, 2], x, margin=-0.1)
  with pytest.raises(TypeError):
    loss_fn(np.array([0.0, 1.0, 2.0]), x)      # Float labels.
