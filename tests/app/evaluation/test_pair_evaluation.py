"""The pair metrics against loops over the definitions, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from tripletjax.app.evaluation import pair_evaluation


def _loop_metrics(anchors, positives, negatives, margin, ks):
  """The definitions, one triplet and one query at a time."""
  cosine = lambda u, v: float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
  correct, losses, positive_similarities, negative_similarities = [], [], [], []
  for a, p, n in zip(anchors, positives, negatives):
    d_ap, d_an = float(np.sum((a - p) ** 2)), float(np.sum((a - n) ** 2))
    correct.append(d_ap < d_an)
    losses.append(max(d_ap - d_an + margin, 0.0))
    positive_similarities.append(cosine(a, p))
    negative_similarities.append(cosine(a, n))
  ranks = []
  for i, query in enumerate(anchors):
    matched = cosine(query, positives[i])
    # Every other gallery image at least as similar ranks before the match.
    ranks.append(sum(1 for j, candidate in enumerate(positives)
                     if j != i and cosine(query, candidate) >= matched - 1e-12))
  return {
      "triplet_accuracy": np.mean(correct), "validation_loss": np.mean(losses),
      "positive_similarity": np.mean(positive_similarities),
      "negative_similarity": np.mean(negative_similarities),
      "recall_at_k": {k: np.mean(np.asarray(ranks) < k) for k in ks},
  }


@pytest.mark.parametrize("seed", [0, 1])
def test_pair_metrics_match_the_definitions(seed):
  rng = np.random.default_rng(seed)
  # Integer-valued embeddings: exact similarities, so ties happen and must count against.
  anchors, positives, negatives = (rng.integers(-2, 3, (40, 3)).astype(np.float64)
                                   for _ in range(3))
  anchors[anchors.sum(1) == 0] += 1  # No zero rows (cosine undefined).
  positives[np.all(positives == 0, axis=1)] = 1
  negatives[np.all(negatives == 0, axis=1)] = 1
  got = pair_evaluation.pair_metrics(anchors, positives, negatives, margin=0.5, ks=(1, 5, 10))
  expected = _loop_metrics(anchors, positives, negatives, 0.5, (1, 5, 10))
  for key in ("triplet_accuracy", "validation_loss", "positive_similarity",
              "negative_similarity"):
    assert got[key] == pytest.approx(expected[key], abs=1e-12), key
  assert got["recall_at_k"] == pytest.approx(expected["recall_at_k"], abs=1e-12)
  assert got["num_validation_pairs"] == 40


def test_perfect_and_ranked_retrieval():
  gallery = np.eye(4)
  assert pair_evaluation.pair_metrics(gallery, gallery, np.roll(gallery, 1, 0), margin=0.5,
                                      ks=(1, 5))["recall_at_k"] == {1: 1.0}  # k > V dropped.
  queries = np.array([[1.0, 0.1, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
  # Query 1 is nearer gallery row 0 than its own row 1, and rows 2 and 3 are as near as its
  # own (similarity 0): ties rank before the match, so its rank is 3.
  assert pair_evaluation.retrieval_ranks(queries, gallery).tolist() == [0, 3, 0, 0]
  assert pair_evaluation.ranked_gallery(queries, gallery, 2).tolist() == [
      [0, 1], [0, 1], [2, 0], [3, 0]]
