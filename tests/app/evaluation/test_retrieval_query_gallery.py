"""Query/gallery retrieval (In-Shop's protocol) and the faiss backend's agreement with NumPy."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.conftest import skip_unless_ci
from tripletjax.app import errors
from tripletjax.app.evaluation import faiss_index
from tripletjax.app.evaluation import retrieval
from tripletjax.app.evaluation import search


def brute_force_query_gallery(queries, query_labels, gallery, gallery_labels, ks):
  """The metrics by their definitions, one query at a time (float64 ranks, stable ties)."""
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  similarities = unit(queries.astype(np.float64)) @ unit(gallery.astype(np.float64)).T
  scored, p1, rp, map_r = 0, 0.0, 0.0, 0.0
  recalls = dict.fromkeys(ks, 0.0)
  for q in range(len(queries)):
    relevant_all = gallery_labels == query_labels[q]
    r = int(relevant_all.sum())
    if r == 0:
      continue
    order = np.argsort(-similarities[q].astype(np.float32), kind="stable")
    relevant = relevant_all[order]
    scored += 1
    p1 += relevant[0]
    for k in ks:
      recalls[k] += relevant[:k].any()
    rp += relevant[:r].sum() / r
    precision = np.cumsum(relevant[:r]) / np.arange(1, r + 1)
    map_r += (precision * relevant[:r]).sum() / r
  return {"precision_at_1": p1 / scored, "r_precision": rp / scored, "map_at_r": map_r / scored,
          "recall_at_k": {str(k): v / scored for k, v in recalls.items()}}


def test_query_gallery_metrics_match_their_definitions():
  rng = np.random.default_rng(0)
  gallery_labels = rng.integers(0, 6, 40)
  query_labels = np.concatenate([rng.integers(0, 6, 25), [99]])  # 99: no gallery match.
  gallery = rng.normal(size=(40, 5)) + gallery_labels[:, None] * 0.3
  queries = rng.normal(size=(26, 5)) + query_labels[:, None] * 0.3
  got = retrieval.query_gallery_metrics(queries, query_labels, gallery, gallery_labels,
                                        ks=(1, 3, 10))
  expected = brute_force_query_gallery(queries, query_labels, gallery, gallery_labels,
                                       (1, 3, 10))
  for name in ("precision_at_1", "r_precision", "map_at_r"):
    assert got[name] == pytest.approx(expected[name], abs=1e-12), name
  assert got["recall_at_k"] == pytest.approx(expected["recall_at_k"], abs=1e-12)


def test_query_gallery_perfect_and_hand_computed():
  # Queries: +x (class 0) and +y (class 1). Gallery: class 0 just above and below +x, class 1
  # at +y and at -x.
  queries = np.array([[1.0, 0.0], [0.0, 1.0]])
  gallery = np.array([[1.0, 0.1], [0.0, 1.0], [1.0, -0.1], [-1.0, 0.0]])
  gallery_labels = np.array([0, 1, 0, 1])
  got = retrieval.query_gallery_metrics(queries, [0, 1], gallery, gallery_labels, ks=(1, 2))
  # Query 0: items 0 and 2 (class 0) first: R-precision and MAP@R 1. Query 1: item 1 (class
  # 1) first, then item 0 (class 0), item 3 (class 1) only third > R = 2: both 1/2.
  assert got["precision_at_1"] == 1.0
  assert got["r_precision"] == pytest.approx(0.75)
  assert got["map_at_r"] == pytest.approx(0.75)
  assert got["recall_at_k"] == {"1": 1.0, "2": 1.0}


def test_query_gallery_checks_its_inputs():
  with pytest.raises(ValueError, match="same feature size"):
    retrieval.query_gallery_metrics(np.ones((2, 3)), [0, 1], np.ones((2, 4)), [0, 1])
  with pytest.raises(ValueError, match="query_labels has 1 entries"):
    retrieval.query_gallery_metrics(np.ones((2, 3)), [0], np.ones((2, 3)), [0, 1])
  with pytest.raises(ValueError, match="Unknown retrieval backend"):
    retrieval.query_gallery_metrics(np.ones((2, 3)), [0, 1], np.ones((2, 3)), [0, 1],
                                    backend="annoy")


@pytest.fixture
def faiss_installed():
  if importlib.util.find_spec("faiss") is None:
    skip_unless_ci("faiss is not installed (pip install 'tripletjax[faiss]')")


def embeddings_with_ties(num: int, dim: int, num_classes: int, seed: int):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, num)
  embeddings = rng.normal(size=(num, dim)).astype(np.float32) + labels[:, None] * 0.05
  embeddings[10:20] = embeddings[5]  # Exact duplicates: ties the order must break by index.
  embeddings[30] = -embeddings[31]
  return embeddings, labels


@pytest.mark.parametrize("dim", [8, 64])
def test_faiss_and_numpy_give_the_same_neighbours(faiss_installed, dim):
  embeddings, labels = embeddings_with_ties(600, dim, 12, seed=dim)
  unit = search.l2_normalize(embeddings)
  needed = np.full(len(unit), 50)
  for leave_one_out, queries in ((True, unit), (False, unit[:100] * 1.0)):
    chunks = {backend: list(search.neighbour_chunks(
        queries, unit, needed[:len(queries)], leave_one_out=leave_one_out, chunk_size=128,
        backend=backend)) for backend in ("numpy", "faiss")}
    for (rows_a, a), (rows_b, b) in zip(chunks["numpy"], chunks["faiss"], strict=True):
      assert rows_a == rows_b
      np.testing.assert_array_equal(a, b)


def test_faiss_and_numpy_metrics_agree(faiss_installed):
  embeddings, labels = embeddings_with_ties(800, 32, 20, seed=1)
  numpy_metrics = retrieval.evaluate_embeddings(embeddings, labels, embeddings[:300],
                                                labels[:300], backend="numpy")
  faiss_metrics = retrieval.evaluate_embeddings(embeddings, labels, embeddings[:300],
                                                labels[:300], backend="faiss")
  assert numpy_metrics == faiss_metrics
  queries = retrieval.query_gallery_metrics(embeddings[:200], labels[:200], embeddings[200:],
                                            labels[200:], ks=(1, 10), backend="faiss")
  assert queries == retrieval.query_gallery_metrics(
      embeddings[:200], labels[:200], embeddings[200:], labels[200:], ks=(1, 10))


def test_faiss_rows_it_cannot_vouch_for_are_ranked_by_numpy(faiss_installed, monkeypatch):
  # With a tolerance larger than any similarity gap, no faiss row is trusted: every row takes
  # the NumPy path, and the results are still the same.
  embeddings, labels = embeddings_with_ties(300, 16, 6, seed=2)
  calls = []
  original = search.numpy_top_k

  def recording(queries, references, rows, k, leave_one_out):
    calls.append(np.size(np.arange(queries.shape[0])[rows]))
    return original(queries, references, rows, k, leave_one_out)

  monkeypatch.setattr(search, "numpy_top_k", recording)
  expected = retrieval.retrieval_metrics(embeddings, labels, backend="numpy")
  calls.clear()
  monkeypatch.setattr(faiss_index, "score_tolerance", lambda dim: 10.0)
  assert retrieval.retrieval_metrics(embeddings, labels, backend="faiss") == expected
  assert sum(calls) == 300


def test_auto_backend_takes_faiss_for_large_galleries_and_few_neighbours(faiss_installed,
                                                                          monkeypatch):
  assert search.resolve_search_backend("auto", 10, faiss_min_references=11) == "numpy"
  assert search.resolve_search_backend("auto", 11, faiss_min_references=11) == "faiss"
  limit = search.FAISS_MAX_NEIGHBOURS
  assert search.resolve_search_backend("auto", 11, 11, num_neighbours=limit) == "faiss"
  assert search.resolve_search_backend("auto", 11, 11, num_neighbours=limit + 1) == "numpy"
  # The metrics pass the neighbours they need: R + recall's largest k.
  calls = []
  original = search.resolve_search_backend
  monkeypatch.setattr(search, "resolve_search_backend",
                      lambda *args, **kw: calls.append(args) or original(*args, **kw))
  labels = np.repeat(np.arange(4), 10)
  embeddings = np.random.default_rng(0).normal(size=(40, 3))
  retrieval.retrieval_metrics(embeddings, labels, ks=(1, 5), backend="auto",
                              faiss_min_references=40)
  assert calls[-1] == ("auto", 40, 40, 9)
  retrieval.query_gallery_metrics(embeddings[:5], labels[:5], embeddings, labels, ks=(1, 20),
                                  backend="auto", faiss_min_references=40)
  assert calls[-1] == ("auto", 40, 40, 20)
  monkeypatch.setattr(faiss_index, "available", lambda: False)
  assert search.resolve_search_backend("auto", 10**6) == "numpy"
  with pytest.raises(errors.MissingDependencyError, match="faiss"):
    search.resolve_search_backend("faiss", 10)
