"""Retrieval on raw pixels: the baseline a learned embedding must beat, on any dataset and split.

Flattens every test image to a vector and evaluates it as the trainer evaluates embeddings
(leave-one-out, cosine similarity; `tripletjax.app.evaluation.retrieval`), under the same class
split.

Usage:
  python -m benchmarks.raw_pixels --dataset fashion_mnist --class-split half
  python -m benchmarks.raw_pixels --dataset digits
  python -m benchmarks.raw_pixels --dataset fashion_mnist --class-split half --max-test 10000

Prints one JSON object: the metrics, the number of test images and classes, the seconds taken.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tripletjax.app.data import datasets
from tripletjax.app.evaluation import retrieval


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--class-split", default="none")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max-test", type=int, default=None,
                      help="the test subsample of a run with --config.data.max_test (same seed)")
  args = parser.parse_args(argv)
  dataset = datasets.load_dataset(args.dataset, args.data_dir, seed=args.seed,
                                  class_split=args.class_split, max_test=args.max_test)
  test = dataset.test
  pixels = np.asarray(test.images[:]).reshape(len(test), -1)
  start = time.perf_counter()
  metrics = retrieval.retrieval_metrics(pixels, test.labels)
  result = {
      "dataset": args.dataset, "class_split": args.class_split,
      "num_test_examples": len(test), "num_test_classes": len(test.classes),
      "num_unseen_test_classes": len(dataset.unseen_test_classes),
      "seconds": round(time.perf_counter() - start, 1), **metrics}
  print(json.dumps(result, indent=2))
  dataset.close()
  return result


if __name__ == "__main__":
  main()
