"""Folder datasets: every layout read into the right splits and labels, and their errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.app.data import image_folders
from tripletjax.app import errors
from tripletjax.app.data import datasets
from tripletjax.app.data import folders
from tripletjax.app.data import images


def load(path, **options):
  image_options = datasets.ImageOptions(size=16, eval_resize=20, workers=2)
  return datasets.load_dataset(f"folder:{path}", image_options=image_options, **options)


def test_class_folders_number_classes_in_sorted_order_and_need_a_class_split(tmp_path):
  names = ["010.Zebra", "002.Albatross", "001.Wren"]
  image_folders.write_class_folders(tmp_path / "images", 3, 2, names=names)
  (tmp_path / "images" / "002.Albatross" / "notes.txt").write_text("not an image")
  nested = tmp_path / "images" / "001.Wren" / "more"
  image_folders.write_class_folders(nested, 1, 1, names=["."])
  index = folders.read_folder(str(tmp_path / "images"))
  assert index.layout == "class_folders"
  assert index.class_names == ("001.Wren", "002.Albatross", "010.Zebra")
  assert sorted(index.labels("all")) == [0, 0, 0, 1, 1, 2, 2]  # The nested image counts.
  assert all(path.endswith((".png", ".jpg")) for path in index.paths("all"))
  with pytest.raises(errors.ConfigError, match="no test split") as caught:
    load(tmp_path / "images")
  assert "class_split='half'" in caught.value.hint
  dataset = load(tmp_path / "images", class_split="half")
  try:
    assert dataset.train.classes.tolist() == [0] and dataset.test.classes.tolist() == [1, 2]
    assert images.is_lazy(dataset.train.images)
    assert dataset.image_shape == (16, 16, 3)
    batch = dataset.test.images[:]
    assert batch.shape == (4, 16, 16, 3) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
  finally:
    dataset.close()


def test_split_folders_keep_their_split_and_share_labels(tmp_path):
  image_folders.write_class_folders(tmp_path / "train", 3, 2, names=["a", "b", "c"])
  image_folders.write_class_folders(tmp_path / "test", 2, 3, names=["b", "d"])
  dataset = load(tmp_path)
  try:
    assert dataset.class_names == ("a", "b", "c", "d")
    assert dataset.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert dataset.test.labels.tolist() == [1, 1, 1, 3, 3, 3]
    assert dataset.unseen_test_classes.tolist() == [3]
  finally:
    dataset.close()


def test_query_gallery_folders(tmp_path):
  for split in ("train", "query", "gallery"):
    image_folders.write_class_folders(tmp_path / split, 2, 2,
                                      names=["x", "y"] if split == "train" else ["u", "v"])
  dataset = load(tmp_path)
  try:
    assert dataset.test.is_query.tolist() == [True] * 4 + [False] * 4
    assert dataset.test.labels.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert dataset.class_names == ("u", "v", "x", "y")
    with pytest.raises(errors.ConfigError, match="query and gallery"):
      load(tmp_path, class_split="half")
  finally:
    dataset.close()


def test_sop_list_files(tmp_path):
  image_folders.write_sop(tmp_path, num_train_classes=3, num_test_classes=2, per_class=2)
  index = folders.read_folder(str(tmp_path))
  assert index.layout == "sop"
  assert index.class_names == ("1", "2", "3", "4", "5")
  assert index.labels("train") == [0, 0, 1, 1, 2, 2]
  assert index.labels("test") == [3, 3, 4, 4]
  assert all(os.path.exists(path) for path in index.paths("train") + index.paths("test"))


def test_sop_class_ids_sort_numerically(tmp_path):
  image_folders.write_sop(tmp_path, num_train_classes=9, num_test_classes=3, per_class=1)
  index = folders.read_folder(str(tmp_path))
  assert index.class_names[:3] == ("1", "2", "3") and index.class_names[-3:] == ("10", "11", "12")


def test_inshop_partition_file(tmp_path):
  image_folders.write_inshop(tmp_path, num_train_items=2, num_test_items=2, per_item=4)
  dataset = load(tmp_path)
  try:
    assert dataset.train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert dataset.test.is_query.sum() == 4 and (~dataset.test.is_query).sum() == 4
    assert set(dataset.test.labels.tolist()) == {2, 3}
    assert dataset.class_names[0] == "id_00000001"
  finally:
    dataset.close()


def test_cars_annotations(tmp_path):
  image_folders.write_cars(tmp_path, num_classes=4, per_class=2)
  index = folders.read_folder(str(tmp_path))
  assert index.layout == "cars"
  assert index.class_names[0] == "1 Make 1 Model 2012"
  assert index.labels("train") == [0, 1, 2, 3] and index.labels("test") == [0, 1, 2, 3]
  dataset = load(tmp_path, class_split="half")
  try:
    # The protocol pools the official image split and splits by class: 1-2 / 3-4.
    assert sorted(dataset.train.labels.tolist()) == [0, 0, 1, 1]
    assert sorted(dataset.test.labels.tolist()) == [2, 2, 3, 3]
  finally:
    dataset.close()


def test_csv_list(tmp_path):
  list_file = image_folders.write_csv(tmp_path, num_classes=3, per_class=4)
  dataset = load(list_file)
  try:
    assert dataset.class_names == ("class 0", "class 1", "class 2")
    assert len(dataset.train) == 6 and len(dataset.test) == 6
  finally:
    dataset.close()


@pytest.mark.parametrize("content, message", [
    ("file,label\na.png,x\n", "missing path"),
    ("path,label,split\na.png,x,holdout\n", "split 'holdout'"),
    ("path,label\na.png,\n", "empty path or label"),
    ("path,label,split\na.png,x,train\nb.png,y,\n", "some rows have a split"),
])
def test_malformed_csv_is_a_data_error_with_the_line(tmp_path, content, message):
  list_file = tmp_path / "list.csv"
  list_file.write_text(content)
  with pytest.raises(errors.DataError, match=message):
    folders.read_folder(str(list_file))


def test_malformed_list_files_name_the_file_and_line(tmp_path):
  (tmp_path / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n1 1 1\n")
  (tmp_path / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n")
  with pytest.raises(errors.DataError, match=r"Ebay_train.txt, line 2: expected 4 columns"):
    folders.read_folder(str(tmp_path))
  other = tmp_path / "inshop"
  other.mkdir()
  (other / "list_eval_partition.txt").write_text("1\nimage_name item_id evaluation_status\n"
                                                 "img/a.jpg id_1 validation\n")
  with pytest.raises(errors.DataError, match="line 3"):
    folders.read_folder(str(other))
  cars = tmp_path / "cars"
  cars.mkdir()
  (cars / "cars_annos.mat").write_bytes(b"not a mat file")
  with pytest.raises(errors.DataError, match="cars_annos.mat"):
    folders.read_folder(str(cars))


def test_missing_and_empty_folders(tmp_path):
  with pytest.raises(errors.DataNotFoundError, match="no such folder"):
    load(tmp_path / "absent")
  (tmp_path / "empty" / "class_a").mkdir(parents=True)
  with pytest.raises(errors.DataError, match="no image found"):
    load(tmp_path / "empty", class_split="half")


def test_validation_takes_whole_classes_when_the_test_classes_are_unseen(tmp_path):
  image_folders.write_sop(tmp_path, num_train_classes=8, num_test_classes=2, per_class=2)
  dataset = load(tmp_path, validation_fraction=0.25)
  try:
    train, validation = set(dataset.train.classes), set(dataset.validation.classes)
    assert len(validation) == 2 and not train & validation
    assert all(np.sum(dataset.train.labels == label) == 2 for label in train)
  finally:
    dataset.close()


def test_tfds_images_of_several_sizes_point_to_folder_datasets():
  source = [{"image": np.zeros((4, 5, 3), np.uint8), "label": 0},
            {"image": np.zeros((6, 5, 3), np.uint8), "label": 1}]
  with pytest.raises(errors.DataError, match="2 different sizes") as caught:
    datasets._read_tfds_source(source, "caltech_birds2011/train")
  assert "folder:" in caught.value.hint
