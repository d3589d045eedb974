"""The pair source: pair folders and CSVs, their errors, the split and the seeded triplets."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from PIL import Image

from tripletjax.app import errors
from tripletjax.app.data import images
from tripletjax.app.data import pairs


def _write_image(path, seed: int, size=(12, 10), fmt=None) -> str:
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path, format=fmt)
  return str(path)


def _pair_folder(root, names, right_names=None, extension=".png"):
  for side, side_names in (("left", names), ("right", right_names or names)):
    os.makedirs(root / side, exist_ok=True)
    for index, name in enumerate(side_names):
      _write_image(root / side / f"{name}{extension}", seed=index + (side == "right") * 100)
  return str(root)


def test_a_pair_folder_matches_names_across_extensions_and_ignores_other_files(tmp_path):
  root = tmp_path / "pairs"
  _pair_folder(root, ["b", "a", "c"])
  os.rename(root / "right" / "b.png", root / "right" / "b.jpg")
  (root / "left" / "notes.txt").write_text("not an image")
  (root / "right" / ".DS_Store").write_bytes(b"\0")
  found = pairs.read_pair_folder(str(root))
  assert list(found.names) == ["a", "b", "c"]
  assert [os.path.basename(p) for p in found.left] == ["a.png", "b.png", "c.png"]
  assert [os.path.basename(p) for p in found.right] == ["a.png", "b.jpg", "c.png"]
  assert list(found.paths) == list(found.left) + list(found.right)


def test_mismatched_names_are_reported_by_name(tmp_path):
  root = _pair_folder(tmp_path / "pairs", ["a", "b", "c"], ["a", "b", "d"])
  with pytest.raises(errors.DataError) as raised:
    pairs.read_pair_folder(root)
  message = str(raised.value)
  assert "1 only in left/ (c)" in message and "1 only in right/ (d)" in message


def test_empty_and_missing_folders_are_user_errors(tmp_path):
  with pytest.raises(errors.DataNotFoundError, match="no such folder"):
    pairs.read_pair_folder(str(tmp_path / "absent"))
  (tmp_path / "empty" / "left").mkdir(parents=True)
  (tmp_path / "empty" / "right").mkdir()
  (tmp_path / "empty" / "left" / "readme.txt").write_text("x")
  with pytest.raises(errors.DataError, match="no image files in left/ or right/"):
    pairs.read_pair_folder(str(tmp_path / "empty"))
  (tmp_path / "one_side" / "left").mkdir(parents=True)
  with pytest.raises(errors.DataNotFoundError, match=r"one_side/right: no such folder"):
    pairs.read_pair_folder(str(tmp_path / "one_side"))


def test_a_csv_of_pairs_with_header_relative_paths_and_its_errors(tmp_path):
  for name in ("x", "y", "z", "w"):
    _write_image(tmp_path / f"{name}.png", seed=len(name))
  (tmp_path / "pairs.csv").write_text("left,right\nx.png,y.png\n\nz.png, w.png\n")
  found = pairs.read_pairs(str(tmp_path / "pairs.csv"))
  assert [os.path.basename(p) for p in found.left] == ["x.png", "z.png"]
  assert [os.path.basename(p) for p in found.right] == ["y.png", "w.png"]
  (tmp_path / "bad.csv").write_text("x.png,y.png\nz.png\n")
  with pytest.raises(errors.DataError, match=r"bad.csv:2: expected two columns"):
    pairs.read_pairs(str(tmp_path / "bad.csv"))
  (tmp_path / "missing.csv").write_text("x.png,nowhere.png\n")
  with pytest.raises(errors.DataNotFoundError, match="nowhere.png"):
    pairs.read_pairs(str(tmp_path / "missing.csv"))


def test_a_corrupt_image_is_an_error_naming_its_path_or_is_skipped_and_counted(tmp_path):
  root = _pair_folder(tmp_path / "pairs", ["a", "b", "c", "d"])
  corrupt = tmp_path / "pairs" / "right" / "c.png"
  corrupt.write_bytes(corrupt.read_bytes()[:40])  # Truncated.
  (tmp_path / "pairs" / "left" / "d.png").write_text("this is text, not a PNG")
  found = pairs.read_pair_folder(root)
  transform = images.EvalTransform(8)
  with images.ImageDecoder(3, 1, "error") as decoder:
    with pytest.raises(images.UnreadableImageError, match=r"right/c\.png: cannot read"):
      decoder.decode([found.left[0], found.right[2]], transform)
    with pytest.raises(images.UnreadableImageError, match=r"left/d\.png: cannot read"):
      decoder.decode([found.left[3]], transform)
  with pytest.warns(UserWarning, match="skipping unreadable image"):
    with images.ImageDecoder(3, 1, "skip") as decoder:
      _, readable = decoder.decode(list(found.paths), transform)
  assert sorted(os.path.basename(p) for p in decoder.unreadable) == ["c.png", "d.png"]
  assert readable.tolist() == [True, True, True, False, True, True, False, True]


def test_split_is_seeded_disjoint_and_keeps_two_pairs_on_each_side():
  train, validation = pairs.split_pairs(50, 0.2, seed=3)
  assert len(validation) == 10 and len(train) == 40
  assert not set(train) & set(validation) and set(train) | set(validation) == set(range(50))
  again = pairs.split_pairs(50, 0.2, seed=3)
  assert np.array_equal(again[0], train) and np.array_equal(again[1], validation)
  assert not np.array_equal(pairs.split_pairs(50, 0.2, seed=4)[1], validation)
  small_train, small_validation = pairs.split_pairs(5, 0.01, seed=0)
  assert len(small_validation) == 2 and len(small_train) == 3
  with pytest.raises(errors.DataError, match="at least 4"):
    pairs.split_pairs(3, 0.5, seed=0)


def test_triplets_pair_each_left_with_its_right_and_a_negative_of_another_pair():
  num_pairs = 30
  train = np.arange(0, 30, 2)  # 15 training pairs.
  sampler = pairs.TripletBatches(train, num_pairs, batch_size=4, seed=7)
  assert sampler.steps_per_epoch == 3
  negative_sides = []
  for epoch in range(20):
    seen = []
    for batch in sampler.epoch(epoch):
      anchors, positives, negatives = np.split(batch, 3)
      assert np.array_equal(positives, anchors + num_pairs)
      negative_pairs = negatives % num_pairs
      assert np.all(negative_pairs != anchors), "a negative from the anchor's own pair"
      assert np.all(np.isin(negative_pairs, train)), "a negative outside the training pairs"
      negative_sides += list(negatives >= num_pairs)
      seen += list(anchors)
    assert len(set(seen)) == len(seen) == 12 and set(seen) <= set(train)
  assert 0.35 < np.mean(negative_sides) < 0.65  # Both sides are drawn.


def test_an_epochs_triplets_depend_only_on_seed_and_epoch():
  sampler = pairs.TripletBatches(np.arange(40), 40, batch_size=8, seed=1)
  first = [b.copy() for b in sampler.epoch(3)]
  list(sampler.epoch(0))  # Drawing other epochs in between changes nothing.
  assert all(np.array_equal(a, b) for a, b in zip(first, sampler.epoch(3)))
  # Resuming mid-epoch (the loop skips the done steps) gives the rest of the same epoch.
  rest = list(itertools.islice(sampler.epoch(3), 2, None))
  assert all(np.array_equal(a, b) for a, b in zip(first[2:], rest))
  assert not np.array_equal(first[0], next(iter(sampler.epoch(4))))
  other_seed = pairs.TripletBatches(np.arange(40), 40, batch_size=8, seed=2)
  assert not np.array_equal(first[0], next(iter(other_seed.epoch(3))))


def test_validation_triplets_are_fixed_and_stay_within_the_validation_pairs():
  validation = np.array([3, 5, 8, 13])
  triplets = pairs.validation_triplets(validation, 20, seed=0)
  assert np.array_equal(triplets, pairs.validation_triplets(validation, 20, seed=0))
  assert np.array_equal(triplets[:, 0], validation)
  assert np.array_equal(triplets[:, 1], validation + 20)
  assert np.all(triplets[:, 2] % 20 != validation)
  assert np.all(np.isin(triplets[:, 2] % 20, validation))


def test_a_pair_with_the_same_file_on_both_sides_is_an_error(tmp_path):
  _write_image(tmp_path / "x.png", 0)
  _write_image(tmp_path / "y.png", 1)
  (tmp_path / "pairs.csv").write_text("x.png,x.png\ny.png,x.png\n")
  with pytest.raises(errors.DataError, match="same file on both sides"):
    pairs.check_pairs(pairs.read_pairs(str(tmp_path / "pairs.csv")))


def test_batch_size_larger_than_the_training_pairs_is_a_config_error():
  with pytest.raises(errors.ConfigError, match=r"batch_size=9: must be in \[1, 8\]"):
    pairs.TripletBatches(np.arange(8), 10, batch_size=9, seed=0)
