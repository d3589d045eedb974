"""Embeddings written to files: `.npz` (full precision, with names, labels and the run) or
`.tsv` (the TensorBoard Embedding Projector's vectors, and a metadata TSV beside them)."""

from __future__ import annotations

import json
import os

import numpy as np

from tripletjax.app import errors
from tripletjax.app.inference import sources

FORMATS = (".npz", ".tsv")


def check_path(path: str) -> str:
  """`path` if its extension is one of `FORMATS`; a `errors.ConfigError` otherwise."""
  if os.path.splitext(path)[1].lower() not in FORMATS:
    raise errors.ConfigError(f"--out={path}: write .npz (embeddings, names, labels, the run) "
                             "or .tsv (the projector's vectors and metadata)")
  return path


def projector_metadata_path(path: str) -> str:
  """The projector's metadata TSV beside a vectors TSV: `x.tsv` -> `x.meta.tsv`."""
  return os.path.splitext(path)[0] + ".meta.tsv"


def write_embeddings(path: str, embeddings: np.ndarray, images: sources.ImageSet,
                     run: dict) -> list[str]:
  """Writes `embeddings` [N, E] of `images` to `path`; returns the files written.

  .npz: `embeddings` float32 [N, E], `names` [N] (paths), `labels` int64 [N] (-1: unknown),
  `class_names`, `run` (JSON: workdir, step, model, ...). .tsv: one row of E tab-separated
  values per image (7 significant digits, as the run's projector files), and `x.meta.tsv`
  with a header `name\\tclass`.
  """
  check_path(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.lower().endswith(".npz"):
    with open(path, "wb") as f:
      np.savez(f, embeddings=embeddings, names=np.asarray(images.names, dtype=str),
               labels=images.labels.astype(np.int64),
               class_names=np.asarray(images.class_names, dtype=str),
               run=np.asarray(json.dumps(run)))
    return [path]
  np.savetxt(path, embeddings.astype(np.float64), fmt="%.7g", delimiter="\t")
  meta = projector_metadata_path(path)
  with open(meta, "w", encoding="utf-8") as f:
    f.write("name\tclass\n")
    f.writelines(f"{_cell(name)}\t{_cell(images.class_of(i))}\n"
                 for i, name in enumerate(images.names))
  return [path, meta]


def _cell(value) -> str:
  return " ".join(str(value).split()) or "-"
