"""The examples' data: Fashion-MNIST (Debian's dataset-fashion-mnist files) or MNIST IDX files,
read offline by tripletjax's loader; a user error is one `error:` line and exit status 2."""

from __future__ import annotations

import argparse
import sys

from tripletjax.app import errors
from tripletjax.app.data import datasets


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--fashion-mnist-dir", default=None,
                      help="folder of Fashion-MNIST's four IDX .gz files (default: "
                      f"{datasets.FASHION_MNIST_DEBIAN_DIR})")
  parser.add_argument("--mnist-dir", default=None,
                      help="folder of MNIST's four IDX files: train on MNIST instead")
  parser.add_argument("--max-train", type=int, default=None,
                      help="train on a class-balanced subset of this many images")
  parser.add_argument("--max-test", type=int, default=None,
                      help="embed a class-balanced subset of this many test images")


def load(args: argparse.Namespace) -> datasets.Dataset:
  """Train and test images, float32 [N, 28, 28, 1] in [0, 1], and int32 labels [N]."""
  name, data_dir = (("mnist", args.mnist_dir) if args.mnist_dir
                    else ("fashion_mnist", args.fashion_mnist_dir))
  try:
    return datasets.load_dataset(name, data_dir, max_train=args.max_train,
                                 max_test=args.max_test)
  except errors.UserError as error:
    fail(str(error))


def fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)
