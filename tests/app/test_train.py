"""End-to-end tests of the training application on the embedded digits data."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from tripletjax.app.config import defaults
from tripletjax.app import train
from tripletjax.app import parallel
from tripletjax.app import train_step
from tripletjax.app.config import checks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  config = defaults.get_config()
  config.data.name = "digits"
  config.data.max_train = 400
  config.data.max_test = 200
  config.model.name = "tfa_cnn"
  config.model.embedding_dim = 16
  config.batch.batch_size = 64
  config.num_epochs = 2
  config.log_every_steps = 2
  config.quiet = True
  config.export.projector_max_points = 100
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    target = config
    for part in filter(None, section.split(".")):
      target = target[part]
    target[name] = value
  return config


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_end_to_end_writes_every_export_and_compares_sibling_runs(tmp_path):
  # A batch-hard run beside it: the semi-hard run's report must show both curves.
  train.train_and_evaluate(tiny_config(num_epochs=1, **{"loss.name": "hard"}),
                           str(tmp_path / "digits-hard"))
  workdir = tmp_path / "digits-semihard"
  final = train.train_and_evaluate(tiny_config(), str(workdir))
  report = (workdir / "report.md").read_text()
  assert "digits-semihard" in report and "digits-hard" in report
  assert "missing" not in report and "pca_2d_epoch002.png" in report
  for name in ["eval.json", "report.md", "metrics.jsonl", "eval.jsonl", "config.json",
               "projector/vecs.tsv", "projector/meta.tsv", "projector/sprite.png",
               "projector/projector_config.pbtxt", "plots/training_curves.png",
               "plots/eval_history.png", "plots/pca_2d_epoch002.png", "plots/pca_3d_epoch002.png"]:
    assert (workdir / name).exists(), name
  assert list((workdir / "tensorboard").iterdir()), "no TensorBoard event file"
  saved = json.loads((workdir / "eval.json").read_text())
  for key in ["precision_at_1", "recall_at_k", "r_precision", "map_at_r", "nmi",
              "knn_accuracy", "verification_auc"]:
    assert key in saved
    assert key in final
  # Two epochs on 400 digits already beat chance (0.1) by far.
  assert saved["precision_at_1"] > 0.5
  # Time to accuracy: the training time (steps only), also in every evaluation record.
  evaluations = read_jsonl(workdir / "eval.jsonl")
  assert 0 < evaluations[0]["train_seconds"] <= evaluations[-1]["train_seconds"]
  assert saved["train_seconds"] == pytest.approx(evaluations[-1]["train_seconds"])
  records = read_jsonl(workdir / "metrics.jsonl")
  assert [r["step"] for r in records] == list(range(2, 2 * (400 // 64) + 1, 2))
  for record in records:
    assert np.isfinite(record["loss"]) and 0.0 <= record["fraction_active"] <= 1.0
    assert record["embedding_norm"] > 0
  # The training curves plot this run's logged losses, point for point (the CSV beside them).
  with open(workdir / "plots" / "training_curves.csv", newline="") as curves:
    plotted = [(float(row["x"]), float(row["y"])) for row in csv.DictReader(curves)
               if row["panel"] == "loss" and row["series"] == "digits-semihard"]
  assert plotted == [(record["step"], record["loss"]) for record in records]
  vecs = (workdir / "projector" / "vecs.tsv").read_text().strip().splitlines()
  assert len(vecs) == 100 and len(vecs[0].split("\t")) == 16


@pytest.mark.slow
def test_resume_continues_the_same_curve(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Relative workdirs, as on the command line.
  tmp_path = tmp_path.relative_to(tmp_path)
  config = tiny_config(num_epochs=3)
  full = tmp_path / "full"
  train.train_and_evaluate(config, str(full))

  # Interrupted after one epoch: same config with one epoch, then the full run in the same
  # workdir resumes from its checkpoint. A crashed run also leaves log lines past the last
  # checkpoint (and maybe a truncated one): they must be dropped on resume.
  partial = tmp_path / "partial"
  train.train_and_evaluate(tiny_config(num_epochs=1), str(partial))
  with open(partial / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 999, "loss": 123.0}) + "\n" + '{"step": 1000, "lo')
  resumed = train.train_and_evaluate(config, str(partial))

  expected = read_jsonl(full / "metrics.jsonl")
  got = read_jsonl(partial / "metrics.jsonl")
  assert [r["step"] for r in got] == [r["step"] for r in expected]
  np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in expected],
                             rtol=1e-5)
  final = json.loads((full / "eval.json").read_text())
  assert resumed["precision_at_1"] == pytest.approx(final["precision_at_1"], abs=1e-6)


@pytest.mark.parametrize("key, value, message", [
    ("loss.name", "semi_hard", "loss.name"),
    ("model.name", "vgg", "model.name"),
    ("optimizer.name", "lamb", "optimizer.name"),
    ("batch.sampler", "random", "batch.sampler"),
    ("loss.margin", -0.1, "margin"),
    ("data.augment", "rotate", "data.augment"),
])
def test_bad_config_values_are_named(key, value, message):
  with pytest.raises(ValueError, match=message):
    checks.check_config(tiny_config(**{key: value}))


def test_config_override_typo_is_an_error():
  # The command line goes through ml_collections' config flags: an unknown key fails.
  result = subprocess.run(
      [sys.executable, "-m", "tripletjax.main", "--config=configs/digits.py",
       "--config.loss.margn=0.2", "--workdir=/nonexistent/never-written"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "margn" in result.stderr


def load_config_module(name: str):
  """The module configs/<name>.py (as main.py's --config flag loads it)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_config_file_loads():
  for name in ["digits", "fashion_mnist", "mnist"]:
    module = load_config_module(name)
    checks.check_config(module.get_config())
    assert module.__doc__ and "python -m tripletjax.main" in module.__doc__


def test_shard_batch_places_the_global_batch():
  mesh = parallel.make_mesh()
  images = np.arange(8 * 4, dtype=np.float32).reshape(8, 2, 2, 1)
  labels = np.arange(8, dtype=np.int32)
  sharded_images, sharded_labels = parallel.shard_batch(mesh, images, labels)
  np.testing.assert_array_equal(np.asarray(sharded_images), images)
  np.testing.assert_array_equal(np.asarray(sharded_labels), labels)
  assert sharded_images.sharding.spec[0] == "data"
  # Every device of the mesh holds its contiguous slice of the rows, and only that slice
  # (four devices: tests/test_sharding.py).
  assert sharded_images.sharding.device_set == set(mesh.devices.flat)
  rows_per_device = 8 // mesh.devices.size
  for array, local in ((sharded_images, images), (sharded_labels, labels)):
    for shard in array.addressable_shards:
      position = list(mesh.devices.flat).index(shard.device)
      assert shard.index[0].indices(8)[:2] == (position * rows_per_device,
                                               (position + 1) * rows_per_device)
      np.testing.assert_array_equal(np.asarray(shard.data), local[shard.index])


@pytest.mark.slow
def test_fashion_mnist_smoke(tmp_path, fashion_mnist_dir):
  del fashion_mnist_dir  # The config reads it.
  # configs/fashion_mnist.py as committed (BatchNorm CNN, forward chunks, ...), on a subset.
  config = load_config_module("fashion_mnist").get_config()
  config.data.max_train, config.data.max_test, config.num_epochs = 512, 256, 1
  config.batch.batch_size, config.quiet = 128, True
  final = train.train_and_evaluate(config, str(tmp_path / "fashion"))
  assert final["dataset"] == "fashion_mnist"
  assert 0.3 < final["precision_at_1"] <= 1.0  # One short epoch: well above chance (0.1).
  assert (tmp_path / "fashion" / "projector" / "sprite.png").exists()


@pytest.mark.slow
def test_main_trains_on_several_cpu_devices(tmp_path):
  # The default on a CPU machine: one JAX device per core, the batch split between them and
  # the loss mined over the whole batch. (Host callbacks deadlock XLA:CPU collectives, so this
  # also checks that the trainer mines with lax.sort here.)
  result = subprocess.run(
      [sys.executable, "-m", "tripletjax.main", "--config=configs/digits.py", "--cpu_devices=2",
       "--config.num_epochs=2", "--config.eval_every_epochs=1", "--config.quiet=True",
       "--config.data.augment=flip_shift", "--config.model.forward_chunks=2",
       f"--workdir={tmp_path / 'run'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "on 2 cpu device(s)" in result.stdout
  final = json.loads((tmp_path / "run" / "eval.json").read_text())
  assert 0.5 < final["precision_at_1"] <= 1.0  # Two epochs: far above chance (0.1).


def test_model_options_pass_only_what_is_set():
  config = tiny_config()
  assert train_step.model_options(config.model) == {}
  config.model.width = 8
  config.model.dropout_rate = 0.0
  config.model.batch_norm = True
  assert train_step.model_options(config.model) == {"width": 8, "dropout_rate": 0.0,
                                               "batch_norm": True}


def test_apply_in_chunks_matches_one_pass():
  # The model on K chunks of the batch, outputs back in row order: the same as one pass.
  from flax import nnx
  from tripletjax.app import models
  model = models.create_model("hsu_cnn", input_shape=(8, 8, 1), embedding_dim=8,
                              rngs=nnx.Rngs(params=0, dropout=1), dropout_rate=0.0)
  images = np.random.default_rng(0).random((24, 8, 8, 1), dtype=np.float32)
  whole = model(images)
  for num_chunks in (2, 3, 4):
    chunked = parallel.apply_in_chunks(model, images, num_chunks)
    np.testing.assert_allclose(np.asarray(chunked.embeddings), np.asarray(whole.embeddings),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(chunked.norms), np.asarray(whole.norms), rtol=1e-5)
  with pytest.raises(ValueError, match="forward_chunks"):
    checks.check_config(tiny_config(**{"model.forward_chunks": 5}))  # 64 % 5 != 0
