"""The picture of a search: each query beside its nearest gallery images and their similarities.

One row per query: the query, then its k nearest images, nearest first, each titled with its
rank, cosine similarity and class. Where both labels are known a neighbour has a green frame
when it shares the query's class and a red one when it does not; grey otherwise.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from tripletjax.app.data import images as images_lib  # pylint: disable=wrong-import-position

# The side of the images in the picture (image files are decoded to it).
PICTURE_SIZE = 96
# At most this many queries are drawn (the first ones); every query is printed.
MAX_ROWS = 16
FRAME_COLOURS = {True: "green", False: "red", None: "grey"}


def thumbnails(images, indices: np.ndarray) -> list[np.ndarray]:
  """[H, W, C] images in [0, 1] of `images` (an array or `ImageFiles`) at `indices`; files are
  decoded straight to `PICTURE_SIZE`."""
  indices = np.asarray(indices, np.int64).reshape(-1)
  if images_lib.is_lazy(images):
    return list(images.decode(indices, images_lib.EvalTransform(PICTURE_SIZE)))
  return [np.asarray(images[i], np.float32) for i in indices]


def _short(name: str, width: int = 18) -> str:
  name = os.path.basename(str(name)) or str(name)
  return name if len(name) <= width else "…" + name[-(width - 1):]


def _show(ax, image: np.ndarray, title: str, colour: str, frame_width: float) -> None:
  image = np.clip(np.asarray(image, np.float32), 0, 1)
  grey = image.shape[-1] == 1
  ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=1,
            interpolation="nearest")
  ax.set_title(title, fontsize=7, color=colour if colour != "grey" else "black")
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_edgecolor(colour)
    spine.set_linewidth(frame_width)


def plot_neighbours(query_images: Sequence[np.ndarray], query_titles: Sequence[str],
                    neighbour_images: Sequence[Sequence[np.ndarray]],
                    neighbour_titles: Sequence[Sequence[str]], similarities: np.ndarray,
                    correct: np.ndarray | None, out_path: str) -> str:
  """Writes the picture of a search to `out_path` (PNG); returns the path.

  Args:
    query_images: Q images [H, W, C] in [0, 1].
    query_titles: Q titles.
    neighbour_images: Q lists of k images, nearest first.
    neighbour_titles: Q lists of k short titles (name, class).
    similarities: float [Q, k] cosine similarities.
    correct: bool [Q, k] (same class as the query), or None where labels are unknown; rows
      of a bool array can be masked by passing an object array holding None.
  """
  num_queries, k = similarities.shape
  height = 1.8 * num_queries + 0.6  # Inches; the top 0.6 for the title.
  figure, axes = plt.subplots(num_queries, k + 1, figsize=(max(1.5 * (k + 1), 4.5), height),
                              squeeze=False)
  for row in range(num_queries):
    _show(axes[row, 0], query_images[row], f"query\n{query_titles[row]}", "black", 1)
    for rank in range(k):
      verdict = None if correct is None else correct[row, rank]
      title = f"#{rank + 1}  {similarities[row, rank]:.3f}\n{neighbour_titles[row][rank]}"
      _show(axes[row, rank + 1], neighbour_images[row][rank], title,
            FRAME_COLOURS[None if verdict is None else bool(verdict)], 3)
  legend = "cosine similarity" + ("\ngreen: same class, red: another class"
                                  if correct is not None else "")
  figure.suptitle(f"query -> {k} nearest, {legend}", fontsize=8)
  figure.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  figure.savefig(out_path, dpi=100)
  plt.close(figure)
  return out_path


def short_title(name: str, class_name: str) -> str:
  """A picture title: the image's file name (or test:<i>) and its class."""
  return _short(name) + (f"\n{class_name}" if class_name else "")
