"""Evaluate embeddings as a retrieval system (NumPy + scikit-learn, on host arrays).

The leave-one-out metrics follow "A Metric Learning Reality Check" (Musgrave et al., 2020)
and pytorch-metric-learning's `AccuracyCalculator`: every test example is used once as a
query against all the *other* test examples, which are ranked by cosine similarity
(equivalently Euclidean distance, since the embeddings are L2-normalised; they are
re-normalised here so unnormalised inputs are still ranked by cosine).

Conventions shared by all ranking metrics:
  * R(q) is the number of *other* examples with the query's label.
  * "Lone" queries (R = 0: the only example of their class) can never retrieve a same-class
    item, so, as in pytorch-metric-learning, they are left out of every leave-one-out
    metric (precision@1, recall@k, R-precision, MAP@R); NMI and the verification metrics
    still use every example.
  * A metric with nothing to average over (every query lone, no same-class or
    different-class pair) is NaN rather than a made-up 0 or 1.
  * Ties in similarity are broken deterministically: the lower reference index ranks first
    (the order of a stable sort of the similarities). Similarities are computed in float64
    and ranked at float32 resolution, so the rankings do not depend on the chunk size.

Memory stays at about `chunk_size * N` similarities (1000 query rows by default), so 10,000
queries never materialise the 10,000 x 10,000 similarity matrix.

Query/gallery evaluation (In-Shop) ranks a separate gallery for each query instead
(`query_gallery_metrics`): R(q) is then the number of gallery items with the query's label.

Neighbours come from `search` (NumPy or faiss: the same neighbours, so the same metrics).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tripletjax.app.evaluation import search

DEFAULT_KS = (1, 2, 4, 8)
DEFAULT_CHUNK_SIZE = 1000
# k-means restarts for NMI, fixed so the metric is reproducible for a given seed. One
# k-means++ run, as pytorch-metric-learning's faiss k-means does: more restarts cost a multiple
# of the time and hardly move NMI (benchmarks/RESULTS.md).
KMEANS_N_INIT = 1
# Pairs whose similarities are gathered at once in `verification_metrics`
# (2 x 16384 x D float64 rows is ~64 MiB at D = 256).
_PAIR_CHUNK_SIZE = 16384


# ----------------------------------------------------------------------------- validation


def _check_embeddings(embeddings, name: str, min_examples: int = 2) -> np.ndarray:
  embeddings = np.asarray(embeddings)
  if embeddings.ndim != 2:
    raise ValueError(f"{name} must have shape [N, D], got shape {embeddings.shape}.")
  if not (np.issubdtype(embeddings.dtype, np.floating)
          or np.issubdtype(embeddings.dtype, np.integer)):
    raise TypeError(f"{name} must be a real-valued array, got dtype {embeddings.dtype}.")
  if embeddings.shape[0] < min_examples:
    raise ValueError(
        f"{name} needs at least {min_examples} example{'s' if min_examples > 1 else ''}, "
        f"got {embeddings.shape[0]}.")
  if embeddings.shape[1] < 1:
    raise ValueError(f"{name} must have at least one feature, got shape {embeddings.shape}.")
  if not np.all(np.isfinite(embeddings)):
    raise ValueError(f"{name} contains NaN or infinite values.")
  return embeddings


def _check_labels(labels, num_examples: int, name: str, embeddings_name: str) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{name} must have shape [N], got shape {labels.shape}.")
  if np.issubdtype(labels.dtype, np.floating):
    raise TypeError(
        f"{name} must hold class ids (integers or strings), got dtype {labels.dtype}; "
        "cast whole-number labels with labels.astype(int).")
  if labels.shape[0] != num_examples:
    raise ValueError(
        f"{name} has {labels.shape[0]} entries but {embeddings_name} has {num_examples} rows.")
  return labels


def _check_labelled_set(
    embeddings, labels, prefix: str = "", min_examples: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
  """Checks shapes and dtypes; leave-one-out needs 2 examples, a k-NN side only 1."""
  embeddings = _check_embeddings(embeddings, f"{prefix}embeddings", min_examples)
  labels = _check_labels(labels, embeddings.shape[0], f"{prefix}labels", f"{prefix}embeddings")
  return embeddings, labels


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
  ks = tuple(ks)
  if not ks:
    raise ValueError("ks must contain at least one k.")
  for k in ks:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"every k in ks must be a positive integer, got {ks}.")
  return tuple(int(k) for k in ks)


def _check_chunk_size(chunk_size: int) -> int:
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
      or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
  return int(chunk_size)


# ----------------------------------------------------------------------------- metrics


def _mean_or_nan(total: float, count: int) -> float:
  return float(total / count) if count else float("nan")


def _ranking_metrics(queries, query_ids, references, reference_ids, same_class_others, *,
                     ks, chunk_size, leave_one_out, backend) -> dict:
  """Precision@1, recall@k, R-precision and MAP@R of unit-norm `queries` against `references`.

  Args:
    queries: [Q, D] unit rows; `query_ids` [Q] their class ids.
    references: [N, D] unit rows; `reference_ids` [N] their class ids (same id space).
    same_class_others: [Q] R of each query: its relevant references (0: left out).
    ks, chunk_size, leave_one_out, backend: as in `search.neighbour_chunks`.
  """
  needed = np.maximum(same_class_others, max(ks))
  num_scored = 0
  precision_at_1_sum = 0.0
  recall_sums = dict.fromkeys(ks, 0.0)
  r_precision_sum = 0.0
  map_at_r_sum = 0.0
  for rows, neighbours in search.neighbour_chunks(
      queries, references, needed, leave_one_out=leave_one_out, chunk_size=chunk_size,
      backend=backend):
    r = same_class_others[rows]
    scored = r > 0
    if not scored.any():
      continue
    r = r[scored]
    relevant = reference_ids[neighbours[scored]] == query_ids[rows][scored, None]  # [C, K]
    ranks = np.arange(1, relevant.shape[1] + 1)  # 1-based rank of each column
    within_r = ranks[None, :] <= r[:, None]
    num_scored += int(scored.sum())
    precision_at_1_sum += float(relevant[:, 0].sum())
    for k in ks:
      recall_sums[k] += float(relevant[:, :k].any(axis=1).sum())
    relevant_within_r = relevant & within_r
    r_precision_sum += float((relevant_within_r.sum(axis=1) / r).sum())
    # MAP@R = mean_q (1/R) sum_{i<=R} P(i) rel(i), with P(i) the precision of the top i.
    precision_at_rank = np.cumsum(relevant, axis=1) / ranks[None, :]
    map_at_r_sum += float(
        ((precision_at_rank * relevant_within_r).sum(axis=1) / r).sum())

  return {
      "precision_at_1": _mean_or_nan(precision_at_1_sum, num_scored),
      "recall_at_k": {str(k): _mean_or_nan(recall_sums[k], num_scored) for k in ks},
      "r_precision": _mean_or_nan(r_precision_sum, num_scored),
      "map_at_r": _mean_or_nan(map_at_r_sum, num_scored),
  }


def retrieval_metrics(
    embeddings,
    labels,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "numpy",
    faiss_min_references: int = search.FAISS_MIN_REFERENCES,
) -> dict:
  """Leave-one-out ranking metrics of a labelled set, in one pass over its neighbours.

  Each example queries all the others, ranked by cosine similarity. Queries whose class
  has no other example (R = 0) are excluded from every metric here (see the module doc).

  Args:
    embeddings: [N, D] embeddings (re-normalised to unit norm).
    labels: [N] class ids (integers or strings).
    ks: the k of Recall@k.
    chunk_size: queries ranked at once; memory is about `chunk_size * N` floats.
    backend: "numpy", "faiss" or "auto" (`search.resolve_search_backend`); the same results.
    faiss_min_references: the set size from which "auto" may use faiss.

  Returns:
    {"precision_at_1": float, "recall_at_k": {"1": float, ...}, "r_precision": float,
     "map_at_r": float}; each is NaN when every query is lone.
  """
  embeddings, labels = _check_labelled_set(embeddings, labels)
  ks = _check_ks(ks)
  chunk_size = _check_chunk_size(chunk_size)
  _, class_ids, class_sizes = np.unique(labels, return_inverse=True, return_counts=True)
  same_class_others = class_sizes[class_ids] - 1
  backend = search.resolve_search_backend(backend, len(labels), faiss_min_references,
                                          max(max(ks), int(same_class_others.max())))
  unit = search.l2_normalize(embeddings)
  return _ranking_metrics(unit, class_ids, unit, class_ids, same_class_others, ks=ks,
                          chunk_size=chunk_size, leave_one_out=True, backend=backend)


def query_gallery_metrics(
    query_embeddings,
    query_labels,
    gallery_embeddings,
    gallery_labels,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "numpy",
    faiss_min_references: int = search.FAISS_MIN_REFERENCES,
) -> dict:
  """Ranking metrics of queries searching a separate gallery (In-Shop's protocol).

  Every query ranks the whole gallery by cosine similarity; R(q) is the number of gallery
  items with the query's label, and queries with R = 0 are left out (as lone queries are in
  the leave-one-out metrics).

  Args:
    query_embeddings: [Q, D]; query_labels: [Q] class ids.
    gallery_embeddings: [N, D]; gallery_labels: [N] class ids.
    ks: the k of Recall@k (In-Shop papers report 1, 10, 20, 30, 40, 50).
    chunk_size: queries ranked at once; memory is about `chunk_size * N` floats.
    backend: "numpy", "faiss" or "auto" (`search.resolve_search_backend`); the same results.
    faiss_min_references: the gallery size from which "auto" may use faiss.

  Returns:
    {"precision_at_1", "recall_at_k": {"1": ..., ...}, "r_precision", "map_at_r"} as in
    `retrieval_metrics`.
  """
  query_embeddings, query_labels = _check_labelled_set(
      query_embeddings, query_labels, "query_", min_examples=1)
  gallery_embeddings, gallery_labels = _check_labelled_set(
      gallery_embeddings, gallery_labels, "gallery_", min_examples=1)
  if query_embeddings.shape[1] != gallery_embeddings.shape[1]:
    raise ValueError("query_embeddings and gallery_embeddings must have the same feature "
                     f"size, got {query_embeddings.shape} and {gallery_embeddings.shape}.")
  ks = _check_ks(ks)
  chunk_size = _check_chunk_size(chunk_size)
  _, class_ids = np.unique(np.concatenate([query_labels, gallery_labels]),
                           return_inverse=True)
  query_ids, gallery_ids = class_ids[:len(query_labels)], class_ids[len(query_labels):]
  gallery_counts = np.bincount(gallery_ids, minlength=class_ids.max() + 1)
  relevant = gallery_counts[query_ids]
  backend = search.resolve_search_backend(backend, len(gallery_labels), faiss_min_references,
                                          max(max(ks), int(relevant.max())))
  return _ranking_metrics(search.l2_normalize(query_embeddings), query_ids,
                          search.l2_normalize(gallery_embeddings), gallery_ids,
                          relevant, ks=ks, chunk_size=chunk_size,
                          leave_one_out=False, backend=backend)


def precision_at_1(embeddings, labels, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
  """Fraction of queries whose nearest other example has their class.

  Args:
    embeddings: [N, D] embeddings.
    labels: [N] class ids.
    chunk_size: queries ranked at once.

  Returns:
    Precision@1 over the queries with R > 0 (NaN if there are none).
  """
  return retrieval_metrics(embeddings, labels, ks=(1,), chunk_size=chunk_size)[
      "precision_at_1"]


def precision_at_1_by_class(embeddings, labels, *,
                            chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict:
  """Precision@1 of each class's queries: which classes an embedding retrieves well.

  The same neighbours and tie rule as `retrieval_metrics`, so the class values weighted by
  their scored queries average to its precision@1.

  Args:
    embeddings: [N, D] embeddings.
    labels: [N] class ids.
    chunk_size: queries ranked at once.

  Returns:
    {class id: precision@1 of its queries}, sorted by class; NaN for a class of one example.
  """
  embeddings, labels = _check_labelled_set(embeddings, labels)
  classes, class_ids, class_sizes = np.unique(labels, return_inverse=True, return_counts=True)
  unit = search.l2_normalize(embeddings)
  hits = np.zeros(len(labels), bool)
  for rows, neighbours in search.neighbour_chunks(unit, unit, np.ones(len(labels), np.int64),
                                                  leave_one_out=True, chunk_size=chunk_size):
    hits[rows] = class_ids[neighbours[:, 0]] == class_ids[rows]
  return {label.item() if isinstance(label, np.generic) else label:
          _mean_or_nan(float(hits[class_ids == index].sum()),
                       int(class_sizes[index]) if class_sizes[index] > 1 else 0)
          for index, label in enumerate(classes)}


def recall_at_k(
    embeddings, labels, ks: Sequence[int] = DEFAULT_KS, *,
    chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
  """Metric-learning Recall@k: fraction of queries with a same-class item in their top k.

  (Not the information-retrieval recall: one hit among the k nearest is enough.)

  Args:
    embeddings: [N, D] embeddings.
    labels: [N] class ids.
    ks: the k values.
    chunk_size: queries ranked at once.

  Returns:
    {str(k): recall} over the queries with R > 0 (NaN if there are none).
  """
  return retrieval_metrics(embeddings, labels, ks=ks, chunk_size=chunk_size)["recall_at_k"]


def r_precision(embeddings, labels, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
  """Mean over queries of (same-class items among the R nearest) / R.

  R is the number of other examples of the query's class; queries with R = 0 are excluded.

  Args:
    embeddings: [N, D] embeddings.
    labels: [N] class ids.
    chunk_size: queries ranked at once.

  Returns:
    R-precision (NaN if every query has R = 0).
  """
  return retrieval_metrics(embeddings, labels, ks=(1,), chunk_size=chunk_size)["r_precision"]


def map_at_r(embeddings, labels, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
  """MAP@R (Musgrave et al., 2020): mean over queries of (1/R) sum_{i<=R} P(i) rel(i).

  P(i) is the precision among the i nearest and rel(i) is 1 when the i-th nearest has the
  query's class. Unlike R-precision it rewards putting the same-class items first within
  the top R. Queries with R = 0 are excluded.

  Args:
    embeddings: [N, D] embeddings.
    labels: [N] class ids.
    chunk_size: queries ranked at once.

  Returns:
    MAP@R (NaN if every query has R = 0).
  """
  return retrieval_metrics(embeddings, labels, ks=(1,), chunk_size=chunk_size)["map_at_r"]


def nmi(embeddings, labels, *, seed: int = 0, n_init: int = KMEANS_N_INIT) -> float:
  """Normalised mutual information between the labels and a k-means clustering.

  k-means (scikit-learn, k = number of classes, `n_init` restarts, `random_state=seed`)
  clusters the unit-normalised embeddings; NMI uses the arithmetic-mean normalisation
  (scikit-learn's default), as pytorch-metric-learning does.

  Args:
    embeddings: [N, D] embeddings.
    labels: [N] class ids.
    seed: k-means random state.
    n_init: k-means restarts.

  Returns:
    NMI in [0, 1].
  """
  # scikit-learn imported here: the neighbour metrics need NumPy alone (benchmarks/
  # small_training.py runs them where scikit-learn is not installed).
  from sklearn.cluster import KMeans
  from sklearn.metrics import normalized_mutual_info_score

  embeddings, labels = _check_labelled_set(embeddings, labels)
  _, class_ids = np.unique(labels, return_inverse=True)
  num_classes = int(class_ids.max()) + 1
  unit = search.l2_normalize(embeddings)
  if num_classes == 1:
    clusters = np.zeros_like(class_ids)
  else:
    clusters = KMeans(n_clusters=num_classes, n_init=n_init, random_state=seed).fit_predict(unit)
  return float(normalized_mutual_info_score(class_ids, clusters))


def knn_accuracy(
    train_embeddings, train_labels, test_embeddings, test_labels, k: int = 1, *,
    chunk_size: int = DEFAULT_CHUNK_SIZE, backend: str = "numpy",
    faiss_min_references: int = search.FAISS_MIN_REFERENCES) -> float:
  """Accuracy of k-nearest-neighbour classification of the test set by the training set.

  Neighbours are ranked by cosine similarity (ties to the lower training index). The
  prediction is the majority label among the k nearest; a tie in votes goes to the tied
  label whose best-ranked neighbour is nearest.

  Args:
    train_embeddings: [N, D] reference embeddings.
    train_labels: [N] their class ids.
    test_embeddings: [M, D] query embeddings.
    test_labels: [M] their class ids.
    k: neighbours that vote (capped at N).
    chunk_size: test rows classified at once.
    backend: "numpy", "faiss" or "auto" (`search.resolve_search_backend`); the same results.

  Returns:
    Fraction of test examples whose predicted label equals their label.
  """
  train_embeddings, train_labels = _check_labelled_set(
      train_embeddings, train_labels, "train_", min_examples=1)
  test_embeddings, test_labels = _check_labelled_set(
      test_embeddings, test_labels, "test_", min_examples=1)
  if train_embeddings.shape[1] != test_embeddings.shape[1]:
    raise ValueError(
        "train_embeddings and test_embeddings must have the same feature size, got "
        f"{train_embeddings.shape} and {test_embeddings.shape}.")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive integer, got {k!r}.")
  chunk_size = _check_chunk_size(chunk_size)
  backend = search.resolve_search_backend(backend, len(train_labels), faiss_min_references,
                                          int(k))
  # One id space for both sets: classes may be missing from either side.
  _, class_ids = np.unique(np.concatenate([train_labels, test_labels]), return_inverse=True)
  train_ids, test_ids = class_ids[:len(train_labels)], class_ids[len(train_labels):]
  num_neighbours = np.full(len(test_ids), min(int(k), len(train_ids)))

  num_correct = 0
  for rows, neighbours in search.neighbour_chunks(
      search.l2_normalize(test_embeddings), search.l2_normalize(train_embeddings),
      num_neighbours, leave_one_out=False, chunk_size=chunk_size, backend=backend):
    neighbour_ids = train_ids[neighbours]  # [C, k], nearest first
    # votes[c, j]: how many of the k neighbours share neighbour j's label. argmax returns the
    # first maximum, i.e. the nearest neighbour among the most-voted labels.
    votes = (neighbour_ids[:, :, None] == neighbour_ids[:, None, :]).sum(axis=2)
    predicted = np.take_along_axis(neighbour_ids, votes.argmax(axis=1)[:, None], axis=1)[:, 0]
    num_correct += int((predicted == test_ids[rows]).sum())
  return num_correct / len(test_ids)


# ----------------------------------------------------------------------------- verification


def _pair_from_linear_index(linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Maps 0..N(N-1)/2-1 onto the pairs (i, j), i < j, enumerated as (0,1), (0,2), (1,2), ...

  Pair (i, j) has index j(j-1)/2 + i, so j is the largest integer with j(j-1)/2 <= index.
  """
  linear = linear.astype(np.int64)
  j = np.floor((1.0 + np.sqrt(1.0 + 8.0 * linear)) / 2.0).astype(np.int64)
  # The float square root can be off by one near perfect squares; fix it exactly.
  j = np.where(j * (j - 1) // 2 > linear, j - 1, j)
  j = np.where((j + 1) * j // 2 <= linear, j + 1, j)
  i = linear - j * (j - 1) // 2
  return i, j


def _verification_pairs(
    num_examples: int, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """All pairs i < j when there are at most `max_pairs`, else a seeded sample of distinct pairs."""
  num_pairs = num_examples * (num_examples - 1) // 2
  if num_pairs <= max_pairs:
    return np.triu_indices(num_examples, k=1)
  rng = np.random.default_rng(seed)
  linear = np.sort(rng.choice(num_pairs, size=max_pairs, replace=False))
  return _pair_from_linear_index(linear)


def _best_threshold_accuracy(
    similarities: np.ndarray, same_class: np.ndarray) -> tuple[float, float]:
  """Best accuracy of the rule "same class iff similarity >= t", and that t.

  Sorting the pairs by decreasing similarity, each cut between two distinct values is a
  candidate; t is the midpoint of the cut (above the maximum when nothing is accepted).
  """
  order = np.argsort(-similarities, kind="stable")
  sorted_similarities = similarities[order]
  sorted_same = same_class[order]
  num_pairs = len(sorted_same)
  num_negative = num_pairs - int(sorted_same.sum())
  # Accepting the top c pairs (c = 0..num_pairs): correct = true positives + true negatives.
  true_positives = np.concatenate([[0], np.cumsum(sorted_same)])
  accepted = np.arange(num_pairs + 1)
  correct = true_positives + (num_negative - (accepted - true_positives))
  # A cut inside a run of equal similarities is not realisable by any threshold.
  valid = np.ones(num_pairs + 1, dtype=bool)
  valid[1:num_pairs] = sorted_similarities[:-1] != sorted_similarities[1:]
  best = int(np.flatnonzero(valid)[np.argmax(correct[valid])])
  if best == 0:
    threshold = float(np.nextafter(sorted_similarities[0], np.inf))
  elif best == num_pairs:
    threshold = float(sorted_similarities[-1])
  else:
    threshold = float((sorted_similarities[best - 1] + sorted_similarities[best]) / 2.0)
  return float(correct[best] / num_pairs), threshold


def verification_metrics(
    embeddings, labels, *, max_pairs: int = 200_000, seed: int = 0) -> dict[str, float]:
  """Pair verification: does the cosine similarity of a pair tell same from different class?

  Uses all pairs i < j when there are at most `max_pairs`, otherwise `max_pairs` distinct
  pairs drawn uniformly with `seed` (so most sampled pairs are different-class, like the
  population).

  Args:
    embeddings: [N, D] embeddings (re-normalised to unit norm).
    labels: [N] class ids.
    max_pairs: cap on the number of pairs scored.
    seed: seed of the pair sample.

  Returns:
    {"verification_auc": ROC AUC of the similarity as a same-class score,
     "verification_accuracy": best accuracy of a similarity threshold,
     "verification_threshold": that threshold (same class iff similarity >= it),
     "mean_cosine_same": mean similarity of same-class pairs,
     "mean_cosine_different": mean similarity of different-class pairs}.
    AUC is NaN when the pairs are all of one kind; a mean is NaN when it has no pairs.
  """
  embeddings, labels = _check_labelled_set(embeddings, labels)
  if isinstance(max_pairs, bool) or not isinstance(max_pairs, (int, np.integer)) \
      or max_pairs < 1:
    raise ValueError(f"max_pairs must be a positive integer, got {max_pairs!r}.")
  unit = search.l2_normalize(embeddings)
  _, class_ids = np.unique(labels, return_inverse=True)
  first, second = _verification_pairs(len(class_ids), int(max_pairs), seed)
  similarities = np.concatenate([
      np.einsum("pd,pd->p", unit[first[s:s + _PAIR_CHUNK_SIZE]],
                unit[second[s:s + _PAIR_CHUNK_SIZE]])
      for s in range(0, len(first), _PAIR_CHUNK_SIZE)])
  same_class = class_ids[first] == class_ids[second]

  num_same = int(same_class.sum())
  num_different = len(same_class) - num_same
  if num_same and num_different:
    from sklearn.metrics import roc_auc_score  # See `nmi`.
    auc = float(roc_auc_score(same_class, similarities))
  else:
    auc = float("nan")
  accuracy, threshold = _best_threshold_accuracy(similarities, same_class)
  return {
      "verification_auc": auc,
      "verification_accuracy": accuracy,
      "verification_threshold": threshold,
      "mean_cosine_same": _mean_or_nan(float(similarities[same_class].sum()), num_same),
      "mean_cosine_different": _mean_or_nan(
          float(similarities[~same_class].sum()), num_different),
  }


# ----------------------------------------------------------------------------- all together


def evaluate_embeddings(
    test_embeddings,
    test_labels,
    train_embeddings=None,
    train_labels=None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_pairs: int = 200_000,
    backend: str = "numpy",
    faiss_min_references: int = search.FAISS_MIN_REFERENCES,
) -> dict:
  """All retrieval metrics of a test set, as JSON-serialisable Python floats.

  Args:
    test_embeddings: [N, D] embeddings of the test set (queries and gallery, leave-one-out).
    test_labels: [N] class ids.
    train_embeddings: optional [M, D] embeddings for the test-vs-train 1-NN accuracy.
    train_labels: [M] class ids; given exactly when `train_embeddings` is.
    ks: the k of Recall@k.
    seed: seed of k-means (NMI) and of the verification pair sample.
    chunk_size: queries ranked at once (memory about `chunk_size * N` floats).
    max_pairs: cap on the verification pairs.
    backend: neighbour search, "numpy", "faiss" or "auto" (`search.resolve_search_backend`).
    faiss_min_references: the gallery size from which "auto" may use faiss.

  Returns:
    {"precision_at_1", "recall_at_k": {"1": ..., "2": ..., ...}, "r_precision", "map_at_r",
     "nmi", "knn_accuracy" (only with training data), "verification_auc",
     "verification_accuracy", "verification_threshold", "mean_cosine_same",
     "mean_cosine_different"}. Queries with R = 0 are left out of the ranking metrics; a
    metric with nothing to average is NaN (see the module doc).
  """
  test_embeddings, test_labels = _check_labelled_set(test_embeddings, test_labels, "test_")
  if (train_embeddings is None) != (train_labels is None):
    raise ValueError("train_embeddings and train_labels must be given together.")
  metrics = retrieval_metrics(test_embeddings, test_labels, ks=ks, chunk_size=chunk_size,
                              backend=backend, faiss_min_references=faiss_min_references)
  metrics["nmi"] = nmi(test_embeddings, test_labels, seed=seed)
  if train_embeddings is not None:
    metrics["knn_accuracy"] = knn_accuracy(
        train_embeddings, train_labels, test_embeddings, test_labels, k=1,
        chunk_size=chunk_size, backend=backend, faiss_min_references=faiss_min_references)
  metrics.update(verification_metrics(
      test_embeddings, test_labels, max_pairs=max_pairs, seed=seed))
  return metrics


def evaluate_query_gallery(
    query_embeddings,
    query_labels,
    gallery_embeddings,
    gallery_labels,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_pairs: int = 200_000,
    backend: str = "numpy",
    faiss_min_references: int = search.FAISS_MIN_REFERENCES,
) -> dict:
  """All retrieval metrics of queries against a separate gallery (In-Shop's protocol).

  The ranking metrics are `query_gallery_metrics`; NMI and the verification metrics are those
  of the queries and gallery together. Arguments as in `evaluate_embeddings`.

  Returns:
    {"precision_at_1", "recall_at_k", "r_precision", "map_at_r", "nmi", "verification_auc",
     ..., "num_queries", "num_gallery"}.
  """
  metrics = query_gallery_metrics(
      query_embeddings, query_labels, gallery_embeddings, gallery_labels, ks=ks,
      chunk_size=chunk_size, backend=backend, faiss_min_references=faiss_min_references)
  everything = np.concatenate([np.asarray(query_embeddings), np.asarray(gallery_embeddings)])
  labels = np.concatenate([np.asarray(query_labels), np.asarray(gallery_labels)])
  metrics["nmi"] = nmi(everything, labels, seed=seed)
  metrics.update(verification_metrics(everything, labels, max_pairs=max_pairs, seed=seed))
  metrics.update(num_queries=len(query_labels), num_gallery=len(gallery_labels))
  return metrics
