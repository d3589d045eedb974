"""What a researcher looks at: projector files, PCA plots, training curves and a report.

Everything here runs on host NumPy arrays and plain Python records. Plots use matplotlib's
non-interactive Agg backend (headless machines), are written as PNG at a modest dpi, and
every figure is closed after saving so long runs do not accumulate them. Beside every PNG a
CSV of the same name holds the data series read back from the figure's lines and scatter
points (`PLOT_DATA_COLUMNS`), so the numbers behind a plot can be reused and checked.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from tripletjax.app.config import checker

DPI = 100
# The TensorBoard Embedding Projector loads sprites of at most 8192 x 8192 pixels.
MAX_SPRITE_SIZE = 8192
MAX_THUMBNAIL_SIZE = 28
# Beyond this many classes a legend hides the plot; colours still tell classes apart.
MAX_LEGEND_ENTRIES = 20

_TRAINING_PANELS = (
    ("loss", "loss"),
    ("fraction_active", "fraction of active triplets"),
    ("embedding_norm", "mean embedding norm (before normalisation)"),
    ("embedding_spread", "embedding spread (0: collapsed)"),
)
_EVAL_CURVES = (("precision_at_1", "precision@1"), ("map_at_r", "MAP@R"),
                ("validation_precision_at_1", "validation precision@1"),
                ("validation_map_at_r", "validation MAP@R"))
# The columns of the CSV beside every plot: one row per plotted point; panel is the axes'
# title, series the line's or scatter's legend label, z empty in 2-D.
PLOT_DATA_COLUMNS = ("panel", "series", "x", "y", "z")


# ----------------------------------------------------------------------------- helpers


def _check_embeddings_and_labels(embeddings, labels) -> tuple[np.ndarray, np.ndarray]:
  embeddings = np.asarray(embeddings)
  labels = np.asarray(labels)
  if embeddings.ndim != 2:
    raise ValueError(f"embeddings must have shape [N, D], got shape {embeddings.shape}.")
  if labels.ndim != 1:
    raise ValueError(f"labels must have shape [N], got shape {labels.shape}.")
  if labels.shape[0] != embeddings.shape[0]:
    raise ValueError(
        f"labels has {labels.shape[0]} entries but embeddings has {embeddings.shape[0]} rows.")
  if embeddings.shape[0] < 1:
    raise ValueError("embeddings must contain at least one example.")
  return embeddings, labels


def _class_name(label, class_names) -> str:
  """The display name of `label`: class_names[label] (a sequence or a mapping) or the label."""
  if class_names is None:
    return str(label)
  if isinstance(class_names, Mapping):
    key = label.item() if isinstance(label, np.generic) else label
    return str(class_names.get(key, key))
  try:
    index = int(label)
  except (TypeError, ValueError):  # e.g. string labels with a list of names
    return str(label)
  return str(class_names[index]) if 0 <= index < len(class_names) else str(label)


def _tsv_cell(value) -> str:
  # A tab or newline inside a cell would shift the columns or rows of the whole file.
  return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _plotted_points(figure):
  """(panel, series, x, y, z) of every point of the figure's lines and scatter plots."""
  for axes in figure.axes:
    panel = axes.get_title()
    for artist in [*axes.lines, *axes.collections]:
      if hasattr(artist, "get_data_3d"):  # A line in 3-D axes.
        coordinates = artist.get_data_3d()
      elif hasattr(artist, "_offsets3d"):  # Scatter points in 3-D axes.
        coordinates = artist._offsets3d
      elif hasattr(artist, "get_xydata"):
        coordinates = artist.get_xydata().T
      else:
        coordinates = np.asarray(artist.get_offsets()).T
      columns = [np.asarray(c, dtype=np.float64).reshape(-1) for c in coordinates]
      if len(columns) == 2:
        columns.append([""] * len(columns[0]))
      for x, y, z in zip(*columns):
        yield panel, artist.get_label(), float(x), float(y), "" if z == "" else float(z)


def plot_data_path(png_path) -> str:
  """The CSV written beside the PNG `png_path`: the same name with .csv."""
  return os.path.splitext(os.fspath(png_path))[0] + ".csv"


def _save_figure(figure, out_path) -> str:
  """Writes the PNG and, beside it, the CSV of its data series; closes the figure."""
  out_path = os.fspath(out_path)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  try:
    figure.savefig(out_path, dpi=DPI, bbox_inches="tight")
    with open(plot_data_path(out_path), "w", newline="", encoding="utf-8") as data_file:
      writer = csv.writer(data_file)
      writer.writerow(PLOT_DATA_COLUMNS)
      writer.writerows(_plotted_points(figure))
  finally:
    plt.close(figure)
  return out_path


def save_figure(figure, out_path) -> str:
  """Writes the figure's PNG and the CSV of its data series beside it; closes the figure."""
  return _save_figure(figure, out_path)


def _class_colours(num_classes: int) -> np.ndarray:
  """[num_classes, 4] RGBA colours: qualitative maps while they last, then a spread of turbo."""
  if num_classes <= 10:
    return plt.get_cmap("tab10")(np.arange(num_classes))
  if num_classes <= 20:
    return plt.get_cmap("tab20")(np.arange(num_classes))
  return plt.get_cmap("turbo")(np.linspace(0.0, 1.0, num_classes))


# ----------------------------------------------------------------------------- projector


def _to_uint8_images(images: np.ndarray) -> np.ndarray:
  """[N, H, W] / [N, H, W, 1] / [N, H, W, 3] images in [0, 1] (or uint8) -> uint8 [N, H, W(, 3)]."""
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
    raise ValueError(
        "images must have shape [N, H, W], [N, H, W, 1] or [N, H, W, 3], "
        f"got shape {images.shape}.")
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.number) or np.issubdtype(images.dtype, np.complexfloating):
    raise TypeError(f"images must be real-valued, got dtype {images.dtype}.")
  return np.round(np.clip(images.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _thumbnail_size(height: int, width: int) -> tuple[int, int]:
  """(h, w) fitting in MAX_THUMBNAIL_SIZE squared with the image's aspect ratio, never upscaled."""
  scale = min(1.0, MAX_THUMBNAIL_SIZE / height, MAX_THUMBNAIL_SIZE / width)
  return max(1, round(height * scale)), max(1, round(width * scale))


def max_sprite_images(thumb_height: int, thumb_width: int) -> int:
  """How many thumbnails fit the projector's square sprite grid within 8192 x 8192 pixels."""
  side = min(MAX_SPRITE_SIZE // thumb_height, MAX_SPRITE_SIZE // thumb_width)
  return side * side


def _make_sprite(images: np.ndarray, thumb_size: tuple[int, int]) -> Image.Image:
  """Tiles uint8 images row-major in a ceil(sqrt(N))-wide square grid, as the projector expects.

  Unused cells stay white.
  """
  thumb_height, thumb_width = thumb_size
  num_images = images.shape[0]
  side = math.ceil(math.sqrt(num_images))
  rgb = images.ndim == 4
  mode = "RGB" if rgb else "L"
  sprite = Image.new(mode, (side * thumb_width, side * thumb_height),
                     (255, 255, 255) if rgb else 255)
  resize = images.shape[1:3] != (thumb_height, thumb_width)
  for index in range(num_images):
    # uint8 [h, w] becomes an "L" image and [h, w, 3] an "RGB" one, matching the sprite.
    thumbnail = Image.fromarray(np.ascontiguousarray(images[index]))
    if resize:
      thumbnail = thumbnail.resize((thumb_width, thumb_height), Image.Resampling.LANCZOS)
    row, column = divmod(index, side)
    sprite.paste(thumbnail, (column * thumb_width, row * thumb_height))
  return sprite


def _projector_config(sprite_dims: tuple[int, int] | None) -> str:
  lines = [
      "embeddings {",
      '  tensor_path: "vecs.tsv"',
      '  metadata_path: "meta.tsv"',
  ]
  if sprite_dims is not None:
    thumb_height, thumb_width = sprite_dims
    # SpriteMetadata.single_image_dim is [width, height] (TensorFlow's projector docs:
    # `single_image_dim.extend([w, h])`); it only matters for non-square thumbnails.
    lines += [
        "  sprite {",
        '    image_path: "sprite.png"',
        f"    single_image_dim: {thumb_width}",
        f"    single_image_dim: {thumb_height}",
        "  }",
    ]
  lines.append("}")
  return "\n".join(lines) + "\n"


def _sprite_images(embeddings, labels, images):
  """(embeddings, labels, uint8 thumbnails or None, thumbnail size or None), cut to the
  examples an 8192 x 8192 sprite holds (with a warning)."""
  if images is None:
    return embeddings, labels, None, None
  images = np.asarray(images)
  if images.shape[0] != embeddings.shape[0]:
    raise ValueError(
        f"images has {images.shape[0]} entries but embeddings has {embeddings.shape[0]} rows.")
  uint8_images = _to_uint8_images(images)
  sprite_dims = _thumbnail_size(*uint8_images.shape[1:3])
  capacity = max_sprite_images(*sprite_dims)
  if embeddings.shape[0] > capacity:
    warnings.warn(
        f"{embeddings.shape[0]} examples do not fit an 8192 x 8192 sprite of "
        f"{sprite_dims[0]} x {sprite_dims[1]} thumbnails; writing only the first {capacity}.",
        stacklevel=3)
    embeddings, labels, uint8_images = (
        embeddings[:capacity], labels[:capacity], uint8_images[:capacity])
  return embeddings, labels, uint8_images, sprite_dims


def write_projector_files(
    out_dir,
    embeddings,
    labels,
    images=None,
    class_names: Sequence[str] | Mapping | None = None,
) -> dict:
  """Writes the files the TensorBoard Embedding Projector loads.

  * `vecs.tsv`: one row of tab-separated floats per example.
  * `meta.tsv`: one label per row; with `class_names`, a header `label\\tclass` and both
    columns (the projector treats the first row as a header only when there are 2+ columns).
  * With `images`: `sprite.png`, thumbnails of at most 28 x 28 tiled row-major in a
    ceil(sqrt(N))-wide square grid. The sprite must stay within 8192 x 8192 pixels, so when
    there are more examples than fit (85,264 at 28 x 28) only the first that many are written,
    to all the files, with a warning: the projector needs one thumbnail per vector.
  * `projector_config.pbtxt` pointing at the files above (and the sprite, when there is one),
    so `tensorboard --logdir out_dir` shows them; the two TSVs alone can also be uploaded to
    projector.tensorflow.org.

  Args:
    out_dir: directory to write into (created if missing).
    embeddings: [N, D] embeddings.
    labels: [N] class ids.
    images: optional [N, H, W], [N, H, W, 1] or [N, H, W, 3] images with values in [0, 1]
      (or uint8 in [0, 255]).
    class_names: optional names, indexed by label (a sequence) or keyed by it (a mapping).

  Returns:
    {"vecs": path, "meta": path, "config": path, "sprite": path or None,
     "num_points": rows written}.
  """
  embeddings, labels = _check_embeddings_and_labels(embeddings, labels)
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  embeddings, labels, uint8_images, sprite_dims = _sprite_images(embeddings, labels, images)

  paths = {
      "vecs": os.path.join(out_dir, "vecs.tsv"),
      "meta": os.path.join(out_dir, "meta.tsv"),
      "config": os.path.join(out_dir, "projector_config.pbtxt"),
      "sprite": None,
      "num_points": int(embeddings.shape[0]),
  }
  # %.7g keeps float32 precision without the noise digits of repr(float64).
  np.savetxt(paths["vecs"], embeddings.astype(np.float64), fmt="%.7g", delimiter="\t")
  with open(paths["meta"], "w", encoding="utf-8") as meta_file:
    if class_names is None:
      meta_file.writelines(f"{_tsv_cell(label)}\n" for label in labels)
    else:
      meta_file.write("label\tclass\n")
      meta_file.writelines(
          f"{_tsv_cell(label)}\t{_tsv_cell(_class_name(label, class_names))}\n"
          for label in labels)
  if uint8_images is not None:
    paths["sprite"] = os.path.join(out_dir, "sprite.png")
    _make_sprite(uint8_images, sprite_dims).save(paths["sprite"])
  with open(paths["config"], "w", encoding="utf-8") as config_file:
    config_file.write(_projector_config(sprite_dims))
  return paths


# ----------------------------------------------------------------------------- plots


def plot_pca(
    embeddings,
    labels,
    out_path_2d,
    out_path_3d,
    title: str,
    class_names: Sequence[str] | Mapping | None = None,
) -> tuple[str, str]:
  """Scatter plots of the first 2 and 3 principal components, coloured by class.

  Args:
    embeddings: [N, D] embeddings.
    labels: [N] class ids.
    out_path_2d: PNG path of the 2-D plot (its points go to the CSV beside it, one series per
      class).
    out_path_3d: PNG path of the 3-D plot (and its CSV).
    title: figure title (e.g. "epoch 3").
    class_names: optional names for the legend, indexed or keyed by label. The legend lists
      at most 20 classes.

  Returns:
    (out_path_2d, out_path_3d).
  """
  embeddings, labels = _check_embeddings_and_labels(embeddings, labels)
  embeddings = embeddings.astype(np.float64)
  num_components = min(3, embeddings.shape[0], embeddings.shape[1])
  projected = np.zeros((embeddings.shape[0], 3))
  explained = np.zeros(3)
  if embeddings.shape[0] >= 2:
    pca = PCA(n_components=num_components, random_state=0)
    # Fewer than 3 components (D < 3 or N < 3) leave the remaining axes at 0.
    projected[:, :num_components] = pca.fit_transform(embeddings)
    explained[:num_components] = pca.explained_variance_ratio_

  classes, class_ids = np.unique(labels, return_inverse=True)
  colours = _class_colours(len(classes))
  axis_labels = [f"PC{i + 1} ({100.0 * explained[i]:.1f}%)" for i in range(3)]
  show_legend = len(classes) <= MAX_LEGEND_ENTRIES
  marker_size = 12 if embeddings.shape[0] <= 2000 else 4

  saved = []
  for dims, out_path in ((2, out_path_2d), (3, out_path_3d)):
    figure = plt.figure(figsize=(7, 6))
    axes = figure.add_subplot(projection="3d" if dims == 3 else None)
    for class_index, label in enumerate(classes):
      points = projected[class_ids == class_index, :dims]
      axes.scatter(*points.T, s=marker_size, color=colours[class_index], alpha=0.7,
                   label=_class_name(label, class_names), linewidths=0)
    axes.set_xlabel(axis_labels[0])
    axes.set_ylabel(axis_labels[1])
    if dims == 3:
      axes.set_zlabel(axis_labels[2])
    axes.set_title(f"{title} (PCA {dims}-D)")
    if show_legend:
      axes.legend(loc="center left", bbox_to_anchor=(1.02 if dims == 2 else 1.1, 0.5),
                  fontsize="small", markerscale=2.0, frameon=False)
    saved.append(_save_figure(figure, out_path))
  return saved[0], saved[1]


def _lookup(record: Mapping, key: str):
  """record[key]; "a/b" looks up record["a"][b] (b as written, or as an int)."""
  if "/" not in key:
    return record.get(key)
  outer, inner = key.split("/", 1)
  nested = record.get(outer)
  if not isinstance(nested, Mapping):
    return None
  if inner in nested:
    return nested[inner]
  return nested.get(int(inner)) if inner.isdigit() else None


def _series(records: Sequence[Mapping], key: str) -> tuple[list, list]:
  """(steps, values) of the records holding both "step" and a finite number under `key`."""
  steps, values = [], []
  for record in records:
    value = _lookup(record, key)
    if "step" not in record or value is None or isinstance(value, (bool, str, dict, list)):
      continue
    try:
      value = float(value)
    except (TypeError, ValueError):
      continue
    steps.append(record["step"])
    values.append(value)
  return steps, values


def plot_training_curves(runs: Mapping[str, Sequence[Mapping]], out_path) -> str:
  """One figure, four panels (loss, fraction of active triplets, mean embedding norm, spread).

  Every run is a line in every panel, so e.g. semi-hard and batch-hard mining can be compared
  on the same axes. Records missing `step` or a panel's key are skipped in that panel.

  Args:
    runs: run name -> its metric records (dicts with `step`, `loss`, `fraction_active`,
      `embedding_norm`, `embedding_spread`, optionally `epoch`), in logging order.
    out_path: PNG path; the CSV beside it holds every curve (panel, run, step, value).

  Returns:
    out_path.
  """
  if not isinstance(runs, Mapping):
    raise TypeError(f"runs must map a run name to its records, got {type(runs).__name__}.")
  figure, panels = plt.subplots(1, len(_TRAINING_PANELS), figsize=(20, 4.2))
  colours = _class_colours(max(len(runs), 1))
  for axes, (key, name) in zip(panels, _TRAINING_PANELS):
    plotted = False
    for run_index, (run_name, records) in enumerate(runs.items()):
      steps, values = _series(records, key)
      if steps:
        axes.plot(steps, values, label=str(run_name), color=colours[run_index], linewidth=1.2)
        plotted = True
    axes.set_title(name)
    axes.set_xlabel("step")
    axes.grid(True, alpha=0.3)
    if plotted:
      axes.legend(fontsize="small")
    else:
      axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
  figure.tight_layout()
  return _save_figure(figure, out_path)


def plot_eval_history(records: Sequence[Mapping], out_path,
                      curves: Sequence[tuple[str, str]] = _EVAL_CURVES,
                      selected: tuple[int, str] | None = None) -> str:
  """Evaluation metrics (by default precision@1 and MAP@R of the test set, and of the
  validation set when there is one) against the training step.

  Args:
    records: evaluation records (dicts with `step` and the curves' keys); records missing a
      key are skipped for that curve.
    out_path: PNG path; the CSV beside it holds the curves (metric, step, value).
    curves: (key, legend label) of each curve; a key "a/b" reads record["a"][b].
    selected: (step, label) of the selected model, marked by a vertical line (its CSV series
      is the label), or None.

  Returns:
    out_path.
  """
  figure, axes = plt.subplots(figsize=(7, 4.2))
  plotted = False
  for key, name in curves:
    steps, values = _series(records, key)
    if steps:
      axes.plot(steps, values, marker="o", markersize=3, label=name)
      plotted = True
  if plotted and selected is not None:
    axes.axvline(selected[0], color="black", linestyle="--", linewidth=1, label=selected[1])
  axes.set_xlabel("step")
  axes.set_ylabel("metric")
  axes.set_title("retrieval metrics during training")
  axes.grid(True, alpha=0.3)
  if plotted:
    axes.legend()
  else:
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
  return _save_figure(figure, out_path)


def plot_per_class(values: Mapping, out_path, title: str, ylabel: str = "precision@1",
                   class_names: Sequence[str] | Mapping | None = None) -> str:
  """A bar per class (e.g. the precision@1 of its queries), classes in the mapping's order.

  Args:
    values: class id -> value (NaN bars are left empty).
    out_path: PNG path; the CSV beside it holds (class index, value) per bar.
    title, ylabel: the axes' title and y label.
    class_names: optional names, indexed or keyed by class id.

  Returns:
    out_path.
  """
  names = [_class_name(label, class_names) for label in values]
  heights = np.asarray([float(v) for v in values.values()], np.float64)
  figure, axes = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 1.5), 3.6))
  axes.bar(np.arange(len(names)), np.nan_to_num(heights), color="tab:blue")
  axes.plot(np.arange(len(names)), heights, linestyle="none", marker="_", color="black",
            label=ylabel)  # Read back into the CSV (bars are not lines).
  axes.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize="small")
  axes.set_ylim(min(0.0, np.nanmin(heights, initial=0.0)), 1.0)
  axes.set_ylabel(ylabel)
  axes.set_title(title)
  axes.grid(True, axis="y", alpha=0.3)
  return _save_figure(figure, out_path)


def plot_retrieval_examples(query_images, retrieved_images, correct, out_path,
                            query_names: Sequence[str] | None = None) -> str:
  """What a person looks at first after a pair run: queries and their nearest neighbours.

  One row per query: the query image, then its top-k retrieved images, best first; a
  retrieved image that is the query's true match has a green frame, the others a red one.

  Args:
    query_images: [Q, H, W, C] images in [0, 1] (C = 1 or 3).
    retrieved_images: [Q, K, H, W, C] the retrieved images of each query, best first.
    correct: bool [Q, K], whether each retrieved image is the query's match.
    out_path: PNG path; the CSV beside it holds one row per (query, rank): series "match",
      x the rank from 1, y 1 where the retrieved image is the match and 0 elsewhere.
    query_names: optional titles of the queries.

  Returns:
    out_path.
  """
  query_images = np.asarray(query_images)
  retrieved_images = np.asarray(retrieved_images)
  correct = np.asarray(correct, bool)
  num_queries, k = correct.shape
  if query_images.shape[0] != num_queries or retrieved_images.shape[:2] != (num_queries, k):
    raise ValueError(f"{query_images.shape[0]} queries and {retrieved_images.shape[:2]} "
                     f"retrieved images for correct of shape {correct.shape}.")
  figure, axes = plt.subplots(num_queries, k + 1, figsize=(1.6 * (k + 1), 1.7 * num_queries),
                              squeeze=False)
  for row in range(num_queries):
    cells = [(query_images[row], "query" if query_names is None
              else f"query {query_names[row]}", "black")]
    cells += [(retrieved_images[row, rank], f"#{rank + 1}",
               "green" if correct[row, rank] else "red") for rank in range(k)]
    for column, (image, title, colour) in enumerate(cells):
      ax = axes[row, column]
      image = np.clip(image, 0, 1)
      ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
                cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
      ax.set_title(title, fontsize=8, color=colour)
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3 if column else 1)
  figure.suptitle("query -> top retrieved (green frame: its match)", fontsize=10)
  figure.tight_layout()
  _save_figure(figure, out_path)
  # The figure has no lines to read back: the CSV holds, for each query (panel) and rank (x),
  # whether the retrieved image is the match (y = 1) or not (y = 0).
  with open(plot_data_path(out_path), "w", newline="", encoding="utf-8") as data_file:
    writer = csv.writer(data_file)
    writer.writerow(PLOT_DATA_COLUMNS)
    for row in range(num_queries):
      panel = f"query {row + 1}" if query_names is None else f"query {query_names[row]}"
      writer.writerows((panel, "match", rank + 1, int(correct[row, rank]), "")
                       for rank in range(k))
  return os.fspath(out_path)


# ----------------------------------------------------------------------------- report


def _flatten_metrics(metrics: Mapping) -> list[tuple[str, object]]:
  """[(name, value)], with the nested recall_at_k dict spelled recall@k."""
  rows = []
  for key, value in metrics.items():
    if key == "recall_at_k" and isinstance(value, Mapping):
      rows.extend((f"recall@{k}", v) for k, v in value.items())
    elif isinstance(value, Mapping):
      rows.extend((f"{key}/{k}", v) for k, v in value.items())
    else:
      rows.append((key, value))
  return rows


def _format_value(value) -> str:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
    return str(value)
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  return f"{float(value):.4f}"


def _figure_lines(workdir: str, figures: Sequence[str]) -> list[str]:
  """The report's lines for `figures` (paths absolute or relative to `workdir`): each linked
  relative to `workdir`, or listed as missing."""
  if not figures:
    return ["(none)", ""]
  lines = []
  for figure_path in figures:
    figure_path = os.fspath(figure_path)
    absolute = figure_path if os.path.isabs(figure_path) else os.path.join(workdir, figure_path)
    relative = os.path.relpath(absolute, workdir).replace(os.sep, "/")
    name = os.path.splitext(os.path.basename(figure_path))[0]
    if os.path.exists(absolute):
      lines += [f"![{name}]({relative})", ""]
    else:
      lines += [f"- {name}: missing (`{relative}`)", ""]
  return lines


def write_report(
    workdir,
    *,
    config_text: str,
    eval_metrics: Mapping,
    figures: Sequence,
    runs: Sequence[str],
    notes: str = "",
) -> str:
  """Writes `workdir/report.md`: figures, final metrics, compared runs and the config.

  Args:
    workdir: directory of the report (created if missing).
    config_text: the configuration, shown verbatim in a code block.
    eval_metrics: final metrics, e.g. from `retrieval.evaluate_embeddings`.
    figures: figure paths, absolute or relative to `workdir`; linked relative to `workdir`.
      Missing files are listed as missing rather than linked.
    runs: names of the compared runs.
    notes: optional free text placed under the title.

  Returns:
    The path of the report.
  """
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  lines = ["# tripletjax report", ""]
  if notes:
    lines += [notes.rstrip(), ""]

  lines += ["## Figures", ""] + _figure_lines(workdir, figures)

  lines += ["## Final metrics", "", "| metric | value |", "| --- | --- |"]
  lines += [f"| {name} | {_format_value(value)} |"
            for name, value in _flatten_metrics(eval_metrics)]
  lines += [""]

  lines += ["## Compared runs", ""]
  lines += [f"- {run}" for run in runs] if runs else ["(none)"]
  lines += [""]

  # A fence longer than any backtick run in the config keeps it from closing early.
  fence = "```"
  while fence in config_text:
    fence += "`"
  lines += ["## Config", "", fence, config_text.rstrip("\n"), fence, ""]

  report_path = os.path.join(workdir, "report.md")
  with open(report_path, "w", encoding="utf-8") as report_file:
    report_file.write("\n".join(lines))
  return report_path


def check_config(check: checker.Checker) -> None:
  """`config.export`."""
  check.integer("export.projector_max_points", 1)
  check.boolean("export.pca_every_eval")
  check.boolean("export.test_embeddings")
