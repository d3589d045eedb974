"""Streaming a folder of images larger than memory would hold as float32: throughput and peak
memory of the input pipeline.

Writes --files images (16 x 16 PNGs by default; --source-size 500 375 --format jpg for
CUB-like JPEGs; one folder per class) unless the folder exists, then
runs one training epoch of batches (random resized crops and flips to --size, decoded by the
worker threads) over the training classes and one evaluation pass (resize + centre crop) over
the test classes (class split "half"), exactly as the trainer draws them
(`tripletjax.app.data.pipeline`). Reports images per second for each pass, the peak resident
memory of the process (`ru_maxrss`), and the memory the decoded dataset would take as float32.

Usage:
  python -m benchmarks.folder_streaming --folder /tmp/stream --files 45000 --size 224
  python -m benchmarks.folder_streaming --folder /tmp/cub-like --files 3000 --size 224 \
      --source-size 500 375 --format jpg
  python -m benchmarks.folder_streaming --folder /path/to/CUB_200_2011/images --size 224

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
from PIL import Image

from tripletjax.app.config import defaults
from tripletjax.app.data import datasets
from tripletjax.app.data import pipeline
from tripletjax.app.data import samplers

NUM_CLASSES = 100


def write_folder(folder: str, count: int, size=(16, 16), suffix: str = "png") -> None:
  """`count` images of `size` (width, height): noise at 16 x 16, else smooth gradients with
  mild noise (photograph-like for a JPEG encoder)."""
  rng = np.random.default_rng(0)
  for label in range(NUM_CLASSES):
    os.makedirs(os.path.join(folder, f"{label:03d}"), exist_ok=True)
  width, height = size
  rows, columns = np.mgrid[0:height, 0:width]
  for index in range(count):
    if width * height <= 256:
      pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    else:
      phase = rng.uniform(0, 2 * np.pi, size=3)
      waves = [127 + 100 * np.sin(columns / (20 + 7 * c) + rows / 31 + phase[c]) for c in range(3)]
      noisy = np.stack(waves, -1) + rng.normal(0, 6, size=(height, width, 3))
      pixels = noisy.clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f"{index % NUM_CLASSES:03d}",
                                              f"{index:06d}.{suffix}"))


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--folder", required=True)
  parser.add_argument("--files", type=int, default=45_000)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--workers", type=int, default=0)
  parser.add_argument("--source-size", type=int, nargs=2, default=(16, 16),
                      metavar=("WIDTH", "HEIGHT"))
  parser.add_argument("--format", choices=("png", "jpg"), default="png")
  args = parser.parse_args(argv)
  if not os.path.exists(args.folder):
    start = time.perf_counter()
    write_folder(args.folder, args.files, tuple(args.source_size), args.format)
    print(f"wrote {args.files} files in {time.perf_counter() - start:.0f} s", flush=True)
  config = defaults.get_config().data
  config.image_size, config.eval_resize, config.augment = args.size, args.size, "crop_flip"
  dataset = datasets.load_dataset(
      f"folder:{args.folder}", class_split="half",
      image_options=datasets.ImageOptions(size=args.size, eval_resize=args.size,
                                          workers=args.workers))
  inputs = pipeline.InputPipeline(config, seed=0)
  sampler = samplers.make_sampler("shuffled", dataset.train.labels,
                                  batch_size=args.batch_size, seed=0)
  rss_before = peak_rss_bytes()
  result = {"files": len(dataset.train) + len(dataset.test), "size": args.size,
            "batch_size": args.batch_size,
            "workers": dataset.train.images.decoder.workers}
  for name, batches in (
      ("train", (b for b, _ in inputs.train_batches(dataset.train, sampler, epoch=0))),
      ("eval", inputs.eval_chunks(dataset.test.images, args.batch_size))):
    start, count, checksum = time.perf_counter(), 0, 0.0
    for batch in batches:
      count += len(batch)
      checksum += float(batch[:, 0, 0, 0].sum())  # Touch every batch, as a consumer would.
    seconds = time.perf_counter() - start
    result[f"{name}_images"] = count
    result[f"{name}_images_per_second"] = round(count / seconds, 1)
  dataset.close()
  bytes_per_image = args.size * args.size * 3 * 4
  result.update(
      float32_dataset_gib=round(result["files"] * bytes_per_image / 2**30, 2),
      batch_mib=round(args.batch_size * bytes_per_image / 2**20, 1),
      peak_rss_before_gib=round(rss_before / 2**30, 3),
      peak_rss_gib=round(peak_rss_bytes() / 2**30, 3))
  print(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main()
