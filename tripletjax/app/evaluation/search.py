"""Nearest-neighbour search: the search backends (NumPy, faiss) and their shared exact ranking.

Similarities are cosine (rows L2-normalised, computed in float64, ranked at float32
resolution); ties go to the lower reference index, so the rankings do not depend on the chunk
size. Memory stays at about `chunk_size * N` similarities.

Neighbours come from one of `SEARCH_BACKENDS`: "numpy" (BLAS similarities, the ranking above)
or "faiss" (`faiss_index`: an exact inner-product index for the candidates, re-ranked here with
NumPy's similarities and tie rule, so both give the same neighbours and metrics). "auto" takes
faiss, when it is installed, for galleries of at least `FAISS_MIN_REFERENCES` searched for at
most `FAISS_MAX_NEIGHBOURS` neighbours per query: with more, gathering the candidates'
similarities costs more than NumPy's full ranking (benchmarks/retrieval_backends.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tripletjax.app import errors
from tripletjax.app.evaluation import faiss_index

SEARCH_BACKENDS = ("auto", "numpy", "faiss")
# "auto" searches galleries of at least this many references with faiss (when installed), for
# at most FAISS_MAX_NEIGHBOURS neighbours per query.
FAISS_MIN_REFERENCES = 20_000
FAISS_MAX_NEIGHBOURS = 64
# Candidates fetched from faiss beyond the k needed: max(_FAISS_EXTRA, k / 8).
_FAISS_EXTRA = 16
# Candidate similarities gathered at once in the faiss re-ranking (float64 entries).
_GATHER_ENTRIES = 1 << 23


def resolve_search_backend(backend: str, num_references: int,
                           faiss_min_references: int = FAISS_MIN_REFERENCES,
                           num_neighbours: int | None = None) -> str:
  """The neighbour search that `backend` means for a gallery of `num_references` rows searched
  for `num_neighbours` neighbours per query (None: few).

  Raises:
    ValueError: an unknown backend.
    errors.MissingDependencyError: "faiss" where faiss cannot be imported.
  """
  if backend not in SEARCH_BACKENDS:
    raise ValueError(f"Unknown retrieval backend {backend!r}; expected one of "
                     f"{', '.join(SEARCH_BACKENDS)}.")
  if backend == "auto":
    use_faiss = (num_references >= faiss_min_references
                 and (num_neighbours is None or num_neighbours <= FAISS_MAX_NEIGHBOURS)
                 and faiss_index.available())
    return "faiss" if use_faiss else "numpy"
  if backend == "faiss" and not faiss_index.available():
    raise errors.MissingDependencyError(
        "the faiss retrieval backend needs faiss, which is not installed",
        faiss_index.INSTALL_HINT)
  return backend


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
  """[N, D] -> [N, D] float64 rows of unit norm (all-zero rows stay zero)."""
  embeddings = embeddings.astype(np.float64)
  norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
  return embeddings / np.maximum(norms, 1e-12)


def top_k_stable(similarities: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k most similar columns of each row, most similar first.

  Equal to `np.argsort(-similarities, kind="stable")[:, :k]` (ties go to the lower index)
  but O(N) per row instead of O(N log N): an argpartition finds the top k, and only rows
  where a tie straddles the k-th place (so argpartition's choice among equal values would be
  arbitrary) fall back to the full stable sort.

  Args:
    similarities: [C, N] float array.
    k: number of neighbours, 1 <= k <= N.

  Returns:
    [C, k] int64 column indices.
  """
  num_columns = similarities.shape[1]
  negated = -similarities
  if k >= num_columns:
    return np.argsort(negated, axis=1, kind="stable")
  # Sorting the chosen k by index first makes the stable sort by value below order them by
  # (similarity descending, index ascending).
  top = np.sort(np.argpartition(negated, k - 1, axis=1)[:, :k], axis=1)
  top_negated = np.take_along_axis(negated, top, axis=1)
  kth_negated = top_negated.max(axis=1, keepdims=True)
  num_strictly_better = np.count_nonzero(negated < kth_negated, axis=1)
  num_tied_at_kth = np.count_nonzero(negated == kth_negated, axis=1)
  top = np.take_along_axis(top, np.argsort(top_negated, axis=1, kind="stable"), axis=1)
  ambiguous_rows = np.flatnonzero(num_strictly_better + num_tied_at_kth > k)
  if ambiguous_rows.size:
    top[ambiguous_rows] = np.argsort(negated[ambiguous_rows], axis=1, kind="stable")[:, :k]
  return top


def neighbour_chunks(
    queries: np.ndarray,
    references: np.ndarray,
    num_neighbours: np.ndarray,
    *,
    leave_one_out: bool,
    chunk_size: int,
    backend: str = "numpy",
) -> Iterator[tuple[slice, np.ndarray]]:
  """Yields `(query_slice, neighbours[C, K])` chunk by chunk, nearest first.

  Args:
    queries: [Q, D] unit-norm rows.
    references: [N, D] unit-norm rows; with `leave_one_out` the same array as `queries`.
    num_neighbours: [Q] neighbours each query needs; a chunk ranks the largest of its
      queries' needs (capped at the number of candidates).
    leave_one_out: exclude query i from its own neighbours (reference i).
    chunk_size: query rows per chunk; memory is O(chunk_size * N).
    backend: "numpy" or "faiss" (same neighbours; see the module docstring).
  """
  if backend == "faiss":
    yield from _faiss_neighbour_chunks(queries, references, num_neighbours,
                                       leave_one_out=leave_one_out, chunk_size=chunk_size)
    return
  if backend != "numpy":
    raise ValueError(f"Unknown neighbour backend {backend!r}; expected numpy or faiss.")
  num_candidates = references.shape[0] - (1 if leave_one_out else 0)
  for start in range(0, queries.shape[0], chunk_size):
    rows = slice(start, min(start + chunk_size, queries.shape[0]))
    k = int(min(max(num_neighbours[rows].max(), 1), num_candidates))
    yield rows, numpy_top_k(queries, references, rows, k, leave_one_out)


def numpy_top_k(queries, references, rows: slice | np.ndarray, k: int,
                 leave_one_out: bool) -> np.ndarray:
  """[C, k] nearest references of `queries[rows]` by exact similarity, ties to lower index."""
  query_indices = np.arange(queries.shape[0])[rows]
  # Rank at float32 resolution. BLAS sums in a shape-dependent order (a 1-row chunk takes a
  # different kernel than a 1000-row one), which moves float64 results by an ulp or so, and
  # exact ties such as duplicate embeddings would then break differently depending on the
  # chunk a query falls in. Those ~1e-16 wobbles (almost) never cross a float32 rounding
  # boundary, so ties are the same for any chunking; embeddings are float32 anyway.
  similarities = (queries[query_indices] @ references.T).astype(np.float32)
  if leave_one_out:
    # -inf ranks the query itself last, after every real candidate, and k never reaches it.
    similarities[np.arange(len(query_indices)), query_indices] = -np.inf
  return top_k_stable(similarities, k)


def _faiss_neighbour_chunks(queries, references, num_neighbours, *, leave_one_out: bool,
                            chunk_size: int) -> Iterator[tuple[slice, np.ndarray]]:
  """`neighbour_chunks` with faiss candidates, re-ranked to the NumPy path's exact order.

  Each chunk fetches k + max(16, k / 8) candidates (one more with `leave_one_out`), computes
  their similarities as the NumPy path does, and orders them by (similarity descending, index
  ascending). A query whose k-th similarity does not exceed the lowest fetched faiss score by
  more than `faiss_index.score_tolerance` might have an unfetched neighbour that belongs in its
  top k: those queries are ranked by the NumPy path instead.
  """
  index = faiss_index.InnerProductIndex(references)
  tolerance = faiss_index.score_tolerance(references.shape[1])
  num_references = references.shape[0]
  num_candidates = num_references - (1 if leave_one_out else 0)
  for start in range(0, queries.shape[0], chunk_size):
    rows = slice(start, min(start + chunk_size, queries.shape[0]))
    k = int(min(max(num_neighbours[rows].max(), 1), num_candidates))
    fetch = min(k + max(_FAISS_EXTRA, k // 8) + (1 if leave_one_out else 0), num_references)
    scores, ids = index.search(queries[rows], fetch)
    ids = ids.astype(np.int64)
    query_indices = np.arange(rows.start, rows.stop)
    exact = np.empty(ids.shape, np.float32)
    step = max(1, _GATHER_ENTRIES // max(1, fetch * references.shape[1]))
    for sub in range(0, len(ids), step):
      block = slice(sub, sub + step)
      exact[block] = np.einsum("qd,qkd->qk", queries[query_indices[block]],
                               references[ids[block]]).astype(np.float32)
    if leave_one_out:
      exact[ids == query_indices[:, None]] = -np.inf
    order = np.lexsort((ids, -exact), axis=1)
    ranked_ids = np.take_along_axis(ids, order, axis=1)[:, :k]
    kth = np.take_along_axis(exact, order[:, k - 1:k], axis=1)[:, 0]
    if fetch < num_references:
      uncertain = np.flatnonzero(~(kth > scores[:, -1] + tolerance))
      if uncertain.size:
        ranked_ids[uncertain] = numpy_top_k(queries, references, query_indices[uncertain],
                                             k, leave_one_out)
    yield rows, ranked_ids
