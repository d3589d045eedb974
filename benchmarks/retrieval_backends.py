"""Retrieval time of the NumPy and faiss neighbour backends, for galleries of growing size.

For each size N and largest recall k, random 128-d embeddings of N / 5 classes of 5 (as
Stanford Online Products' classes) are evaluated leave-one-out
(`tripletjax.app.evaluation.retrieval.retrieval_metrics`, recall at 1 and k) with each backend;
both must give the same metrics (checked). The median of --repeats runs is reported. The
neighbours each query needs (k here, as R <= 4) decide what faiss costs: it fetches them, then
their exact similarities are gathered and re-ranked.

Usage:
  python -m benchmarks.retrieval_backends --sizes 20000 --recall-k 8 50 128 1000

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tripletjax.app.evaluation import retrieval


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[20_000])
  parser.add_argument("--recall-k", type=int, nargs="+", default=[8, 50, 128, 1000])
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--per-class", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=1)
  args = parser.parse_args(argv)
  rows = []
  print("| N | classes | recall k | numpy s | faiss s | same metrics |")
  print("| ---: | ---: | ---: | ---: | ---: | --- |")
  for size in args.sizes:
    rng = np.random.default_rng(size)
    labels = np.arange(size) // args.per_class
    embeddings = (rng.normal(size=(size, args.dim))
                  + 0.4 * rng.normal(size=(labels.max() + 1, args.dim))[labels])
    embeddings = embeddings.astype(np.float32)
    for k in args.recall_k:
      times, results = {}, {}
      for backend in ("numpy", "faiss"):
        runs = []
        for _ in range(args.repeats):
          start = time.perf_counter()
          results[backend] = retrieval.retrieval_metrics(embeddings, labels, ks=(1, k),
                                                         backend=backend)
          runs.append(time.perf_counter() - start)
        times[backend] = float(np.median(runs))
      row = {"size": size, "classes": int(labels.max() + 1), "k": k, **times,
             "same": results["numpy"] == results["faiss"]}
      rows.append(row)
      print(f"| {size} | {row['classes']} | {k} | {times['numpy']:.1f} | "
            f"{times['faiss']:.1f} | {row['same']} |", flush=True)
  return rows


if __name__ == "__main__":
  main()
