"""Using a trained run: load its embedder, embed, index and search, export; bad input.

One tiny digits run (two epochs, two checkpoints) serves every test of this module.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import numpy as np
import pytest
from PIL import Image

from tests import subprocesses
from tests.app.runs import tiny_config
from tripletjax.app import errors
from tripletjax.app.evaluation import search as search_lib
from tripletjax.app.loop import train
from tripletjax.app.outputs import reports
from tripletjax.app.tasks import labelled
from tripletjax.app.inference import export
from tripletjax.app.inference import index as index_lib
from tripletjax.app.inference import load_embedder
from tripletjax.app.inference import sources
from tripletjax.app.inference.embedder import read_run_config
from tripletjax import embed as embed_command
from tripletjax import search as search_command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A digits run of 2 epochs of 4 steps; its final evaluation's eval.json and embeddings."""
  workdir = str(tmp_path_factory.mktemp("inference") / "run")
  config = tiny_config(**{"data.max_train": 256, "export.pca_every_eval": False,
                          "loss.name": "hard"})
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def embedder(run_dir):
  return load_embedder(run_dir)


@pytest.fixture(scope="module")
def test_split(embedder):
  dataset = labelled.load_labelled_data(embedder.config)
  return dataset.test


def test_loaded_embedder_reproduces_the_final_evaluation_bit_for_bit(run_dir, embedder,
                                                                     test_split):
  final = np.load(os.path.join(run_dir, reports.TEST_EMBEDDINGS_FILE))
  embeddings = embedder(test_split.images)
  assert embeddings.dtype == np.float32 and embeddings.shape == (200, 16)
  np.testing.assert_array_equal(embeddings, final["embeddings"])
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
  # Batched differently (padded chunks of 64), one image alone: the same embeddings.
  small = load_embedder(run_dir, batch_size=64)
  np.testing.assert_allclose(small(test_split.images), embeddings, atol=1e-6)
  np.testing.assert_allclose(embedder(test_split.images[7]), embeddings[7:8], atol=1e-6)


def test_a_given_step_restores_that_checkpoint(run_dir, embedder, test_split):
  steps = sorted(int(name) for name in os.listdir(os.path.join(run_dir, "checkpoints"))
                 if name.isdigit())
  assert embedder.step == steps[-1] and len(steps) == 2
  first = load_embedder(run_dir, step=steps[0])
  assert first.step == steps[0]
  assert not np.allclose(first(test_split.images[:8]), embedder(test_split.images[:8]))
  with pytest.raises(errors.WorkdirError, match=r"--step=999: .* no checkpoint of that step"):
    load_embedder(run_dir, step=999)


def test_image_files_are_decoded_into_the_training_layout(embedder, tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
  paths = []
  for i, image in enumerate(pixels):
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(image).save(paths[-1])
  # An RGB file is converted to the run's grey channel, as the evaluation converts it.
  Image.fromarray(np.repeat(pixels[0][..., None], 3, axis=2)).save(tmp_path / "rgb.png")
  arrays = pixels[..., None].astype(np.float32) * np.float32(1 / 255)
  np.testing.assert_array_equal(embedder.embed(paths), embedder(arrays))
  np.testing.assert_array_equal(embedder.embed([str(tmp_path / "rgb.png")]), embedder(arrays[:1]))


def test_search_gives_the_evaluation_neighbours_and_precision(run_dir, embedder, test_split):
  test = sources.test_set(embedder.config)
  index = index_lib.build_index(embedder, test.gallery, "test")
  everything = np.arange(len(index))
  neighbours = index.search(index.embeddings, 4, everything, backend="numpy")
  unit = search_lib.l2_normalize(index.embeddings)
  ((_, expected),) = list(search_lib.neighbour_chunks(
      unit, unit, np.full(len(index), 4), leave_one_out=True, chunk_size=1000))
  np.testing.assert_array_equal(neighbours.ids, expected)
  faiss_neighbours = index.search(index.embeddings, 4, everything, backend="faiss")
  np.testing.assert_array_equal(faiss_neighbours.ids, expected)
  np.testing.assert_allclose(neighbours.similarities[:, 0],
                             np.sum(unit * unit[expected[:, 0]], axis=1), atol=1e-6)
  value, count = index_lib.precision_at_1(index.labels, index.labels, neighbours, everything)
  with open(os.path.join(run_dir, "eval.json")) as f:
    assert value == json.load(f)["precision_at_1"] and count == len(test_split.labels)
  test.close()


def test_search_command_prints_draws_and_reuses_its_index(run_dir, tmp_path, capsys):
  out = str(tmp_path / "picture.png")
  search_command.run(["--workdir", run_dir, "--query", "test:0", "test:1", "test:2", "--k",
                      "3", "--out", out, "--pair", "test:0", "test:1"])
  printed = capsys.readouterr().out
  assert printed.count("query ") == 3 and "similarity " in printed
  assert "precision@1 of these queries" in printed
  assert os.path.getsize(out) > 0
  with open(str(tmp_path / "picture.tsv")) as f:
    assert len(f.read().splitlines()) == 1 + 3 * 3
  saved = index_lib.Index.load(os.path.join(run_dir, "index", "test.npz"))
  assert saved.meta["gallery"] == "test" and len(saved) == 200
  search_command.run(["--workdir", run_dir, "--query", "test:all", "--k", "1", "--out", out])
  printed = capsys.readouterr().out
  assert "Index " in printed and "Embedding the gallery" not in printed  # Reused.
  with open(os.path.join(run_dir, "eval.json")) as f:
    expected = json.load(f)["precision_at_1"]
  assert f"precision@1 of these queries: {expected:.6f} over 200" in printed


def test_embed_command_writes_npz_and_projector_tsv(run_dir, tmp_path):
  folder = tmp_path / "images"
  for name in ("cats", "dogs"):
    (folder / name).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((12, 10), 40 * i, np.uint8)).save(folder / name / f"{i}.png")
  embed_command.run(["--workdir", run_dir, "--images", f"folder:{folder}", "--out",
                     str(tmp_path / "e.npz")])
  with np.load(tmp_path / "e.npz") as content:
    assert content["embeddings"].shape == (6, 16)
    assert list(content["class_names"]) == ["cats", "dogs"]
    assert list(content["labels"]) == [0, 0, 0, 1, 1, 1]
    assert json.loads(str(content["run"]))["step"] == 8
  embed_command.run(["--workdir", run_dir, "--images", str(folder / "cats" / "0.png"), "--out",
                     str(tmp_path / "e.tsv")])
  assert np.loadtxt(tmp_path / "e.tsv").shape == (16,)
  assert (tmp_path / "e.meta.tsv").read_text().splitlines()[0] == "name\tclass"


def test_export_runs_without_flax_or_tripletjax(embedder, tmp_path):
  path = str(tmp_path / "embedder.jax")
  meta = export.export_embedder(embedder, path)
  assert meta["input"]["shape"] == ["batch", 8, 8, 1] and "cpu" in meta["platforms"]
  images = np.random.default_rng(1).uniform(size=(5, 8, 8, 1)).astype(np.float32)
  np.save(tmp_path / "images.npy", images)
  np.save(tmp_path / "expected.npy", embedder(images))
  # The loader of the metadata, in a process where flax and tripletjax cannot be imported.
  script = textwrap.dedent(f"""
      import sys
      class Block:
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] in ("flax", "tripletjax", "optax", "orbax", "tensorflow"):
            raise ImportError("blocked: " + name)
      sys.meta_path.insert(0, Block())
      for blocked in ("flax", "tripletjax"):
        try:
          __import__(blocked)
          raise SystemExit(blocked + " could be imported")
        except ImportError:
          pass
      import os
      os.chdir({str(tmp_path)!r})
      images = __import__("numpy").load("images.npy")
  """) + meta["loader"] + textwrap.dedent("""
      import numpy
      difference = numpy.abs(embeddings - numpy.load("expected.npy")).max()
      assert embeddings.shape == (5, 16) and difference <= 1e-6, difference
      print("ok", difference, sorted(m for m in sys.modules if m.split(".")[0] == "flax"))
  """)
  result = subprocesses.run_python("-c", script)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith("ok") and result.stdout.strip().endswith("[]")


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_one_error_line_and_exit_status_2(tmp_path):
  (tmp_path / "empty").mkdir()
  for command, extra in (("search", ["--query", "test:0"]),
                         ("embed", ["--images", "x.png", "--out", "e.npz"]),
                         ("export", [])):
    result = subprocesses.run_python("-m", f"tripletjax.{command}", "--workdir",
                                     str(tmp_path / "empty"), *extra)
    line, _ = subprocesses.user_error_lines(result)
    assert "not a training run" in line, (command, line)
  result = subprocesses.run_python("-m", "tripletjax.search", "--workdir", "x", "--k", "zero")
  line, hint = subprocesses.user_error_lines(result)
  assert "--k: invalid int value" in line and "--help" in hint


def test_unreadable_checkpoint_is_a_user_error(run_dir, tmp_path):
  copy = str(tmp_path / "run")
  shutil.copytree(run_dir, copy)
  latest = max(int(n) for n in os.listdir(os.path.join(copy, "checkpoints")) if n.isdigit())
  for root, _, files in os.walk(os.path.join(copy, "checkpoints", str(latest))):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"not a checkpoint")
  with pytest.raises(errors.WorkdirError, match=rf"checkpoint .*/{latest} cannot be read"):
    load_embedder(copy)
  assert os.path.isdir(os.path.join(copy, "checkpoints", str(latest)))  # Nothing moved.
  with pytest.raises(errors.WorkdirError, match="not a training run"):
    read_run_config(str(tmp_path))


def test_images_of_the_wrong_shape_and_empty_folders_are_user_errors(embedder, tmp_path):
  for shape in ((2, 9, 8, 1), (2, 8, 8, 3), (8, 8)):
    with pytest.raises(errors.DataError, match=r"this run's model takes float32 \[N, 8, 8, 1\]"):
      embedder(np.zeros(shape, np.float32))
  np.save(tmp_path / "wrong.npy", np.zeros((2, 28, 28, 1), np.float32))
  with pytest.raises(errors.DataError, match="takes float32"):
    sources.read_images(embedder, [str(tmp_path / "wrong.npy")])
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.DataError, match="no image file in it"):
    sources.read_images(embedder, [f"folder:{tmp_path / 'empty'}"])
  with pytest.raises(errors.DataNotFoundError, match="no such file"):
    sources.read_images(embedder, [str(tmp_path / "missing.png")])
  (tmp_path / "broken.png").write_bytes(b"not an image")
  with pytest.raises(errors.DataError, match="cannot read this image"):
    embedder.embed([str(tmp_path / "broken.png")])
  with pytest.raises(errors.DataError, match="test:0 to test:199"):
    sources.test_indices(["test:200"], 200)


def test_a_query_file_in_a_folder_gallery_is_left_out_of_its_own_neighbours(run_dir, tmp_path,
                                                                           capsys):
  folder = tmp_path / "gallery"
  pixels = np.random.default_rng(2).integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
  for i, image in enumerate(pixels):
    (folder / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "ab"[i % 2] / f"{i}.png")
  query = folder / "a" / "0.png"
  search_command.run(["--workdir", run_dir, "--gallery", f"folder:{folder}", "--query",
                      os.path.relpath(query), "--k", "5", "--out", str(tmp_path / "p.png")])
  printed = capsys.readouterr().out
  assert f"query 1: {query} (class a)" in printed
  neighbours = [line.split()[-1] for line in printed.splitlines() if line.startswith("  ")]
  assert len(neighbours) == 5 and str(query) not in neighbours
  assert "eval.json" not in printed  # Not the run's test set: nothing to compare with.
