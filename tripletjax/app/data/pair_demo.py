"""An offline pair folder to run the Siamese workflow on: two photos of each object.

`build_pair_demo(folder, source)` writes `folder/left/` and `folder/right/` from a labelled
dataset available offline (Fashion-MNIST from Debian's package, or scikit-learn's digits):
each pair is one item drawn twice, as two "photos" that differ in scale, rotation, position,
background and brightness, and the object keeps its colour (one of a small palette, so colour
alone does not identify it). Left images are JPEG and right images PNG, of several sizes and
aspect ratios, so the workflow reads real files through the real decoding and resizing path.

The folder is written once: a `demo.json` beside `left/` and `right/` records what was built,
and a folder holding the same record is reused as it is.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from PIL import Image

from tripletjax.app import errors
from tripletjax.app.data import datasets

DEMO_RECORD = "demo.json"
# Objects' colours: a palette of a few hues, so that colour narrows a search but does not
# decide it.
_PALETTE = np.array([[230, 70, 60], [60, 130, 230], [70, 190, 90], [235, 190, 50],
                     [170, 80, 200], [240, 240, 240]], np.float32)
# The sides of the written images, in pixels (height and width drawn separately).
_SIZES = (40, 48, 56, 64, 72)
_VERSION = 1  # Bump when the rendering changes: folders of other versions are rebuilt.


def _source_images(source: str, seed: int) -> np.ndarray:
  """float32 [N, H, W] grey images of `source` ("fashion_mnist" or "digits"), in [0, 1]."""
  loaders = {
      "fashion_mnist": lambda: datasets.load_dataset("fashion_mnist", seed=seed),
      "digits": lambda: datasets.load_dataset("digits", seed=seed),
  }
  if source not in loaders:
    raise errors.ConfigError(f"unknown demo source {source!r}; expected one of "
                             f"{', '.join(sorted(loaders))}")
  dataset = loaders[source]()
  images = np.concatenate([dataset.train.images, dataset.test.images])[..., 0]
  return images


def _photo(item: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> Image.Image:
  """One "photo" of a grey item [h, w] in [0, 1]: painted in `colour` over a random
  background, scaled, rotated and placed at random in an image of random size."""
  height, width = (int(rng.choice(_SIZES)) for _ in range(2))
  side = int(min(height, width) * rng.uniform(0.7, 1.0))
  mask = Image.fromarray(np.uint8(np.clip(item, 0, 1) * 255), "L")
  mask = mask.resize((side, side), Image.Resampling.BILINEAR)
  mask = mask.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR)
  canvas = Image.new("L", (width, height), 0)
  canvas.paste(mask, (int(rng.integers(0, width - side + 1)),
                      int(rng.integers(0, height - side + 1))))
  alpha = np.asarray(canvas, np.float32)[..., None] / 255.0
  background = rng.uniform(0, 90, size=3).astype(np.float32)
  brightness = rng.uniform(0.75, 1.15)
  pixels = (alpha * colour + (1 - alpha) * background) * brightness
  pixels += rng.normal(0, 4, size=pixels.shape)
  return Image.fromarray(np.uint8(np.clip(pixels, 0, 255)), "RGB")


def build_pair_demo(folder: str, source: str = "fashion_mnist", num_pairs: int = 3000,
                    seed: int = 0) -> str:
  """Writes (or reuses) a pair folder of `num_pairs` pairs drawn from `source`.

  Args:
    folder: where `left/`, `right/` and `demo.json` go.
    source: "fashion_mnist" (needs `apt-get install dataset-fashion-mnist`) or "digits".
    num_pairs: pairs to write (at most the source's number of images).
    seed: chooses the items and renders the photos.

  Returns:
    `folder`.
  """
  record = {"version": _VERSION, "source": source, "num_pairs": int(num_pairs), "seed": seed}
  record_path = os.path.join(folder, DEMO_RECORD)
  try:
    with open(record_path) as f:
      if json.load(f) == record:
        return folder
  except (OSError, ValueError):
    pass
  if os.path.exists(folder) and os.listdir(folder) and not os.path.exists(record_path):
    raise errors.DataError(f"{folder} exists and is not a pair demo folder (no {DEMO_RECORD}); "
                           "the demo is written only into a new folder or over an older demo",
                           hint="choose another config.data.data_dir")
  items = _source_images(source, seed)
  if not 4 <= num_pairs <= len(items):
    raise errors.ConfigError(f"the demo from {source!r} has between 4 and {len(items)} pairs, "
                             f"not {num_pairs}")
  rng = np.random.default_rng([seed, num_pairs])
  chosen = rng.choice(len(items), size=num_pairs, replace=False)
  colours = _PALETTE[rng.integers(0, len(_PALETTE), size=num_pairs)]
  # Written into a temporary folder, then renamed: an interrupted build leaves no half folder.
  partial = folder.rstrip(os.sep) + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  for side in ("left", "right"):
    os.makedirs(os.path.join(partial, side))
  for pair, (index, colour) in enumerate(zip(chosen, colours)):
    pair_rng = np.random.default_rng([seed, int(index)])
    name = f"{pair:05d}"
    _photo(items[index], colour, pair_rng).save(
        os.path.join(partial, "left", name + ".jpg"), quality=90)
    _photo(items[index], colour, pair_rng).save(os.path.join(partial, "right", name + ".png"))
  with open(os.path.join(partial, DEMO_RECORD), "w") as f:
    json.dump(record, f)
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
  os.replace(partial, folder)
  return folder
