"""Exact inner-product search with faiss (the optional `faiss` extra), for large galleries.

`retrieval` uses faiss only to find candidate neighbours fast: `IndexFlatIP` is exact (no
quantisation), but it sums in float32 in its own order, so near-ties can come out in another
order than the NumPy ranking. `retrieval` therefore fetches a few more candidates than it needs,
re-ranks them with the NumPy path's similarities and tie rule, and falls back to NumPy for any
query whose k-th neighbour is not separated from the unfetched ones by more than
`score_tolerance`: the results are the NumPy path's, exactly.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from tripletjax.app import errors

INSTALL_HINT = "pip install 'tripletjax[faiss]' (the faiss-cpu package)"


def available() -> bool:
  """Whether faiss can be imported here."""
  return importlib.util.find_spec("faiss") is not None


def _faiss():
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise errors.MissingDependencyError(
        f"the faiss retrieval backend needs faiss, which cannot be imported ({error})",
        INSTALL_HINT) from error
  return faiss


def score_tolerance(dim: int) -> float:
  """A bound on |faiss score - exact cosine| for unit vectors of `dim` entries.

  Rounding both vectors to float32 and summing `dim` float32 products errs by at most about
  (dim + 2) * 2^-24 times the sum of |q_i r_i| <= 1 (Cauchy-Schwarz); twice that, plus the
  float32 rounding of the exact value, leaves room for any summation order.
  """
  return 2.0 * (dim + 2) * 2.0**-24 + 2.0**-23


class InnerProductIndex:
  """An exact inner-product index (`faiss.IndexFlatIP`) over [N, D] reference rows."""

  def __init__(self, references: np.ndarray):
    faiss = _faiss()
    references = np.ascontiguousarray(references, dtype=np.float32)
    self.size, self.dim = references.shape
    self._index = faiss.IndexFlatIP(self.dim)
    self._index.add(references)

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest inner products of each query row: (scores [Q, k] float32 descending,
    ids [Q, k] int64)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    scores, ids = self._index.search(queries, int(k))
    return scores, ids
