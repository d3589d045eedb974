"""Tiny image datasets written in the layouts of the benchmarks (CUB, Cars196, SOP, In-Shop, a
CSV list), for end-to-end tests of `folder:` datasets.

Each class draws a blob of its own hue at a random place on a noisy background; images have
random sizes, JPEG or PNG, RGB, grey, RGBA or palette modes, so every test run decodes the
variety real folders hold. Everything is seeded: the same call writes the same files.
"""

from __future__ import annotations

import colorsys
import csv
import os

import numpy as np
from PIL import Image

MODES = ("RGB", "RGB", "L", "RGBA", "P")


def class_image(label: int, num_classes: int, rng: np.random.Generator,
                size_range=(24, 72)) -> Image.Image:
  """An image of class `label`: a blob of the class's hue on noise, of random size and mode."""
  width, height = rng.integers(*size_range, size=2)
  rows, columns = np.mgrid[0:height, 0:width]
  red, green, blue = colorsys.hsv_to_rgb(label / max(num_classes, 1), 0.9, 0.95)
  centre = rng.uniform(0.3, 0.7, size=2) * (height, width)
  radius = rng.uniform(0.2, 0.4) * min(width, height)
  blob = np.hypot(rows - centre[0], columns - centre[1]) < radius
  pixels = rng.integers(0, 60, size=(height, width, 3)).astype(np.float64)
  pixels[blob] = np.array([red, green, blue]) * 255 * rng.uniform(0.8, 1.0)
  image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
  mode = MODES[int(rng.integers(len(MODES)))]
  if mode == "P":
    return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
  if mode == "RGBA":
    image = image.convert("RGBA")
    image.putalpha(255)
  return image.convert(mode)


def _save(image: Image.Image, path: str, rng: np.random.Generator) -> str:
  """Saves as JPEG or PNG (JPEG only for modes it can hold); returns the path written."""
  jpeg = image.mode in ("RGB", "L") and rng.random() < 0.5
  path = path + (".jpg" if jpeg else ".png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, quality=90) if jpeg else image.save(path)
  return path


def write_class_folders(root, num_classes: int, per_class: int, seed: int = 0,
                        names=None) -> list[tuple[str, int]]:
  """`root/<class>/<n>.{jpg,png}` (CUB's `images/` layout: "001.Name", "002.Name", ...)."""
  rng = np.random.default_rng(seed)
  names = names or [f"{label + 1:03d}.Class_{label + 1}" for label in range(num_classes)]
  items = []
  for label, name in enumerate(names):
    for index in range(per_class):
      path = _save(class_image(label, num_classes, rng), os.path.join(root, name, f"{index:04d}"),
                   rng)
      items.append((path, label))
  return items


def write_sop(root, num_train_classes: int, num_test_classes: int, per_class: int,
              seed: int = 0) -> None:
  """Stanford Online Products: `Ebay_train.txt`, `Ebay_test.txt` and `<super>_final/` images;
  class ids 1.. on the training side, then the test side's."""
  rng = np.random.default_rng(seed)
  num_classes = num_train_classes + num_test_classes
  image_id = 0
  for split, classes in (("train", range(1, num_train_classes + 1)),
                         ("test", range(num_train_classes + 1, num_classes + 1))):
    lines = ["image_id class_id super_class_id path"]
    for class_id in classes:
      super_id = 1 + class_id % 2
      for index in range(per_class):
        image_id += 1
        relative = f"{('bicycle', 'chair')[super_id - 1]}_final/{class_id}_{index}"
        path = _save(class_image(class_id - 1, num_classes, rng), os.path.join(root, relative),
                     rng)
        lines.append(f"{image_id} {class_id} {super_id} {os.path.relpath(path, root)}")
    with open(os.path.join(root, f"Ebay_{split}.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")


def write_inshop(root, num_train_items: int, num_test_items: int, per_item: int,
                 seed: int = 0) -> None:
  """In-Shop: `Eval/list_eval_partition.txt` and `img/...`; test items split their images
  between query and gallery."""
  rng = np.random.default_rng(seed)
  num_items = num_train_items + num_test_items
  rows = []
  for item in range(num_items):
    item_id = f"id_{item + 1:08d}"
    for index in range(per_item):
      relative = f"img/WOMEN/Dresses/{item_id}/{index:02d}_{index + 1}_front"
      path = _save(class_image(item, num_items, rng), os.path.join(root, relative), rng)
      if item < num_train_items:
        status = "train"
      else:
        status = "query" if index % 2 == 0 else "gallery"
      rows.append(f"{os.path.relpath(path, root)} {item_id} {status}")
  os.makedirs(os.path.join(root, "Eval"), exist_ok=True)
  with open(os.path.join(root, "Eval", "list_eval_partition.txt"), "w") as f:
    f.write(f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")


def write_cars(root, num_classes: int, per_class: int, seed: int = 0) -> None:
  """Cars196: `cars_annos.mat` (relative_im_path, class 1.., test flag) and `car_ims/`."""
  from scipy import io as scipy_io

  rng = np.random.default_rng(seed)
  records = []
  for label in range(num_classes):
    for index in range(per_class):
      image = class_image(label, num_classes, rng).convert("RGB")
      path = os.path.join(root, "car_ims", f"{len(records) + 1:06d}.jpg")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      image.save(path, quality=90)
      records.append((os.path.relpath(path, root), label + 1, index % 2))
  annotations = np.zeros(len(records), dtype=[("relative_im_path", object), ("class", object),
                                              ("test", object)])
  for row, (path, class_id, test) in enumerate(records):
    annotations[row] = (path, class_id, test)
  class_names = np.array([f"Make {label + 1} Model 2012" for label in range(num_classes)],
                         dtype=object)
  scipy_io.savemat(os.path.join(root, "cars_annos.mat"),
                   {"annotations": annotations, "class_names": class_names})


def write_csv(root, num_classes: int, per_class: int, seed: int = 0,
              test_fraction: float = 0.5) -> str:
  """`root/images/...` and `root/list.csv` (path,label,split); returns the CSV's path."""
  rng = np.random.default_rng(seed)
  rows = []
  for label in range(num_classes):
    for index in range(per_class):
      path = _save(class_image(label, num_classes, rng),
                   os.path.join(root, "images", f"c{label}_{index}"), rng)
      split = "test" if index < per_class * test_fraction else "train"
      rows.append((os.path.relpath(path, root), f"class {label}", split))
  list_file = os.path.join(root, "list.csv")
  with open(list_file, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "label", "split"])
    writer.writerows(rows)
  return list_file
