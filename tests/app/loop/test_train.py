"""The training loop end to end on the embedded digits data (and Fashion-MNIST): exports,
reports, non-finite steps.

Stopping and resuming the loop: `tests/app/loop/test_train_resume.py`.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from tests.app.runs import load_config_module, read_jsonl, tiny_config
from tripletjax.app.data import augmentations
from tripletjax.app.loop import train


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
def test_nonfinite_step_stops_the_run_or_is_skipped(tmp_path, monkeypatch):
  # A NaN pixel in the batches of two chosen steps (global steps 4 and 8, 6 steps per epoch).
  bad_steps = {(0, 3), (1, 1)}
  augment = augmentations.augment

  def poisoned(images, kind, *, seed, epoch, step, **kwargs):
    images = augment(images, kind, seed=seed, epoch=epoch, step=step, **kwargs).copy()
    if (epoch, step) in bad_steps:
      images[0, 0, 0, 0] = np.nan
    return images
  monkeypatch.setattr(augmentations, "augment", poisoned)
  config = tiny_config(num_epochs=2, **{"export.pca_every_eval": False})
  with pytest.raises(train.NonFiniteStep, match="training step 4 .*non-finite"):
    train.train_and_evaluate(config, str(tmp_path / "stop"))
  assert not os.listdir(tmp_path / "stop" / "checkpoints")  # Nothing after a bad step.

  # With skip_nonfinite the run skips those two steps, counts them and stays finite.
  config.optimizer.skip_nonfinite = True
  final = train.train_and_evaluate(config, str(tmp_path / "skip"))
  assert final["skipped_steps"] == 2
  assert np.isfinite(final["precision_at_1"]) and final["precision_at_1"] > 0.3
  records = read_jsonl(tmp_path / "skip" / "metrics.jsonl")
  assert [r["skipped_steps"] for r in records] == [0, 1, 1, 2, 2, 2]  # Logged every 2 steps.
