"""The image files and labels of a `folder:<path>` dataset, by split, from any of its layouts.

`read_folder(path)` finds the layout (the first of `LAYOUTS` that matches) and returns a
`FolderIndex`: the (file, class name) items of each split. Layouts:

  * "sop": Stanford Online Products as distributed: `Ebay_train.txt` and `Ebay_test.txt`
    (columns `image_id class_id super_class_id path`) in `path`; splits train and test
    (11,318 and 11,316 classes).
  * "cars": Cars196 as distributed: `cars_annos.mat` (each image's `relative_im_path`, `class`
    1..196 and `test` flag) in `path`, images relative to `path` (`car_ims/...`); splits train
    and test (the official image split; the metric-learning protocol pools them and splits by
    class, `config.data.class_split='half'`). Classes are named "<id> <make model year>".
  * "inshop": In-Shop Clothes Retrieval as distributed: `list_eval_partition.txt` (a count line,
    a header line, then `image_name item_id evaluation_status`) in `path` or `path/Eval`;
    images relative to `path`; splits train, query and gallery.
  * "csv": `path` is a CSV file with a header holding `path` and `label` columns, and
    optionally `split` (train, test, query or gallery; without it every item is in "all").
    Paths are relative to the CSV's folder; labels are class names (any text).
  * "split_folders": `path/train/<class>/...` and `path/test/<class>/...` (or `path/query` and
    `path/gallery` instead of test): a fixed split, one sub-folder per class in each.
  * "class_folders": `path/<class>/...`: one sub-folder per class, every image in "all"
    (a class split, `config.data.class_split`, then makes train and test).

In class folders, image files (`images.IMAGE_EXTENSIONS`) are found at any depth, sorted by path;
other files are ignored. Class names are sorted (numerically when they are all integers) and
numbered from 0: the labels of the dataset.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Callable

import numpy as np

from tripletjax.app import errors
from tripletjax.app.data import images

SPLITS = ("train", "test", "query", "gallery", "all")
SOP_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}
CARS_ANNOTATIONS = "cars_annos.mat"
INSHOP_PARTITION = "list_eval_partition.txt"
INSHOP_STATUSES = ("train", "query", "gallery")
CSV_COLUMNS = ("path", "label")


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """The items of an image folder dataset.

  Attributes:
    layout: the name of its layout in `LAYOUTS`.
    splits: {split name: [(file path, class name), ...]}, split names from `SPLITS`.
    class_names: every class name, sorted; a class's label is its index here.
  """
  layout: str
  splits: dict[str, list[tuple[str, str]]]
  class_names: tuple[str, ...]

  def labels(self, split: str) -> list[int]:
    number = {name: label for label, name in enumerate(self.class_names)}
    return [number[name] for _, name in self.splits[split]]

  def paths(self, split: str) -> list[str]:
    return [path for path, _ in self.splits[split]]


def _class_order(name: str):
  """Sort key: integers numerically, before any other names, which sort as text."""
  stripped = name.strip()
  if stripped.lstrip("-").isdigit():
    return (0, int(stripped), "")
  return (1, 0, name)


def _index(layout: str, splits: dict[str, list[tuple[str, str]]], where: str) -> FolderIndex:
  splits = {name: items for name, items in splits.items() if items}
  if not splits:
    raise errors.DataError(f"{where}: no image found (image files end in "
                           f"{', '.join(sorted(images.IMAGE_EXTENSIONS))}).")
  names = {name for items in splits.values() for _, name in items}
  return FolderIndex(layout, splits, tuple(sorted(names, key=_class_order)))


def _subfolders(path: str) -> list[str]:
  return sorted(name for name in os.listdir(path)
                if not name.startswith(".") and os.path.isdir(os.path.join(path, name)))


def _image_files_below(folder: str) -> list[str]:
  """The image files in `folder` and its sub-folders, sorted by path."""
  found = []
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found += [os.path.join(root, name) for name in files
              if os.path.splitext(name)[1].lower() in images.IMAGE_EXTENSIONS
              and not name.startswith(".")]
  return sorted(found)


def _class_folder_items(path: str) -> list[tuple[str, str]]:
  return [(file, name) for name in _subfolders(path)
          for file in _image_files_below(os.path.join(path, name))]


# ----------------------------------------------------------------------------- layouts


def _is_sop(path: str) -> bool:
  return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, name))
                                     for name in SOP_FILES.values())


def _read_sop(path: str) -> FolderIndex:
  splits = {}
  for split, name in SOP_FILES.items():
    list_file = os.path.join(path, name)
    items = []
    with open(list_file, encoding="utf-8") as f:
      header = f.readline().split()
      if header[:4] != ["image_id", "class_id", "super_class_id", "path"]:
        raise errors.DataError(f"{list_file}: expected the header 'image_id class_id "
                               f"super_class_id path', got {' '.join(header)!r}.")
      for number, line in enumerate(f, start=2):
        fields = line.split()
        if not fields:
          continue
        if len(fields) != 4:
          raise errors.DataError(f"{list_file}, line {number}: expected 4 columns, got "
                                 f"{len(fields)}.")
        items.append((os.path.join(path, fields[3]), fields[1]))
    splits[split] = items
  return _index("sop", splits, path)


def _is_cars(path: str) -> bool:
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, CARS_ANNOTATIONS))


def _read_cars(path: str) -> FolderIndex:
  from scipy import io as scipy_io  # pylint: disable=import-outside-toplevel

  annotations_file = os.path.join(path, CARS_ANNOTATIONS)
  try:
    content = scipy_io.loadmat(annotations_file, squeeze_me=True)
    annotations = np.atleast_1d(content["annotations"])
    names = [str(name) for name in np.atleast_1d(content.get("class_names", []))]
    files = [str(a["relative_im_path"]) for a in annotations]
    classes = [int(a["class"]) for a in annotations]
    is_test = [bool(a["test"]) for a in annotations]
  except (KeyError, ValueError, IndexError, TypeError, scipy_io.matlab.MatReadError) as error:
    raise errors.DataError(f"{annotations_file}: not Cars196's annotation file (expected "
                           f"'annotations' with relative_im_path, class and test; {error}).")
  width = len(str(max(classes, default=0)))
  splits = {"train": [], "test": []}
  for file, label, test in zip(files, classes, is_test):
    name = f"{label:0{width}d}"
    if 0 < label <= len(names):
      name += f" {names[label - 1]}"
    splits["test" if test else "train"].append((os.path.join(path, file), name))
  return _index("cars", splits, path)


def _inshop_partition(path: str) -> str | None:
  for candidate in (os.path.join(path, INSHOP_PARTITION),
                    os.path.join(path, "Eval", INSHOP_PARTITION)):
    if os.path.isfile(candidate):
      return candidate
  return None


def _is_inshop(path: str) -> bool:
  return os.path.isdir(path) and _inshop_partition(path) is not None


def _read_inshop(path: str) -> FolderIndex:
  list_file = _inshop_partition(path)
  splits = {status: [] for status in INSHOP_STATUSES}
  with open(list_file, encoding="utf-8") as f:
    lines = f.read().splitlines()
  if len(lines) < 2 or lines[1].split()[:3] != ["image_name", "item_id", "evaluation_status"]:
    raise errors.DataError(f"{list_file}: expected a count line, then the header 'image_name "
                           "item_id evaluation_status'.")
  for number, line in enumerate(lines[2:], start=3):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 3 or fields[2] not in INSHOP_STATUSES:
      raise errors.DataError(f"{list_file}, line {number}: expected 'image_name item_id "
                             f"{'|'.join(INSHOP_STATUSES)}', got {line.strip()!r}.")
    splits[fields[2]].append((os.path.join(path, fields[0]), fields[1]))
  return _index("inshop", splits, path)


def _is_csv(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(".csv")


def _read_csv(path: str) -> FolderIndex:
  folder = os.path.dirname(os.path.abspath(path))
  splits: dict[str, list[tuple[str, str]]] = {}
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in CSV_COLUMNS if c not in columns]
    if missing:
      raise errors.DataError(f"{path}: the header must name the columns path, label (and "
                             f"optionally split); missing {', '.join(missing)} (header: "
                             f"{', '.join(columns) or 'none'}).")
    reader.fieldnames = columns
    for number, row in enumerate(reader, start=2):
      split = (row.get("split") or "all").strip()
      if split not in SPLITS:
        raise errors.DataError(f"{path}, line {number}: split {split!r} is not one of "
                               f"{', '.join(SPLITS)}.")
      file, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
      if not file or not label:
        raise errors.DataError(f"{path}, line {number}: empty path or label.")
      splits.setdefault(split, []).append((os.path.join(folder, file), label))
  if "all" in splits and len(splits) > 1:
    raise errors.DataError(f"{path}: some rows have a split and some do not; give every row "
                           "a split or none.")
  return _index("csv", splits, path)


def _split_folder_names(path: str) -> list[str]:
  present = set(_subfolders(path))
  return [name for name in ("train", "test", "query", "gallery") if name in present]


def _is_split_folders(path: str) -> bool:
  if not os.path.isdir(path):
    return False
  names = set(_split_folder_names(path))
  return "train" in names and ("test" in names or {"query", "gallery"} <= names)


def _read_split_folders(path: str) -> FolderIndex:
  return _index("split_folders", {name: _class_folder_items(os.path.join(path, name))
                                  for name in _split_folder_names(path)}, path)


def _is_class_folders(path: str) -> bool:
  return os.path.isdir(path)


def _read_class_folders(path: str) -> FolderIndex:
  return _index("class_folders", {"all": _class_folder_items(path)}, path)


# Layouts in the order they are tried: name -> (matches(path), read(path)).
LAYOUTS: dict[str, tuple[Callable[[str], bool], Callable[[str], FolderIndex]]] = {
    "sop": (_is_sop, _read_sop),
    "cars": (_is_cars, _read_cars),
    "inshop": (_is_inshop, _read_inshop),
    "csv": (_is_csv, _read_csv),
    "split_folders": (_is_split_folders, _read_split_folders),
    "class_folders": (_is_class_folders, _read_class_folders),
}


def read_folder(path: str) -> FolderIndex:
  """The items of the image dataset at `path` (a folder, or a CSV file), by split.

  Raises:
    errors.DataNotFoundError: `path` does not exist.
    errors.DataError: a malformed list file, or no image at all.
  """
  if not os.path.exists(path):
    raise errors.DataNotFoundError(
        f"folder:{path}: no such folder or file; it must be a folder with one sub-folder per "
        "class (or train/ and test/ folders of class sub-folders, SOP's Ebay_*.txt, In-Shop's "
        "list_eval_partition.txt) or a CSV file with path,label[,split] columns.")
  for name, (matches, read) in LAYOUTS.items():
    if matches(path):
      try:
        return read(path)
      except (OSError, UnicodeDecodeError, csv.Error, NotImplementedError) as error:
        raise errors.DataError(f"folder:{path}: cannot read its {name} layout "
                               f"({getattr(error, 'strerror', None) or error}).") from error
  raise errors.DataError(f"folder:{path}: not a folder and not a .csv file.")
