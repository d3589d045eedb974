"""The four benchmark configs, end to end on tiny generated folders in their datasets' layouts.

The real runs need the datasets and an accelerator. Here each config trains for one epoch on a
few dozen generated images in the same layout (CUB's class folders, Cars196's cars_annos.mat,
SOP's Ebay_*.txt, In-Shop's list_eval_partition.txt), with everything of the config kept but
the image size (32) and the network (the small TFA CNN instead of ResNet-50, whose compilation
alone would take minutes on a CPU); the config's own ResNet-50 is built abstractly.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import threading

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tests.app.data import image_folders
from tripletjax.app import models
from tripletjax.app.data import images
from tripletjax.app.loop import checks
from tripletjax.app.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(f"config_{name}",
                                                os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def write_cub(root):
  image_folders.write_class_folders(os.path.join(root, "CUB_200_2011", "images"), 24, 4)
  return os.path.join(root, "CUB_200_2011", "images")


def write_cars(root):
  image_folders.write_cars(os.path.join(root, "cars196"), 24, 4)
  return os.path.join(root, "cars196")


def write_sop(root):
  image_folders.write_sop(os.path.join(root, "sop"), 22, 6, 2)
  return os.path.join(root, "sop")


def write_inshop(root):
  # 22 training items of 2 images; 6 test items of 4 (2 queries, 2 in the gallery).
  image_folders.write_inshop(os.path.join(root, "inshop"), 22, 6, 4)
  # Training items have 2 images each: drop the 3rd and 4th of the training items.
  list_file = os.path.join(root, "inshop", "Eval", "list_eval_partition.txt")
  lines = open(list_file).read().splitlines()
  rows = [row for row in lines[2:]
          if row.split()[2] != "train" or row.split()[0].split("/")[-1][:2] in ("00", "01")]
  with open(list_file, "w") as f:
    f.write(f"{len(rows)}\n{lines[1]}\n" + "\n".join(rows) + "\n")
  return os.path.join(root, "inshop")


LAYOUTS = {"cub200": write_cub, "cars196": write_cars, "sop": write_sop,
           "inshop": write_inshop}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_benchmark_config_runs_end_to_end_on_a_generated_folder(name, tmp_path, monkeypatch):
  folder = LAYOUTS[name](str(tmp_path / "data"))
  config = load_config(name)
  protocol = {key: config.data[key] for key in ("class_split", "validation_fraction",
                                                "augment")}
  config.data.name = f"folder:{folder}"
  config.data.image_size, config.data.eval_resize = 32, 36
  config.model.name = "tfa_cnn"
  config.num_epochs = 1
  config.quiet = True
  config.log_every_steps = 1
  config.export.pca_every_eval = False
  config.monitor.patience_steps = 1
  checks.check_config(config)
  # Record the threads that decode: every image must be decoded by a worker.
  decoding_threads = set()
  original = images.load_image

  def recording(*args, **kwargs):
    decoding_threads.add(threading.current_thread().name)
    return original(*args, **kwargs)

  monkeypatch.setattr(images, "load_image", recording)
  final = train.train_and_evaluate(config, str(tmp_path / "run"))

  assert decoding_threads and all(t.startswith("image-decoder") for t in decoding_threads)
  saved = json.loads((tmp_path / "run" / "eval.json").read_text())
  assert saved["dataset"] == config.data.name
  # One epoch, every step logged (log_every_steps=1): the count is the sampler's epoch.
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    logged_steps = [json.loads(line)["step"] for line in f]
  assert logged_steps == list(range(1, saved["steps"] + 1)), (logged_steps, saved["steps"])
  assert list(saved["recall_at_k"]) == [str(k) for k in config.eval.recall_ks]
  assert saved["num_unseen_test_classes"] == saved["num_test_classes"]  # Unseen classes only.
  assert "knn_accuracy" not in saved  # Meaningless on unseen classes.
  assert "validation_map_at_r" in saved and saved["num_validation_classes"] >= 2
  assert saved["health_warnings"] == final["health_warnings"]
  if name == "inshop":
    assert saved["num_queries"] == 12 and saved["num_gallery"] == 12
  else:
    assert saved["num_test_examples"] == {"cub200": 48, "cars196": 48, "sop": 12}[name]
  assert protocol["class_split"] == ("half" if name in ("cub200", "cars196") else "none")
  assert protocol["augment"] == "crop_flip" and config.data.eval_resize == 36
  report = (tmp_path / "run" / "report.md").read_text()
  assert "Mining health" in report and "missing" not in report
  # The sprite tiles the test images as 28 x 28 thumbnails of the 32 x 32 crops, square grid.
  num_points = len((tmp_path / "run" / "projector" / "vecs.tsv").read_text().splitlines())
  assert num_points == saved.get("num_test_examples", 24)
  with Image.open(tmp_path / "run" / "projector" / "sprite.png") as sprite:
    assert sprite.size == (28 * math.ceil(math.sqrt(num_points)),) * 2, sprite.size


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_benchmark_config_model_is_resnet50_on_224_crops(name):
  config = load_config(name)
  assert config.model.name == "resnet50" and config.data.image_size == 224
  shape = (config.data.image_size, config.data.image_size, config.data.image_channels)
  model = nnx.eval_shape(lambda: models.create_model(
      config.model.name, input_shape=shape, embedding_dim=config.model.embedding_dim,
      rngs=nnx.Rngs(0)))
  parameters = sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  # torchvision's ResNet-50 without its classifier (23,508,032) plus the embedding layer.
  assert parameters == 23_508_032 + 2048 * config.model.embedding_dim + \
      config.model.embedding_dim
