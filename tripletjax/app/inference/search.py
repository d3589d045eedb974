"""Searching a gallery with queries: what `python -m tripletjax.search` does.

The gallery (the run's test set by default) is embedded once into an index saved on disk
(`<workdir>/index/<gallery>.npz`; reused while the run's checkpoint and the gallery's files
are the same), the queries are embedded, and their nearest gallery images are printed,
written as a TSV and drawn (`picture`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Sequence

import numpy as np

from tripletjax.app import errors
from tripletjax.app.inference import index as index_lib
from tripletjax.app.inference import picture
from tripletjax.app.inference import sources

# At most this many queries have their neighbours printed (the TSV holds all of them).
MAX_PRINTED_QUERIES = 50


@dataclasses.dataclass(eq=False)
class Queries:
  """Embedded queries: embeddings [Q, E], names, class names ("" unknown), labels in the
  gallery's label space (-1: unknown), the gallery row each one is (-1: none), and where to
  find their images for the picture."""
  embeddings: np.ndarray
  names: np.ndarray
  class_names: list[str]
  labels: np.ndarray
  exclude: np.ndarray
  images: list[tuple[sources.ImageSet, int]]


def gallery_of(embedder, specs: Sequence[str] | None, test: sources.TestSet | None):
  """(gallery images, its specification): `specs`' images, or the run's test set."""
  if specs:
    return sources.read_images(embedder, specs), " ".join(
        os.path.abspath(s) if os.path.exists(s) else s for s in specs)
  return test.gallery, "test"


def default_index_path(workdir: str, gallery_spec: str) -> str:
  if gallery_spec == "test":
    return os.path.join(workdir, "index", "test.npz")
  digest = hashlib.sha1(gallery_spec.encode()).hexdigest()[:10]
  return os.path.join(workdir, "index", f"gallery-{digest}.npz")


def load_or_build_index(embedder, gallery: sources.ImageSet, gallery_spec: str, path: str,
                        rebuild: bool = False) -> index_lib.Index:
  """The saved index at `path` when it is this checkpoint's index of `gallery`; otherwise
  the gallery embedded (with a progress bar) and saved there."""
  if os.path.exists(path) and not rebuild:
    saved = index_lib.Index.load(path)
    if index_lib.is_current(saved, embedder, gallery, gallery_spec):
      print(f"Index {path}: {len(saved)} images (step {saved.meta['step']}).")
      return saved
  print(f"Embedding the gallery ({len(gallery)} images) into {path}.", flush=True)
  built = index_lib.build_index(embedder, gallery, gallery_spec, progress=True)
  built.save(path)
  return built


def embed_queries(embedder, specs: Sequence[str], test: sources.TestSet | None,
                  gallery_is_test: bool, gallery: sources.ImageSet) -> Queries:
  """The queries of `specs`: test:<i> / test:all (the run's test images) and image files."""
  number = {name: label for label, name in enumerate(gallery.class_names)}

  def gallery_labels(image_set):
    return np.asarray([number.get(image_set.class_of(i), -1) if image_set.labels[i] >= 0
                       else -1 for i in range(len(image_set))], np.int64)
  test_specs = [s for s in specs if s.startswith(sources.TEST_PREFIX)]
  file_specs = [s for s in specs if not s.startswith(sources.TEST_PREFIX)]
  parts = []
  if test_specs:
    indices = sources.test_indices(test_specs, len(test.queries))
    chosen = sources.subset(test.queries, indices)
    own_rows = (indices if gallery_is_test and test.queries_in_gallery
                else np.full(len(indices), -1))
    # The test queries and the test gallery share their labels (pairs: the pair's number).
    parts.append((chosen, own_rows, chosen.labels if gallery_is_test
                  else gallery_labels(chosen)))
  if file_specs:
    files = sources.read_images(embedder, file_specs)
    row_of = {str(name): row for row, name in enumerate(gallery.names)}
    own_rows = np.asarray([row_of.get(str(n), -1) for n in files.names], np.int64)
    in_gallery = gallery_labels(files)
    # A query file that is a gallery image has the gallery's label for it.
    known = (own_rows >= 0) & (in_gallery < 0)
    in_gallery[known] = gallery.labels[own_rows[known]]
    parts.append((files, own_rows, in_gallery))
  embeddings, names, classes, labels, exclude, images = [], [], [], [], [], []
  for image_set, own_rows, in_gallery in parts:
    embeddings.append(embedder.embed(image_set.images))
    names += [str(n) for n in image_set.names]
    classes += [gallery.class_names[label] if label >= 0 else image_set.class_of(i)
                for i, label in enumerate(in_gallery)]
    labels.append(np.asarray(in_gallery, np.int64))
    exclude.append(np.asarray(own_rows, np.int64))
    images += [(image_set, i) for i in range(len(image_set))]
  return Queries(np.concatenate(embeddings), np.asarray(names), classes,
                 np.concatenate(labels), np.concatenate(exclude), images)


def print_neighbours(queries: Queries, index: index_lib.Index,
                     neighbours: index_lib.Neighbours, out_tsv: str) -> None:
  """Prints the neighbours of the first queries; writes those of every query to `out_tsv`."""
  rows = []
  for q, name in enumerate(queries.names):
    for rank, (gallery_row, similarity) in enumerate(zip(neighbours.ids[q],
                                                         neighbours.similarities[q])):
      label = int(index.labels[gallery_row])
      rows.append((name, queries.class_names[q], rank + 1, str(index.names[gallery_row]),
                   index.class_names[label] if label >= 0 else "", float(similarity)))
  k = neighbours.ids.shape[1]
  for q in range(min(len(queries.names), MAX_PRINTED_QUERIES)):
    title = queries.names[q] + (f" (class {queries.class_names[q]})"
                                if queries.class_names[q] else "")
    print(f"query {q + 1}: {title}")
    for name, _, rank, neighbour, class_name, similarity in rows[q * k:(q + 1) * k]:
      print(f"  {rank:>3}  {similarity:+.4f}  {class_name or '-':<16}  {neighbour}")
  if len(queries.names) > MAX_PRINTED_QUERIES:
    print(f"... {len(queries.names) - MAX_PRINTED_QUERIES} more queries in {out_tsv}")
  os.makedirs(os.path.dirname(os.path.abspath(out_tsv)), exist_ok=True)
  with open(out_tsv, "w", encoding="utf-8") as f:
    f.write("query\tquery_class\trank\tneighbour\tneighbour_class\tsimilarity\n")
    f.writelines("\t".join(map(str, row[:5])) + f"\t{row[5]:.6f}\n" for row in rows)


def draw(queries: Queries, gallery: sources.ImageSet, index: index_lib.Index,
         neighbours: index_lib.Neighbours, out_path: str) -> str:
  """The picture of the first `picture.MAX_ROWS` queries."""
  shown = range(min(len(queries.names), picture.MAX_ROWS))
  query_images = [picture.thumbnails(queries.images[q][0].images, [queries.images[q][1]])[0]
                  for q in shown]
  neighbour_images, titles = [], []
  for q in shown:
    neighbour_images.append(picture.thumbnails(gallery.images, neighbours.ids[q]))
    titles.append([picture.short_title(index.names[g], index.class_names[index.labels[g]]
                                       if index.labels[g] >= 0 else "")
                   for g in neighbours.ids[q]])
  labels = queries.labels
  correct = None
  if (labels[list(shown)] >= 0).any() and (index.labels >= 0).any():
    verdict = index.labels[neighbours.ids[list(shown)]] == labels[list(shown), None]
    unknown = (labels[list(shown), None] < 0) | (index.labels[neighbours.ids[list(shown)]] < 0)
    correct = np.where(unknown, None, verdict).astype(object)
  query_titles = [picture.short_title(queries.names[q], queries.class_names[q]) for q in shown]
  return picture.plot_neighbours(query_images, query_titles, neighbour_images, titles,
                                 neighbours.similarities[list(shown)], correct, out_path)


def recorded_value(workdir: str, task: str) -> float | None:
  """The run's own precision@1 (pairs: recall@1) in its eval.json; None if it has none."""
  try:
    with open(os.path.join(workdir, "eval.json")) as f:
      final = json.load(f)
    return float(final["recall_at_k"]["1"] if task == "pairs" else final["precision_at_1"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def eval_json_line(workdir: str, task: str, value: float, count: int,
                   on_test_set: bool) -> str:
  """The implied precision@1 (pairs: recall@1), beside the run's own eval.json value when the
  gallery is the run's test set."""
  name = "recall@1" if task == "pairs" else "precision@1"
  line = f"{name} of these queries: {value:.6f} over {count} queries with a labelled match"
  recorded = recorded_value(workdir, task) if on_test_set else None
  return line + (f" (the run's eval.json: {recorded:.6f})" if recorded is not None else "")


def check_k(k: int) -> int:
  if k < 1:
    raise errors.ConfigError(f"--k={k}: must be >= 1")
  return k
