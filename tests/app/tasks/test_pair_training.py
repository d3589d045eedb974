"""The pair (Siamese) workflow end to end, through the one training loop: a short run on a
generated pair folder of real PNG/JPEG files beats chance and writes its exports; a run stopped
mid-epoch resumes identically; unreadable images stop the run with their path or are skipped
and counted; config mistakes are one-line errors."""

from __future__ import annotations

import json
import os
import shutil

import ml_collections
import pytest
from PIL import Image

from tests.subprocesses import REPO
from tripletjax.app import errors
from tripletjax.app import tasks
from tripletjax.app.config import defaults
from tripletjax.app.data import pair_demo
from tripletjax.app.data import pairs
from tripletjax.app.loop import checks
from tripletjax.app.loop import preemption
from tripletjax.app.loop import train
from tests.app.loop.test_train_resume import assert_same_run, count_train_steps, stop_after

NUM_PAIRS = 240


@pytest.fixture(scope="module")
def pair_folder(tmp_path_factory) -> str:
  """Two "photos" (a JPEG and a PNG, of several sizes) of each of 240 scikit-learn digits."""
  return pair_demo.build_pair_demo(str(tmp_path_factory.mktemp("data") / "pairs"), "digits",
                                   num_pairs=NUM_PAIRS, seed=0)


def pair_config(folder: str, **overrides) -> ml_collections.ConfigDict:
  config = defaults.get_config()
  config.data.name = f"pairs:{folder}"
  config.data.validation_fraction = 0.25
  config.data.image_size = 16
  config.data.eval_resize = 16
  config.data.decode_workers = 2
  config.loss.name = "triplet"
  config.model.name = "tfa_cnn"
  config.model.embedding_dim = 32
  config.batch.batch_size = 16
  config.optimizer.learning_rate = 2e-3
  config.num_epochs = 3
  config.log_every_steps = 4
  config.quiet = True
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    target = config
    for part in filter(None, section.split(".")):
      target = target[part]
    target[name] = value
  return config


def run_config(folder: str) -> ml_collections.ConfigDict:
  """3 epochs of 11 steps, with random crops and flips (seeded per image, epoch and step)."""
  return pair_config(folder, **{"data.augment": "crop_flip"})


@pytest.fixture(scope="module")
def full_run(pair_folder, tmp_path_factory):
  """An uninterrupted run of `run_config`: (workdir, final metrics)."""
  workdir = tmp_path_factory.mktemp("runs") / "full"
  return workdir, train.train_and_evaluate(run_config(pair_folder), str(workdir))


@pytest.mark.slow
def test_a_short_pair_run_beats_chance_and_writes_its_exports(full_run):
  workdir, final = full_run
  saved = json.loads((workdir / "eval.json").read_text())
  assert saved["num_validation_pairs"] == 60
  # Chance is 0.5 (a random embedding puts the negative nearer half of the time).
  assert saved["triplet_accuracy"] >= 0.75, saved
  assert saved["positive_similarity"] > saved["negative_similarity"] + 0.1
  assert set(saved["recall_at_k"]) == {"1", "5", "10"}
  # Retrieval of the right image among 60 beats chance (1/60 at k = 1, 1/6 at k = 10).
  assert saved["recall_at_k"]["10"] > 0.3
  assert final["triplet_accuracy"] == saved["triplet_accuracy"]
  for name in ["report.md", "metrics.jsonl", "eval.jsonl", "projector/vecs.tsv",
               "projector/meta.tsv", "plots/retrieval_examples.csv"]:
    assert (workdir / name).exists(), name
  for name in ["projector/sprite.png", "plots/retrieval_examples.png",
               "plots/training_curves.png", "plots/eval_history.png"]:
    with Image.open(workdir / name) as image:
      assert image.format == "PNG" and min(image.size) > 100, (name, image.size)
  assert len((workdir / "projector" / "vecs.tsv").read_text().splitlines()) == 120
  # The retrieval picture's data: 6 queries x 5 ranks, a 1 where the match was retrieved.
  rows = (workdir / "plots" / "retrieval_examples.csv").read_text().splitlines()[1:]
  assert len(rows) == 30 and {row.split(",")[3] for row in rows} <= {"0", "1"}
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"loss", "triplet_accuracy", "fraction_active"} <= set(records[0])
  assert "retrieval_examples" in (workdir / "report.md").read_text()


@pytest.mark.slow
def test_a_pair_run_stopped_mid_epoch_resumes_identically(full_run, pair_folder, tmp_path,
                                                         monkeypatch):
  steps_per_epoch = (NUM_PAIRS - 60) // 16
  total = 3 * steps_per_epoch
  stop_after(monkeypatch, steps_per_epoch + 5)  # Inside the second epoch, between log points.
  with pytest.raises(preemption.Interrupted):
    train.train_and_evaluate(run_config(pair_folder), str(tmp_path / "stopped"))
  monkeypatch.undo()
  executed = count_train_steps(monkeypatch)
  train.train_and_evaluate(run_config(pair_folder), str(tmp_path / "stopped"))
  assert len(executed) == total - steps_per_epoch - 5
  assert_same_run(full_run[0], tmp_path / "stopped")


def _folder_with_unreadable_images(pair_folder, tmp_path) -> str:
  """The pair folder with the right image of a validation pair truncated and the left image of
  a training pair (one of the first 96) replaced by text."""
  folder = str(tmp_path / "pairs")
  shutil.copytree(pair_folder, folder)
  train_pairs, validation_pairs = pairs.split_pairs(NUM_PAIRS, 0.25, seed=0)
  train_pairs = tasks.pairs._subsample(train_pairs, 96, seed=0)
  names = sorted(os.listdir(os.path.join(folder, "right")))
  with open(os.path.join(folder, "right", names[validation_pairs[0]]), "r+b") as f:
    f.truncate(60)  # A truncated PNG.
  left_name = names[train_pairs[0]].replace(".png", ".jpg")
  with open(os.path.join(folder, "left", left_name), "wb") as f:
    f.write(b"not a JPEG at all")
  return folder


@pytest.mark.slow
def test_unreadable_images_are_skipped_and_counted(pair_folder, tmp_path):
  folder = _folder_with_unreadable_images(pair_folder, tmp_path)
  config = pair_config(folder, num_epochs=1, **{"data.unreadable": "skip",
                                                "data.max_train": 96})
  with pytest.warns(UserWarning, match="skipping unreadable image"):
    final = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert final["unreadable_images"] == 2
  # The training image is its pair's anchor once per epoch (and maybe another's negative).
  assert final["replaced_triplets"] >= 1
  # The validation image's triplet is left out (and those where it is the negative).
  assert 2 <= final["num_validation_pairs"] <= 59


def test_an_unreadable_image_stops_the_run_with_a_user_error_naming_it(pair_folder, tmp_path):
  folder = _folder_with_unreadable_images(pair_folder, tmp_path)
  config = pair_config(folder, num_epochs=1, **{"data.max_train": 96})
  with pytest.raises(errors.DataError) as raised:  # main prints it as one line, exit status 2.
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert isinstance(raised.value, errors.UserError)
  message = str(raised.value)
  # The first unreadable file met is the training one (the validation one waits for the
  # evaluation).
  assert message.startswith(os.path.join(folder, "left")) and ": cannot read this image" in message
  assert "unreadable='skip'" in raised.value.hint


def test_pair_config_mistakes_are_config_errors(pair_folder):
  good = pair_config(pair_folder)
  checks.check_config(good, num_devices=1)
  cases = {
      "loss.name": ("semihard", r"config.loss.name='semihard': must be one of 'triplet'"),
      "data.validation_fraction": (0.0, r"validation_fraction=0.0"),
      "data.augment": ("shift", r"must be one of 'crop', 'crop_flip', 'flip', 'none'"),
      "data.unreadable": ("ignore", r"must be one of 'error', 'skip'"),
      "data.name": ("pairs_demo:cifar", r"pairs_demo:digits"),
      "loss.mining_scope": ("local", r"loss 'triplet' has no such option .* leave it at "
                                     r"'global'"),
      "model.resnet.head": ("conv", r"model.resnet.head='conv'"),
      "model.weights": ("/nonexistent/resnet50.pth", r"load into ResNets .* not into 'tfa_cnn'"),
  }
  for key, (value, message) in cases.items():
    config = pair_config(pair_folder, **{key: value})
    with pytest.raises(errors.ConfigError, match=message):
      checks.check_config(config, num_devices=1)
  resnet = pair_config(pair_folder, **{"model.name": "resnet18",
                                       "model.resnet.freeze_before": "stage5"})
  with pytest.raises(errors.ConfigError, match=r"freeze_before='stage5'.*'stage4.block2'") as bad:
    checks.check_config(resnet, num_devices=1)
  assert bad.value.hint.startswith("did you mean 'stage")
  resnet = pair_config(pair_folder, **{"model.name": "resnet18",
                                       "model.weights": "/nonexistent/resnet18.pth"})
  with pytest.raises(errors.ConfigError, match=r"resnet18.pth'.*no such file"):
    checks.check_config(resnet, num_devices=1)


def test_the_siamese_config_and_its_resnet50_preset_pass_the_checks():
  from tests.app.runs import load_config_module
  module = load_config_module("siamese_pairs")
  assert "python -m tripletjax.main --config=configs/siamese_pairs.py" in module.__doc__
  demo = module.get_config()
  checks.check_config(demo, num_devices=2)
  assert (demo.data.name, demo.loss.name, demo.loss.margin) == (
      "pairs_demo:fashion_mnist", "triplet", 0.5)
  seed = module.get_config("resnet50")
  checks.check_config(seed, num_devices=2)
  assert (seed.model.name, seed.data.image_size, seed.model.resnet.freeze_before, seed.model.resnet.head,
          seed.optimizer.learning_rate) == ("resnet50", 224, "stage4.block2", "mlp", 1e-4)
  with pytest.raises(ValueError, match="Unknown preset"):
    module.get_config("resnet51")


def test_searching_a_pair_run_gives_its_recall_and_pair_similarities(full_run, capsys):
  """`python -m tripletjax.search` on a pair run: the validation pairs' left images against
  their right images give the run's recall@1; `--pair` prints a pair's cosine similarity."""
  from tripletjax import search  # pylint: disable=import-outside-toplevel
  workdir, _ = full_run
  with open(workdir / "eval.json") as f:
    final = json.load(f)
  search.run(["--workdir", str(workdir), "--query", "test:all", "--k", "1", "--out",
              str(workdir / "search.png"), "--pair", "test:0", "test:0", "--pair", "test:0",
              "test:1"])
  printed = capsys.readouterr().out
  assert (f"recall@1 of these queries: {final['recall_at_k']['1']:.6f} over "
          f"{final['num_validation_pairs']}") in printed, printed
  similarities = [float(line.split()[1]) for line in printed.splitlines()
                  if line.startswith("similarity ")]
  assert len(similarities) == 2 and similarities[0] > 0.9999
  assert os.path.getsize(workdir / "search.png") > 0
