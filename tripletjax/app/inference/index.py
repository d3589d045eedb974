"""A searchable index of a gallery's embeddings, saved to disk, searched like the evaluation.

`build_index(embedder, gallery)` embeds a gallery (`sources.ImageSet`: the run's test set,
a folder, a list of files) and keeps, per image, its embedding, label (-1: unknown) and name
(path or "test:<i>"), with the run and checkpoint step it came from. `Index.save` / `load`
write and read one `.npz` file (no pickles).

`Index.search` ranks the gallery by cosine similarity with the evaluation's neighbour search
(`evaluation.search`): the same float64 similarities ranked at float32 resolution, ties to the lower
gallery index, exact NumPy by default and faiss where `search.resolve_search_backend` picks it
(installed, and a gallery of at least `config.eval.faiss_min_size`); both give the same
neighbours. A query that is itself a gallery image is left out of its own neighbours, as in
the evaluation's leave-one-out.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from tripletjax.app import errors
from tripletjax.app.evaluation import retrieval
from tripletjax.app.evaluation import search as search_lib
from tripletjax.app.inference import sources

INDEX_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Neighbours:
  """The k nearest gallery images of each query.

  Attributes:
    ids: int64 [Q, k] gallery rows, nearest first.
    similarities: float32 [Q, k] cosine similarities.
  """
  ids: np.ndarray
  similarities: np.ndarray


@dataclasses.dataclass(eq=False)
class Index:
  """A gallery's embeddings.

  Attributes:
    embeddings: float32 [N, E].
    labels: int64 [N], indices into `class_names`; -1 where unknown.
    class_names: the names of the labels.
    names: str [N], each image's path or "test:<i>".
    meta: the run (`Embedder.describe()`) and the gallery specification ("gallery").
  """
  embeddings: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  names: np.ndarray
  meta: dict

  def __len__(self) -> int:
    return len(self.names)

  def save(self, path: str) -> str:
    """Writes the index to `path` (.npz); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
      np.savez(f, embeddings=self.embeddings, labels=self.labels,
               class_names=np.asarray(self.class_names, dtype=str),
               names=np.asarray(self.names, dtype=str),
               meta=np.asarray(json.dumps({"format": INDEX_FORMAT, **self.meta})))
    return path

  @classmethod
  def load(cls, path: str) -> "Index":
    """Reads an index `save` wrote. Raises `errors.DataError` for anything else."""
    try:
      with np.load(path, allow_pickle=False) as content:
        meta = json.loads(str(content["meta"]))
        index = cls(content["embeddings"].astype(np.float32), content["labels"].astype(np.int64),
                    tuple(str(name) for name in content["class_names"]),
                    content["names"].astype(str), meta)
    except (OSError, ValueError, KeyError) as error:
      raise errors.DataError(f"{path}: not an index this version can read ({error})",
                             hint="build it again with --rebuild") from error
    if meta.get("format") != INDEX_FORMAT:
      raise errors.DataError(f"{path}: index format {meta.get('format')}, expected "
                             f"{INDEX_FORMAT}", hint="build it again with --rebuild")
    return index

  def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None, *,
             backend: str = "auto",
             faiss_min_size: int = search_lib.FAISS_MIN_REFERENCES) -> Neighbours:
    """The `k` most similar gallery images of each query.

    Args:
      queries: [Q, E] embeddings.
      k: neighbours per query (at most the gallery's size, less the query itself).
      exclude: int [Q], the gallery row of each query that is a gallery image (left out of
        its own neighbours), -1 for the others; default none.
      backend, faiss_min_size: the evaluation's `config.eval.backend` and `faiss_min_size`.
    """
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
      raise errors.DataError(f"queries of shape {queries.shape}: the index holds embeddings "
                             f"of {self.embeddings.shape[1]} dimensions")
    exclude = (np.full(len(queries), -1, np.int64) if exclude is None
               else np.asarray(exclude, np.int64))
    excluding = bool(np.any(exclude >= 0))
    k = min(int(k), len(self) - int(excluding))
    if k < 1:
      raise errors.DataError(f"the gallery has {len(self)} image(s): nothing to search")
    fetch = k + int(excluding)
    unit_queries = search_lib.l2_normalize(queries)
    unit_gallery = search_lib.l2_normalize(self.embeddings)
    backend = search_lib.resolve_search_backend(backend, len(self), faiss_min_size,
                                        num_neighbours=fetch)
    ids = np.empty((len(queries), fetch), np.int64)
    for rows, neighbours in search_lib.neighbour_chunks(
        unit_queries, unit_gallery, np.full(len(queries), fetch), leave_one_out=False,
        chunk_size=retrieval.DEFAULT_CHUNK_SIZE, backend=backend):
      ids[rows] = neighbours
    if excluding:
      # Leaving a query's own row out of a stable ranking keeps the others' order: the
      # evaluation's leave-one-out ranking.
      ids = np.stack([row[row != own][:k] for row, own in zip(ids, exclude)])
    similarities = np.einsum("qd,qkd->qk", unit_queries, unit_gallery[ids]).astype(np.float32)
    return Neighbours(ids, similarities)


def build_index(embedder, gallery: sources.ImageSet, gallery_spec: str,
                progress: bool = False) -> Index:
  """Embeds `gallery` with `embedder` (streaming image files) into an `Index`."""
  embeddings = embedder.embed(gallery.images, progress=progress)
  return Index(embeddings, gallery.labels.astype(np.int64), tuple(gallery.class_names),
               np.asarray(gallery.names, dtype=str),
               {**embedder.describe(), "gallery": gallery_spec})


def is_current(index: Index, embedder, gallery: sources.ImageSet, gallery_spec: str) -> bool:
  """Whether a saved `index` is that of this run's checkpoint and of these gallery images."""
  meta = index.meta
  return (meta.get("workdir") == embedder.describe()["workdir"]
          and meta.get("step") == embedder.step and meta.get("gallery") == gallery_spec
          and len(index) == len(gallery) and np.array_equal(index.names, gallery.names))


def precision_at_1(gallery_labels: np.ndarray, query_labels: np.ndarray,
                   neighbours: Neighbours, exclude: np.ndarray) -> tuple[float, int]:
  """The fraction of queries whose nearest image has their label, and the number of queries
  it is over: those with a label and at least one other gallery image of it (the
  evaluation leaves "lone" queries out)."""
  counts = np.bincount(gallery_labels[gallery_labels >= 0], minlength=1)
  known = query_labels >= 0
  others = np.zeros(len(query_labels), np.int64)
  others[known] = counts[np.minimum(query_labels[known], len(counts) - 1)] * (
      query_labels[known] < len(counts))
  others -= (exclude >= 0) & known  # The query itself is not one of its candidates.
  scored = known & (others > 0)
  if not scored.any():
    return float("nan"), 0
  hits = gallery_labels[neighbours.ids[scored, 0]] == query_labels[scored]
  return float(np.mean(hits)), int(scored.sum())
