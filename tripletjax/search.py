"""Searches a gallery with a trained run's embedder: `python -m tripletjax.search`.

  python -m tripletjax.search --workdir runs/f --query test:0 test:1 test:2 --k 8
  python -m tripletjax.search --workdir runs/f --gallery folder:/photos --query a.jpg b.png
  python -m tripletjax.search --workdir runs/f --query test:all --k 1    # precision@1
  python -m tripletjax.search --workdir runs/p --pair anchor.jpg candidate.jpg

The gallery (default: the run's test set; or image files, folders, `folder:<path>` datasets)
is embedded once into an index saved under `<workdir>/index/` and reused while the run's
checkpoint and the gallery's files stay the same. Queries are image files or the run's test
images (`test:<i>`, `test:all`); a query that is a gallery image is left out of its own
neighbours, as in the evaluation's leave-one-out. Prints each query's nearest images (rank,
cosine similarity, class, path or test index), writes them all to a TSV and draws the first
queries beside their neighbours (green / red frames where the labels say same / another
class). `--pair A B` prints the cosine similarity of two images (the Siamese example's
anchor-positive vs anchor-negative check).

A user error (not a run, an unreadable checkpoint, a missing image, ...) is one `error:` line
and exit status 2.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from tripletjax.app import errors
from tripletjax.app.inference import commands
from tripletjax.app.inference import workdirs


def _parser():
  parser = commands.parser("tripletjax.search", __doc__.splitlines()[0])
  parser.add_argument("--query", nargs="+", default=[],
                      help="Query images: files, folders, folder:<path>, test:<i>, test:all.")
  parser.add_argument("--gallery", nargs="+", default=None,
                      help="Gallery images: files, folders, folder:<path> (default: the run's "
                           "test set).")
  parser.add_argument("--k", type=int, default=8, help="Neighbours per query.")
  parser.add_argument("--index", default=None,
                      help="The index file (default: <workdir>/index/<gallery>.npz).")
  parser.add_argument("--rebuild", action="store_true", help="Embed the gallery again.")
  parser.add_argument("--out", default=None,
                      help="The picture (default: <workdir>/search/neighbours.png); the TSV "
                           "of every neighbour is written beside it.")
  parser.add_argument("--backend", default=None, choices=("auto", "numpy", "faiss"),
                      help="Neighbour search (default: the run's config.eval.backend).")
  parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                      help="Print the cosine similarity of images A and B (repeatable).")
  return parser


def run(argv: Sequence[str] | None = None) -> None:
  args = commands.parse(_parser(), argv)
  workdirs.check_is_run(args.workdir)  # Before JAX and flax load: seconds.
  from tripletjax.app.inference import search  # pylint: disable=import-outside-toplevel
  search.check_k(args.k)
  if not args.query and not args.pair:
    raise errors.ConfigError("nothing to do: give --query images (or --pair A B)")
  commands.set_cpu_devices(args.cpu_devices)
  from tripletjax.app.inference import embedder as embedder_lib
  from tripletjax.app.inference import sources  # pylint: disable=import-outside-toplevel
  embedder = embedder_lib.load_embedder(args.workdir, args.step, args.batch_size)
  for first, second in args.pair:
    _print_pair(embedder, sources, first, second)
  if not args.query:
    return
  uses_test = args.gallery is None or any(q.startswith(sources.TEST_PREFIX) for q in args.query)
  test = sources.test_set(embedder.config) if uses_test else None
  try:
    gallery, gallery_spec = search.gallery_of(embedder, args.gallery, test)
    index_path = args.index or search.default_index_path(args.workdir, gallery_spec)
    index = search.load_or_build_index(embedder, gallery, gallery_spec, index_path,
                                       args.rebuild)
    queries = search.embed_queries(embedder, args.query, test, args.gallery is None, gallery)
    config_eval = embedder.config.eval
    neighbours = index.search(queries.embeddings, args.k, queries.exclude,
                              backend=args.backend or config_eval.backend,
                              faiss_min_size=config_eval.faiss_min_size)
    out = args.out or os.path.join(args.workdir, "search", "neighbours.png")
    search.print_neighbours(queries, index, neighbours, os.path.splitext(out)[0] + ".tsv")
    from tripletjax.app.inference import index as index_lib
    value, count = index_lib.precision_at_1(index.labels, queries.labels, neighbours,
                                            queries.exclude)
    if count:
      print(search.eval_json_line(args.workdir, embedder_lib.task_kind(embedder.config),
                                  value, count, on_test_set=args.gallery is None))
    print(f"Picture: {search.draw(queries, gallery, index, neighbours, out)}")
  finally:
    if test is not None:
      test.close()


def _print_pair(embedder, sources, first: str, second: str) -> None:
  """The cosine similarity of two images (files or test:<i>)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  embeddings = []
  test = None
  for spec in (first, second):
    if spec.startswith(sources.TEST_PREFIX):
      test = test or sources.test_set(embedder.config)
      image_set = sources.subset(test.queries, sources.test_indices([spec], len(test.queries)))
    else:
      image_set = sources.read_images(embedder, [spec])
    if len(image_set) != 1:
      raise errors.DataError(f"--pair {spec}: one image, not {len(image_set)}")
    embeddings.append(embedder.embed(image_set.images)[0].astype(np.float64))
  if test is not None:
    test.close()
  print(f"similarity {float(embeddings[0] @ embeddings[1]):+.4f}  {first}  {second}")


def main(argv: Sequence[str] | None = None) -> None:
  commands.main_guard(run, argv)


if __name__ == "__main__":
  main(sys.argv[1:])
