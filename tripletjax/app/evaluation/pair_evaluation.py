"""Evaluation of the pair (Siamese) workflow on held-out pairs.

Given the embeddings of the validation triplets (left image, its right image, an image of
another pair) and of every validation pair:

  * `triplet_accuracy`: the fraction of triplets with d(a, p) < d(a, n), squared L2;
  * `positive_similarity`, `negative_similarity`: mean cosine similarity anchor-positive and
    anchor-negative (the Keras example's check: the first must beat the second);
  * `validation_loss`: the triplet loss of those triplets at the run's margin;
  * `recall_at_k`: retrieval of the right image given the left one among all validation right
    images, by cosine similarity: the fraction of left images whose right image ranks in the
    top k. A gallery image as similar as the right one ranks before it (ties count against).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RECALL_KS = (1, 5, 10)


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
  embeddings = np.asarray(embeddings, np.float64)
  norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
  return embeddings / np.where(norms > 0, norms, 1.0)


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
  """The rank (0 = first) of gallery[i] among all gallery rows for query i, by cosine
  similarity, ties ranked before it.

  Args:
    queries: [V, E] embeddings of the left images.
    gallery: [V, E] embeddings of their right images, row i the match of query i.

  Returns:
    int64 [V].
  """
  similarities = _unit_rows(queries) @ _unit_rows(gallery).T
  matched = np.diag(similarities)[:, None]
  at_least_as_similar = similarities >= matched
  return at_least_as_similar.sum(axis=1).astype(np.int64) - 1


def ranked_gallery(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
  """int64 [V, k]: the indices of the k gallery rows most similar to each query, best first
  (ties by index)."""
  similarities = _unit_rows(queries) @ _unit_rows(gallery).T
  return np.argsort(-similarities, axis=1, kind="stable")[:, :k]


def pair_metrics(anchors: np.ndarray, positives: np.ndarray, negatives: np.ndarray, *,
                 margin: float, ks: Sequence[int] = RECALL_KS) -> dict:
  """The metrics of the module docstring.

  Args:
    anchors, positives, negatives: [V, E] embeddings of the validation triplets; anchors[i]
      and positives[i] are the two images of validation pair i, so `positives` is also the
      retrieval gallery.
    margin: the triplet loss margin.
    ks: the k of recall@k (those above V are left out).

  Returns:
    {"triplet_accuracy", "positive_similarity", "negative_similarity", "validation_loss",
     "recall_at_k": {k: value}, "num_validation_pairs"}.
  """
  anchors, positives, negatives = (np.asarray(x, np.float64)
                                   for x in (anchors, positives, negatives))
  if not anchors.shape == positives.shape == negatives.shape or anchors.ndim != 2:
    raise ValueError("anchors, positives and negatives must be [V, E] of one shape, got "
                     f"{anchors.shape}, {positives.shape} and {negatives.shape}.")
  positive_distance = np.sum((anchors - positives) ** 2, axis=1)
  negative_distance = np.sum((anchors - negatives) ** 2, axis=1)
  unit_anchors = _unit_rows(anchors)
  ranks = retrieval_ranks(anchors, positives)
  return {
      "triplet_accuracy": float(np.mean(positive_distance < negative_distance)),
      "positive_similarity": float(np.mean(np.sum(unit_anchors * _unit_rows(positives), 1))),
      "negative_similarity": float(np.mean(np.sum(unit_anchors * _unit_rows(negatives), 1))),
      "validation_loss": float(np.mean(np.maximum(
          positive_distance - negative_distance + margin, 0.0))),
      "recall_at_k": {int(k): float(np.mean(ranks < k)) for k in ks if k <= len(anchors)},
      "num_validation_pairs": int(len(anchors)),
  }
