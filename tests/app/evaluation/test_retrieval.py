"""Retrieval metrics against values worked out by hand on tiny examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tripletjax.app.evaluation import retrieval
from tripletjax.app.evaluation import search


def on_circle(degrees) -> np.ndarray:
  """[N] angles in degrees -> [N, 2] unit vectors; cosine similarity = cos(angle difference)."""
  radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
  return np.stack([np.cos(radians), np.sin(radians)], axis=1)


# Six points on the unit circle, two classes (A = 0, B = 1), three of each, so R = 2 for every
# query. Angular distances (smaller = more similar; none tie within a query):
#         0    1    2    3    4    5
#   0     -   20   50   90  135  160
#   1    20    -   30   70  115  180
#   2    50   30    -   40   85  150
#   3    90   70   40    -   45  110
#   4   135  115   85   45    -   65
#   5   160  180  150  110   65    -
CIRCLE_ANGLES = [0, 20, 50, 90, 135, 200]
CIRCLE_LABELS = np.array([0, 0, 1, 0, 1, 1])
# Neighbour order and relevance (same class as the query) of each query:
#   q0 (A): 1 2 3 4 5 -> rel 1 0 1 0 0
#   q1 (A): 0 2 3 4 5 -> rel 1 0 1 0 0
#   q2 (B): 1 3 0 4 5 -> rel 0 0 0 1 1
#   q3 (A): 2 4 1 0 5 -> rel 0 0 1 1 0
#   q4 (B): 3 5 2 1 0 -> rel 0 1 1 0 0
#   q5 (B): 4 3 2 0 1 -> rel 1 0 1 0 0


def test_circle_precision_at_1():
  # First relevance of each query: 1 1 0 0 0 1 -> 3 / 6.
  embeddings = on_circle(CIRCLE_ANGLES)
  assert retrieval.precision_at_1(embeddings, CIRCLE_LABELS) == pytest.approx(0.5)


def test_circle_recall_at_k():
  # k=1: as precision@1, 3/6. k=2: a hit in the first two for q0, q1, q4, q5 -> 4/6.
  # k=4: q2's first hit is 4th, q3's is 3rd, the rest earlier -> 6/6; k=8 (more than the 5
  # candidates) -> 6/6.
  embeddings = on_circle(CIRCLE_ANGLES)
  recall = retrieval.recall_at_k(embeddings, CIRCLE_LABELS, ks=(1, 2, 4, 8))
  assert recall == pytest.approx({"1": 3 / 6, "2": 4 / 6, "4": 1.0, "8": 1.0})


def test_circle_r_precision():
  # Same-class items among the R = 2 nearest: q0 1, q1 1, q2 0, q3 0, q4 1, q5 1
  # -> mean of (1/2, 1/2, 0, 0, 1/2, 1/2) = 1/3.
  embeddings = on_circle(CIRCLE_ANGLES)
  assert retrieval.r_precision(embeddings, CIRCLE_LABELS) == pytest.approx(1 / 3)


def test_circle_map_at_r_differs_from_r_precision():
  # (1/R) sum_{i<=R} P(i) rel(i) with R = 2:
  #   q0: rel 1 0 -> P(1) = 1 -> 1/2;  q1: same -> 1/2;  q2: rel 0 0 -> 0;  q3: 0;
  #   q4: rel 0 1 -> P(2) = 1/2 -> (1/2)/2 = 1/4;  q5: rel 1 0 -> 1/2.
  # Mean = (0.5 + 0.5 + 0 + 0 + 0.25 + 0.5) / 6 = 1.75 / 6. R-precision scores q4 as 1/2
  # too, MAP@R only 1/4, because its hit comes second.
  embeddings = on_circle(CIRCLE_ANGLES)
  assert retrieval.map_at_r(embeddings, CIRCLE_LABELS) == pytest.approx(1.75 / 6)
  assert retrieval.map_at_r(embeddings, CIRCLE_LABELS) < retrieval.r_precision(
      embeddings, CIRCLE_LABELS)


def test_map_at_r_rewards_early_hits():
  # Angles 0 (q0, A), 10 (x, B), 16 (a, A), 30 (b, A): R = 2 for the three A queries, and x is
  # a lone query (R = 0), excluded.
  #   q0 (0):  x 10, a 16, b 30 -> rel 0 1 1 -> R-precision 1/2, MAP@R = (1/2) P(2) = 1/4
  #   a (16):  x 6, b 14, q0 16 -> rel 0 1 1 -> R-precision 1/2, MAP@R = 1/4
  #   b (30):  a 14, x 20, q0 30 -> rel 1 0 1 -> R-precision 1/2, MAP@R = (1/2) P(1) = 1/2
  # R-precision = 1/2 but MAP@R = (1/4 + 1/4 + 1/2) / 3 = 1/3; precision@1 = 1/3.
  embeddings = on_circle([0, 10, 16, 30])
  labels = np.array([0, 1, 0, 0])
  metrics = retrieval.retrieval_metrics(embeddings, labels, ks=(1,))
  assert metrics["r_precision"] == pytest.approx(1 / 2)
  assert metrics["map_at_r"] == pytest.approx(1 / 3)
  assert metrics["precision_at_1"] == pytest.approx(1 / 3)


def test_perfect_clusters_score_one():
  # Three classes, four points each, within 1 degree of three well-separated directions.
  rng = np.random.default_rng(0)
  centres = np.array([0.0, 120.0, 240.0])
  labels = np.repeat([0, 1, 2], 4)
  embeddings = on_circle(centres[labels] + rng.uniform(-1, 1, size=labels.size))
  metrics = retrieval.evaluate_embeddings(embeddings, labels, embeddings, labels)
  assert metrics["precision_at_1"] == 1.0
  assert metrics["recall_at_k"] == {"1": 1.0, "2": 1.0, "4": 1.0, "8": 1.0}
  assert metrics["r_precision"] == 1.0
  assert metrics["map_at_r"] == pytest.approx(1.0)
  assert metrics["nmi"] == pytest.approx(1.0)
  assert metrics["knn_accuracy"] == 1.0
  assert metrics["verification_auc"] == 1.0
  assert metrics["verification_accuracy"] == 1.0


def test_unnormalised_inputs_rank_by_cosine():
  embeddings = on_circle(CIRCLE_ANGLES) * np.array([[1.0], [5.0], [0.1], [3.0], [2.0], [7.0]])
  assert retrieval.map_at_r(embeddings, CIRCLE_LABELS) == pytest.approx(1.75 / 6)


def test_lone_queries_are_excluded_and_all_lone_is_nan():
  # Points 0 and 1 (class 0) are each other's nearest; point 2 is alone in class 1 and would
  # count as a miss if it were scored.
  embeddings = on_circle([0, 10, 20])
  metrics = retrieval.retrieval_metrics(embeddings, [0, 0, 1])
  assert metrics["precision_at_1"] == 1.0
  assert metrics["map_at_r"] == 1.0
  all_lone = retrieval.retrieval_metrics(embeddings, [0, 1, 2])
  assert math.isnan(all_lone["precision_at_1"]) and math.isnan(all_lone["map_at_r"])


def test_string_labels():
  embeddings = on_circle(CIRCLE_ANGLES)
  labels = np.where(CIRCLE_LABELS == 0, "cat", "dog")
  assert retrieval.map_at_r(embeddings, labels) == pytest.approx(1.75 / 6)


def test_ties_go_to_the_lower_index():
  # Query 0 at 0 deg; points 1 and 2 are the same vector, so exactly tied for query 0, and
  # the lower index (1) must rank first.
  embeddings = on_circle([0, 90, 90])
  similarities = embeddings[:1] @ embeddings.T
  similarities[0, 0] = -np.inf
  np.testing.assert_array_equal(search.top_k_stable(similarities, 1), [[1]])
  # Labels [A, B, A]: q0 -> 1 (B, tie won by the lower index) miss; q1 is lone (the only B);
  # q2 -> 1 (B, similarity 1) miss -> 0 / 2.
  assert retrieval.precision_at_1(embeddings, [0, 1, 0]) == 0.0
  # Labels [A, A, B]: q0 -> 1 (A) hit; q1 -> 2 (B) miss; q2 is lone -> 1 / 2.
  assert retrieval.precision_at_1(embeddings, [0, 0, 1]) == 0.5


def test_top_k_matches_stable_argsort_with_many_ties():
  rng = np.random.default_rng(1)
  similarities = rng.integers(0, 4, size=(50, 40)).astype(np.float64)
  expected = np.argsort(-similarities, axis=1, kind="stable")
  for k in (1, 2, 5, 17, 39, 40):
    np.testing.assert_array_equal(search.top_k_stable(similarities, k), expected[:, :k])


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_equals_unchunked(chunk_size):
  rng = np.random.default_rng(2)
  # Small integer coordinates create many exact ties, the hardest case for chunking.
  embeddings = rng.integers(-2, 3, size=(150, 4)).astype(np.float64)
  labels = rng.integers(0, 12, size=150)
  unchunked = retrieval.retrieval_metrics(embeddings, labels, chunk_size=10_000)
  chunked = retrieval.retrieval_metrics(embeddings, labels, chunk_size=chunk_size)
  # Same rankings; the sums over queries may differ in the last bit.
  assert chunked["precision_at_1"] == unchunked["precision_at_1"]
  assert chunked["recall_at_k"] == unchunked["recall_at_k"]
  assert chunked["r_precision"] == pytest.approx(unchunked["r_precision"], rel=1e-12)
  assert chunked["map_at_r"] == pytest.approx(unchunked["map_at_r"], rel=1e-12)


def test_matches_brute_force_definition():
  rng = np.random.default_rng(3)
  embeddings = rng.standard_normal((120, 5))
  labels = rng.integers(0, 9, size=120)
  labels[0] = 99  # one lone query
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  similarities = unit @ unit.T
  np.fill_diagonal(similarities, -np.inf)
  order = np.argsort(-similarities, axis=1, kind="stable")[:, :-1]
  p1, r4, rp, map_r = [], [], [], []
  for query in range(len(labels)):
    r = int((labels == labels[query]).sum()) - 1
    if r == 0:
      continue
    rel = labels[order[query]] == labels[query]
    p1.append(rel[0])
    r4.append(rel[:4].any())
    rp.append(rel[:r].mean())
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    map_r.append((precision[:r] * rel[:r]).sum() / r)
  metrics = retrieval.retrieval_metrics(embeddings, labels, ks=(4,), chunk_size=16)
  assert metrics["precision_at_1"] == pytest.approx(np.mean(p1))
  assert metrics["recall_at_k"]["4"] == pytest.approx(np.mean(r4))
  assert metrics["r_precision"] == pytest.approx(np.mean(rp))
  assert metrics["map_at_r"] == pytest.approx(np.mean(map_r))


def test_nmi_independent_clusters_is_zero():
  # Two tight, far-apart groups {0, 1} and {2, 3}; the labels alternate 0 1 0 1, so k-means'
  # clusters carry no information about them: MI = 0 -> NMI = 0.
  embeddings = on_circle([0, 1, 180, 181])
  assert retrieval.nmi(embeddings, [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)
  # Labels that follow the groups: NMI = 1.
  assert retrieval.nmi(embeddings, [5, 5, 7, 7]) == pytest.approx(1.0)


def test_knn_accuracy_by_hand():
  # Training points (angle: label): 0: A, 10: A, 40: B, 90: B, 180: C.
  train = on_circle([0, 10, 40, 90, 180])
  train_labels = np.array([0, 0, 1, 1, 2])
  # Tests: 3 deg (A): nearest 0 (A) -> right; 60 deg (A): nearest 40 (B) -> wrong;
  # 170 deg (C): nearest 180 (C) -> right. k=1: 2/3.
  test = on_circle([3, 60, 170])
  test_labels = np.array([0, 0, 2])
  assert retrieval.knn_accuracy(train, train_labels, test, test_labels) == pytest.approx(2 / 3)
  # k=3: 3 deg -> A (0), A (10), B (40): A right; 60 deg -> B (40), B (90), A (10): B wrong;
  # 170 deg -> C (180), B (90), B (40): B wrong. 1/3.
  assert retrieval.knn_accuracy(
      train, train_labels, test, test_labels, k=3) == pytest.approx(1 / 3)
  # k=2 vote ties (1 A, 1 B) go to the nearer: 24 deg -> 10 (A, 14) before 40 (B, 16): A;
  # 26 deg -> 40 (B, 14) before 10 (A, 16): B. Both are A -> 1/2.
  tie_test = on_circle([24, 26])
  assert retrieval.knn_accuracy(
      train, train_labels, tie_test, [0, 0], k=2) == pytest.approx(0.5)
  # k larger than the training set uses all of it: 2 A, 2 B, 1 C; the A/B tie goes to the
  # nearer, which for 3 deg is A.
  assert retrieval.knn_accuracy(train, train_labels, on_circle([3]), [0], k=50) == 1.0


def test_verification_separable_by_hand():
  # A at 0 and 10 deg, B at 90 and 100 deg. Same-class pairs: cos 10 (twice). Different:
  # cos 90 = 0, cos 100 = -0.1736, cos 80 = 0.1736, cos 90 = 0 -> mean 0.
  embeddings = on_circle([0, 10, 90, 100])
  metrics = retrieval.verification_metrics(embeddings, [0, 0, 1, 1])
  cos = lambda d: math.cos(math.radians(d))
  assert metrics["verification_auc"] == 1.0
  assert metrics["verification_accuracy"] == 1.0
  # The threshold sits halfway between the lowest same (cos 10) and highest different (cos 80).
  assert metrics["verification_threshold"] == pytest.approx((cos(10) + cos(80)) / 2)
  assert metrics["mean_cosine_same"] == pytest.approx(cos(10))
  assert metrics["mean_cosine_different"] == pytest.approx(0.0, abs=1e-12)


def test_verification_overlapping_by_hand():
  # 0 deg (A), 60 deg (A), 90 deg (B). Pairs: (0,1) same, cos 60 = 0.5; (0,2) different,
  # cos 90 = 0; (1,2) different, cos 30 = 0.866.
  # AUC: the one positive beats one of two negatives -> 1/2.
  # Thresholds, pairs sorted 0.866 (diff), 0.5 (same), 0 (diff): accepting none -> 2/3
  # right, the top 1 -> 1/3, the top 2 -> 2/3, all -> 1/3. Best 2/3; the first best (the
  # strictest threshold, above 0.866) is reported.
  embeddings = on_circle([0, 60, 90])
  metrics = retrieval.verification_metrics(embeddings, [0, 0, 1])
  assert metrics["verification_auc"] == pytest.approx(0.5)
  assert metrics["verification_accuracy"] == pytest.approx(2 / 3)
  # Just above the largest similarity, cos 30, so that no pair is accepted.
  assert metrics["verification_threshold"] == pytest.approx(math.cos(math.radians(30)))
  assert metrics["verification_threshold"] > 0.5
  assert metrics["mean_cosine_same"] == pytest.approx(0.5)
  assert metrics["mean_cosine_different"] == pytest.approx(math.cos(math.radians(30)) / 2)


def test_verification_one_kind_of_pair_is_nan():
  metrics = retrieval.verification_metrics(on_circle([0, 10, 20]), [0, 1, 2])
  assert math.isnan(metrics["verification_auc"]) and math.isnan(metrics["mean_cosine_same"])
  assert metrics["verification_accuracy"] == 1.0  # reject everything: all 3 right


def test_pair_index_mapping_covers_every_pair_once():
  num_examples = 23
  first, second = retrieval._pair_from_linear_index(np.arange(num_examples * 22 // 2))
  pairs = set(zip(first.tolist(), second.tolist()))
  expected = set(zip(*(a.tolist() for a in np.triu_indices(num_examples, k=1))))
  assert pairs == expected
  # Large indices, where the float square root is least precise.
  big = 100_000
  last = big * (big - 1) // 2 - 1
  i, j = retrieval._pair_from_linear_index(np.array([last, last - 1, 0]))
  np.testing.assert_array_equal(i, [big - 2, big - 3, 0])
  np.testing.assert_array_equal(j, [big - 1, big - 1, 1])


def test_verification_sample_is_deterministic_and_capped():
  rng = np.random.default_rng(4)
  embeddings = rng.standard_normal((300, 8))
  labels = rng.integers(0, 5, size=300)
  first, second = retrieval._verification_pairs(300, 1000, seed=0)
  assert len(first) == 1000 and np.all(first < second)
  assert len(set(zip(first.tolist(), second.tolist()))) == 1000  # distinct pairs
  a = retrieval.verification_metrics(embeddings, labels, max_pairs=1000, seed=0)
  b = retrieval.verification_metrics(embeddings, labels, max_pairs=1000, seed=0)
  c = retrieval.verification_metrics(embeddings, labels, max_pairs=1000, seed=1)
  assert a == b and a != c


def test_evaluate_embeddings_keys_and_json():
  rng = np.random.default_rng(5)
  test = rng.standard_normal((200, 16)).astype(np.float32)
  labels = rng.integers(0, 10, size=200)
  metrics = retrieval.evaluate_embeddings(test, labels)
  assert set(metrics) == {
      "precision_at_1", "recall_at_k", "r_precision", "map_at_r", "nmi", "verification_auc",
      "verification_accuracy", "verification_threshold", "mean_cosine_same",
      "mean_cosine_different"}
  assert set(metrics["recall_at_k"]) == {"1", "2", "4", "8"}
  with_train = retrieval.evaluate_embeddings(test, labels, test[:50], labels[:50])
  assert "knn_accuracy" in with_train
  round_trip = json.loads(json.dumps(with_train, allow_nan=False))
  assert round_trip == with_train
  assert all(type(v) is float for k, v in with_train.items() if k != "recall_at_k")


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: retrieval.map_at_r(np.zeros(5), np.zeros(5, int)), ValueError),
        (lambda: retrieval.map_at_r(np.zeros((5, 2)), np.zeros(4, int)), ValueError),
        (lambda: retrieval.map_at_r(np.zeros((5, 2)), np.zeros((5, 1), int)), ValueError),
        (lambda: retrieval.map_at_r(np.ones((1, 2)), np.zeros(1, int)), ValueError),
        (lambda: retrieval.map_at_r(np.ones((5, 0)), np.zeros(5, int)), ValueError),
        (lambda: retrieval.map_at_r(np.ones((5, 2)), np.zeros(5)), TypeError),
        (lambda: retrieval.map_at_r(np.full((5, 2), np.nan), np.zeros(5, int)), ValueError),
        (lambda: retrieval.recall_at_k(np.ones((5, 2)), np.zeros(5, int), ks=(0,)), ValueError),
        (lambda: retrieval.recall_at_k(np.ones((5, 2)), np.zeros(5, int), ks=()), ValueError),
        (lambda: retrieval.map_at_r(np.ones((5, 2)), np.zeros(5, int), chunk_size=0),
         ValueError),
        (lambda: retrieval.evaluate_embeddings(np.ones((5, 2)), np.zeros(5, int),
                                               np.ones((5, 2))), ValueError),
        (lambda: retrieval.knn_accuracy(np.ones((5, 2)), np.zeros(5, int), np.ones((5, 3)),
                                        np.zeros(5, int)), ValueError),
        (lambda: retrieval.knn_accuracy(np.ones((5, 2)), np.zeros(5, int), np.ones((5, 2)),
                                        np.zeros(5, int), k=0), ValueError),
        (lambda: retrieval.verification_metrics(np.ones((5, 2)), np.zeros(5, int),
                                                max_pairs=0), ValueError),
    ],
)
def test_input_errors(call, error):
  with pytest.raises(error):
    call()


def test_precision_at_1_by_class_counts_each_class_and_averages_to_precision_at_1():
  # Class 0 retrieves itself, class 1's nearest neighbours are class 0, class 2 is one example.
  embeddings = np.array([[1.0, 0.0], [1.0, 0.01], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
  labels = np.array([0, 0, 1, 1, 2])
  by_class = retrieval.precision_at_1_by_class(embeddings, labels)
  assert list(by_class) == [0, 1, 2]
  assert by_class[0] == 1.0 and by_class[1] == 0.0 and math.isnan(by_class[2])
  rng = np.random.default_rng(3)
  embeddings, labels = rng.normal(size=(300, 4)), rng.integers(0, 6, 300)
  by_class = retrieval.precision_at_1_by_class(embeddings, labels, chunk_size=7)
  counts = np.array([np.sum(labels == c) for c in by_class])
  assert np.dot(list(by_class.values()), counts) / counts.sum() == pytest.approx(
      retrieval.precision_at_1(embeddings, labels))
