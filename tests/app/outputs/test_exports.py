"""Projector files, plots (with the data they show) and the report."""

from __future__ import annotations

import csv
import os
import re

import numpy as np
import pytest
from PIL import Image

from tripletjax.app.outputs import exports

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
  assert os.path.getsize(path) > 1000
  with open(path, "rb") as png_file:
    assert png_file.read(8) == PNG_SIGNATURE
  with Image.open(path) as image:
    assert image.width > 50 and image.height > 50


def plot_data(png_path) -> dict:
  """The CSV beside a plot: {(panel, series): [N, 2 or 3] float array of its points}."""
  with open(exports.plot_data_path(png_path), newline="") as data_file:
    rows = list(csv.DictReader(data_file))
    data_file.seek(0)
    assert tuple(next(csv.reader(data_file))) == exports.PLOT_DATA_COLUMNS
  series = {}
  for row in rows:
    point = [float(row["x"]), float(row["y"])] + ([float(row["z"])] if row["z"] else [])
    series.setdefault((row["panel"], row["series"]), []).append(point)
  return {key: np.array(points) for key, points in series.items()}


def embeddings_and_labels(num_examples=40, dim=6, num_classes=4, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, size=num_examples)
  embeddings = rng.standard_normal((num_examples, dim)).astype(np.float32)
  return embeddings, labels


def test_projector_tsv_files(tmp_path):
  embeddings, labels = embeddings_and_labels()
  paths = exports.write_projector_files(tmp_path / "proj", embeddings, labels)
  vecs = np.loadtxt(paths["vecs"], delimiter="\t")
  assert vecs.shape == (40, 6)
  np.testing.assert_allclose(vecs, embeddings, rtol=1e-6)
  with open(paths["vecs"]) as vecs_file:
    assert all(len(line.rstrip("\n").split("\t")) == 6 for line in vecs_file)
  with open(paths["meta"]) as meta_file:
    meta_lines = meta_file.read().splitlines()
  # One column: no header row, one label per example.
  assert meta_lines == [str(label) for label in labels]
  assert paths["sprite"] is None and not (tmp_path / "proj" / "sprite.png").exists()
  config = (tmp_path / "proj" / "projector_config.pbtxt").read_text()
  assert 'tensor_path: "vecs.tsv"' in config and "sprite" not in config


def test_projector_meta_with_class_names(tmp_path):
  embeddings, labels = embeddings_and_labels()
  names = ["zero", "one", "two\twith tab", "three"]
  paths = exports.write_projector_files(tmp_path, embeddings, labels, class_names=names)
  with open(paths["meta"]) as meta_file:
    rows = [line.split("\t") for line in meta_file.read().splitlines()]
  assert rows[0] == ["label", "class"]
  assert len(rows) == 41 and all(len(row) == 2 for row in rows)
  for (label, name), expected in zip(rows[1:], labels):
    assert label == str(expected)
    assert name == names[expected].replace("\t", " ")
  # A mapping works too.
  paths = exports.write_projector_files(
      tmp_path, embeddings, labels, class_names={0: "a", 1: "b", 2: "c", 3: "d"})
  with open(paths["meta"]) as meta_file:
    assert meta_file.read().splitlines()[1] == f"{labels[0]}\t{'abcd'[labels[0]]}"


def test_projector_grayscale_sprite(tmp_path):
  embeddings, labels = embeddings_and_labels(num_examples=10)
  images = np.random.default_rng(1).uniform(size=(10, 28, 28, 1))
  paths = exports.write_projector_files(tmp_path, embeddings, labels, images=images)
  with Image.open(paths["sprite"]) as sprite:
    # ceil(sqrt(10)) = 4 thumbnails a side.
    assert sprite.size == (4 * 28, 4 * 28)
    assert sprite.mode == "L"
    pixels = np.asarray(sprite)
  np.testing.assert_array_equal(pixels[:28, :28], np.round(images[0, :, :, 0] * 255))
  # Second row, second column holds image 5; unused cells stay white.
  np.testing.assert_array_equal(pixels[28:56, 28:56], np.round(images[5, :, :, 0] * 255))
  assert np.all(pixels[84:, 56:] == 255)
  config = (tmp_path / "projector_config.pbtxt").read_text()
  expected = (
      'embeddings {\n  tensor_path: "vecs.tsv"\n  metadata_path: "meta.tsv"\n  sprite {\n'
      '    image_path: "sprite.png"\n    single_image_dim: 28\n    single_image_dim: 28\n'
      "  }\n}\n")
  assert config == expected


def test_projector_rgb_sprite_is_downscaled(tmp_path):
  embeddings, labels = embeddings_and_labels(num_examples=5)
  images = np.random.default_rng(2).uniform(size=(5, 64, 32, 3))  # tall images
  paths = exports.write_projector_files(tmp_path, embeddings, labels, images=images)
  with Image.open(paths["sprite"]) as sprite:
    # Thumbnails keep the 2:1 aspect within 28 x 28: 28 high, 14 wide; 3 x 3 grid.
    assert sprite.mode == "RGB"
    assert sprite.size == (3 * 14, 3 * 28)
  config = (tmp_path / "projector_config.pbtxt").read_text()
  # single_image_dim is [width, height].
  assert re.findall(r"single_image_dim: (\d+)", config) == ["14", "28"]


def test_projector_caps_to_sprite_capacity(tmp_path, monkeypatch):
  # Shrink the limit instead of writing 85k images: 56 px fits 2 x 2 thumbnails of 28 px.
  monkeypatch.setattr(exports, "MAX_SPRITE_SIZE", 56)
  embeddings, labels = embeddings_and_labels(num_examples=7)
  images = np.zeros((7, 28, 28))
  with pytest.warns(UserWarning, match="first 4"):
    paths = exports.write_projector_files(tmp_path, embeddings, labels, images=images)
  assert paths["num_points"] == 4
  assert np.loadtxt(paths["vecs"], delimiter="\t").shape == (4, 6)
  assert len((tmp_path / "meta.tsv").read_text().splitlines()) == 4
  with Image.open(paths["sprite"]) as sprite:
    assert sprite.size == (56, 56)


def test_projector_input_errors(tmp_path):
  embeddings, labels = embeddings_and_labels(num_examples=5)
  with pytest.raises(ValueError):
    exports.write_projector_files(tmp_path, embeddings, labels[:4])
  with pytest.raises(ValueError):
    exports.write_projector_files(tmp_path, embeddings, labels, images=np.zeros((4, 8, 8)))
  with pytest.raises(ValueError):
    exports.write_projector_files(tmp_path, embeddings, labels, images=np.zeros((5, 8, 8, 2)))


def principal_components(embeddings: np.ndarray, count: int) -> np.ndarray:
  """[N, count] projections on the principal axes, computed by SVD."""
  centred = embeddings - embeddings.mean(axis=0)
  _, _, axes = np.linalg.svd(centred, full_matrices=False)
  return centred @ axes[:count].T


def assert_pca_points(data, panel, embeddings, labels, names, dims):
  """The class series hold exactly the examples' first `dims` principal components.

  Each class is one series, its points in the examples' order; up to the sign of each axis,
  which PCA leaves free.
  """
  assert {key[0] for key in data} == {panel}
  assert sorted(key[1] for key in data) == sorted(names[label] for label in set(labels))
  expected = principal_components(embeddings.astype(np.float64), min(dims, embeddings.shape[1]))
  expected = np.pad(expected, ((0, 0), (0, dims - expected.shape[1])))  # Missing axes: 0.
  plotted = np.full(expected.shape, np.nan)
  for label in set(labels):
    points = data[panel, names[label]]
    assert points.shape == (np.count_nonzero(labels == label), dims)
    plotted[labels == label] = points
  signs = np.sign(np.sum(plotted * expected, axis=0))
  np.testing.assert_allclose(plotted * np.where(signs == 0, 1, signs), expected, rtol=1e-6,
                             atol=1e-9)


def test_plot_pca(tmp_path):
  embeddings, labels = embeddings_and_labels(num_examples=60, dim=16)
  names = ["a", "b", "c", "d"]
  out_2d, out_3d = exports.plot_pca(
      embeddings, labels, tmp_path / "pca" / "e1_2d.png", tmp_path / "pca" / "e1_3d.png",
      "epoch 1", class_names=names)
  assert_png(out_2d)
  assert_png(out_3d)
  assert_pca_points(plot_data(out_2d), "epoch 1 (PCA 2-D)", embeddings, labels, names, 2)
  assert_pca_points(plot_data(out_3d), "epoch 1 (PCA 3-D)", embeddings, labels, names, 3)
  # Two-dimensional embeddings and many classes (no legend) still plot; the third axis is 0.
  flat = np.random.default_rng(3).standard_normal((50, 2))
  out_2d, out_3d = exports.plot_pca(
      flat, np.arange(50), tmp_path / "f2.png", tmp_path / "f3.png", "flat")
  assert_png(out_2d)
  assert_png(out_3d)
  names = [str(label) for label in range(50)]
  assert_pca_points(plot_data(out_2d), "flat (PCA 2-D)", flat, np.arange(50), names, 2)
  assert_pca_points(plot_data(out_3d), "flat (PCA 3-D)", flat, np.arange(50), names, 3)


def test_plot_training_curves(tmp_path):
  runs = {
      "semihard": [
          {"step": step, "loss": 1.0 / (step + 1), "fraction_active": 0.5,
           "embedding_norm": 3.0 + step, "epoch": 0}
          for step in range(10)],
      "hard": [
          {"step": step, "loss": 2.0 / (step + 1), "fraction_active": 0.9}  # no norm logged
          for step in range(10)] + [{"epoch": 1}],  # a record without a step
  }
  out_path = exports.plot_training_curves(runs, tmp_path / "curves.png")
  assert_png(out_path)
  steps = np.arange(10.0)
  expected = {
      ("loss", "semihard"): 1.0 / (steps + 1),
      ("loss", "hard"): 2.0 / (steps + 1),
      ("fraction of active triplets", "semihard"): np.full(10, 0.5),
      ("fraction of active triplets", "hard"): np.full(10, 0.9),
      ("mean embedding norm (before normalisation)", "semihard"): 3.0 + steps,
  }
  data = plot_data(out_path)
  assert set(data) == set(expected)  # No norm curve for "hard"; its step-less record dropped.
  for key, values in expected.items():
    np.testing.assert_allclose(data[key], np.stack([steps, values], axis=1), err_msg=str(key))
  # Nothing to plot at all still gives an (annotated) figure, and a CSV of no points.
  empty = exports.plot_training_curves({"empty": []}, tmp_path / "empty.png")
  assert_png(empty)
  assert plot_data(empty) == {}


def test_plot_eval_history(tmp_path):
  records = [
      {"step": 100 * i, "precision_at_1": 0.1 * i, "map_at_r": 0.05 * i} for i in range(5)
  ] + [{"step": 600, "precision_at_1": 0.6}]
  out_path = exports.plot_eval_history(records, tmp_path / "eval.png")
  assert_png(out_path)
  data = plot_data(out_path)
  panel = "retrieval metrics during training"
  assert set(data) == {(panel, "precision@1"), (panel, "MAP@R")}
  np.testing.assert_allclose(data[panel, "precision@1"],
                             [[0, 0.0], [100, 0.1], [200, 0.2], [300, 0.3], [400, 0.4],
                              [600, 0.6]])
  np.testing.assert_allclose(data[panel, "MAP@R"],
                             [[0, 0.0], [100, 0.05], [200, 0.1], [300, 0.15], [400, 0.2]])


def test_write_report(tmp_path):
  workdir = tmp_path / "run"
  figures_dir = workdir / "figures"
  figures_dir.mkdir(parents=True)
  curves = exports.plot_training_curves(
      {"semihard": [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]},
      figures_dir / "curves.png")
  history = exports.plot_eval_history(
      [{"step": 0, "precision_at_1": 0.2, "map_at_r": 0.1}], figures_dir / "eval.png")
  metrics = {"precision_at_1": 0.81234, "recall_at_k": {"1": 0.81234, "8": 0.97},
             "map_at_r": 0.4, "nmi": float("nan")}
  config_text = "learning_rate: 0.001\nmining: ```semihard```\n"
  report_path = exports.write_report(
      workdir, config_text=config_text, eval_metrics=metrics,
      figures=[curves, "figures/eval.png", "figures/missing.png"],
      runs=["semihard", "hard"], notes="Seed 0.")
  with open(report_path, encoding="utf-8") as report_file:
    report = report_file.read()
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
  assert links == ["figures/curves.png", "figures/eval.png"]
  for link in links:
    assert not os.path.isabs(link)
    assert (workdir / link).exists()
  assert "missing" in report and "figures/missing.png" in report
  assert os.path.exists(history)
  assert "| precision_at_1 | 0.8123 |" in report
  assert "| recall@1 | 0.8123 |" in report and "| recall@8 | 0.9700 |" in report
  assert "| nmi | nan |" in report
  assert "- semihard" in report and "- hard" in report
  # The config sits verbatim in a fence longer than its own backtick runs.
  assert "````\nlearning_rate: 0.001\nmining: ```semihard```\n````" in report
  assert "Seed 0." in report


def test_eval_history_plots_validation_curves(tmp_path):
  records = [{"step": 10 * i, "precision_at_1": 0.1 * i, "map_at_r": 0.05 * i,
              "validation_precision_at_1": 0.2 * i, "validation_map_at_r": 0.15 * i}
             for i in range(1, 4)]
  data = plot_data(exports.plot_eval_history(records, tmp_path / "eval.png"))
  panel = "retrieval metrics during training"
  assert set(data) == {(panel, "precision@1"), (panel, "MAP@R"),
                       (panel, "validation precision@1"), (panel, "validation MAP@R")}
  np.testing.assert_allclose(data[panel, "validation precision@1"],
                             [[10, 0.2], [20, 0.4], [30, 0.6]])
  np.testing.assert_allclose(data[panel, "validation MAP@R"],
                             [[10, 0.15], [20, 0.3], [30, 0.45]])
