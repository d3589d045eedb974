"""Class-disjoint splits and validation subsets, on their own and on real datasets."""

from __future__ import annotations

import numpy as np
import pytest

from tripletjax.app import errors
from tripletjax.app.data import datasets
from tripletjax.app.data import splits


@pytest.mark.parametrize("spec, classes, expected", [
    ("none", [0, 1, 2], None),
    ("half", [3, 1, 0, 2, 1], [0, 1]),
    ("half", range(200), range(100)),  # CUB: classes 1-100 of 1-200.
    ("half", range(196), range(98)),  # Cars196: 1-98.
    ("half", range(5), [0, 1]),  # Odd: the lower n // 2.
    ("0:3", range(10), [0, 1, 2, 3]),
    (" 2 : 4 ", [1, 2, 3, 4, 5, 9], [2, 3, 4]),
])
def test_training_classes(spec, classes, expected):
  train = splits.training_classes(spec, np.asarray(list(classes)))
  if expected is None:
    assert train is None
  else:
    assert train.tolist() == list(expected)


@pytest.mark.parametrize("spec, message", [
    ("halves", "must be one of none, half, <first>:<last>"),
    ("5:2", "first class 5 is after last class 2"),
    ("-1:3", "must be one of"),
    ("20:30", "puts no class on the training side"),
    ("0:9", "puts every class on the training side"),
])
def test_bad_class_splits_name_the_key(spec, message):
  with pytest.raises(errors.ConfigError, match=message) as caught:
    splits.training_classes(spec, np.arange(10))
  assert str(caught.value).startswith(f"config.data.class_split={spec!r}")


def test_stratified_holdout_takes_its_share_of_every_class():
  labels = np.repeat([0, 1, 2], [10, 20, 2])
  held_out = splits.stratified_holdout(labels, 0.2, seed=0)
  assert [int(held_out[labels == c].sum()) for c in range(3)] == [2, 4, 1]
  np.testing.assert_array_equal(held_out, splits.stratified_holdout(labels, 0.2, seed=0))
  assert not np.array_equal(held_out, splits.stratified_holdout(labels, 0.2, seed=1))
  assert not splits.stratified_holdout(labels, 0.0, seed=0).any()


def test_class_holdout_takes_whole_classes_and_keeps_two_on_each_side():
  labels = np.repeat(np.arange(10), 3)
  held_out = splits.class_holdout(labels, 0.3, seed=0)
  classes = np.unique(labels[held_out])
  assert len(classes) == 3
  assert np.array_equal(held_out, np.isin(labels, classes))  # Every example of those classes.
  assert len(np.unique(labels[splits.class_holdout(labels, 0.01, seed=0)])) == 2
  assert len(np.unique(labels[splits.class_holdout(labels, 0.99, seed=0)])) == 8
  with pytest.raises(errors.ConfigError, match="at least 4 training classes"):
    splits.class_holdout(np.repeat(np.arange(3), 2), 0.5, seed=0)


def test_digits_half_trains_on_0_to_4_and_tests_every_image_of_5_to_9():
  plain = datasets.load_dataset("digits")
  dataset = datasets.load_dataset("digits", class_split="half")
  assert dataset.train.classes.tolist() == [0, 1, 2, 3, 4]
  assert dataset.test.classes.tolist() == [5, 6, 7, 8, 9]
  assert dataset.unseen_test_classes.tolist() == [5, 6, 7, 8, 9]
  assert plain.unseen_test_classes.size == 0
  # The train and test images are pooled: every image lands on its class's side.
  pooled = np.concatenate([plain.train.labels, plain.test.labels])
  assert len(dataset.train) == int((pooled < 5).sum())
  assert len(dataset.test) == int((pooled >= 5).sum())
  all_images = np.concatenate([plain.train.images, plain.test.images])
  np.testing.assert_array_equal(dataset.test.images, all_images[pooled >= 5])


def test_validation_is_class_disjoint_under_a_class_split():
  dataset = datasets.load_dataset("digits", class_split="0:7", validation_fraction=0.25,
                                  seed=3)
  train, validation = set(dataset.train.classes), set(dataset.validation.classes)
  assert len(validation) == 2 and not train & validation
  assert train | validation == set(range(8))
  assert dataset.test.classes.tolist() == [8, 9]
  same_classes = datasets.load_dataset("digits", validation_fraction=0.25)
  assert same_classes.validation.classes.tolist() == list(range(10))
  assert len(same_classes.validation) + len(same_classes.train) == len(
      datasets.load_dataset("digits").train)


def test_max_train_and_max_test_apply_after_the_class_split():
  dataset = datasets.load_dataset("digits", class_split="half", max_train=100, max_test=50)
  assert len(dataset.train) == 100 and len(dataset.test) == 50
  assert dataset.train.classes.tolist() == [0, 1, 2, 3, 4]
  assert dataset.test.classes.tolist() == [5, 6, 7, 8, 9]


def test_fashion_mnist_half_is_classes_0_to_4_then_5_to_9(fashion_mnist_dir):
  dataset = datasets.load_dataset("fashion_mnist", class_split="half")
  assert dataset.train.classes.tolist() == [0, 1, 2, 3, 4]
  assert dataset.test.classes.tolist() == [5, 6, 7, 8, 9]
  # 7,000 images per class in train + test.
  assert len(dataset.train) == len(dataset.test) == 35_000


# --- validation folds: class-disjoint folds of the training classes ---------------------------


@pytest.mark.parametrize("num_classes, folds", [(4, 2), (5, 2), (10, 4), (100, 4), (9, 3)])
def test_class_folds_are_disjoint_cover_the_classes_and_are_balanced(num_classes, folds):
  classes = np.random.default_rng(num_classes).permutation(num_classes) + 7
  parts = splits.class_folds(np.repeat(classes, 3), folds)
  assert len(parts) == folds
  joined = np.concatenate(parts)
  assert sorted(joined.tolist()) == sorted(classes.tolist())  # Cover, no class twice.
  assert len(set(joined.tolist())) == len(joined)
  sizes = [len(p) for p in parts]
  assert min(sizes) >= 2 and max(sizes) - min(sizes) <= 1
  assert all(np.all(np.diff(p) > 0) for p in parts)
  assert all(parts[i].max() < parts[i + 1].min() for i in range(folds - 1))  # Contiguous.


@pytest.mark.parametrize("classes, folds, message, hint", [
    (range(5), 3, "every fold needs at least 2 classes, and the training side has 5 classes "
     "for 3 folds", "use at most 2 folds"),
    (range(3), 2, "training side has 3 classes", "folds need at least 4 training classes"),
    (range(8), 1, "a fold protocol needs at least 2 folds", "set it to 0"),
])
def test_too_many_folds_is_a_config_error_naming_the_key(classes, folds, message, hint):
  with pytest.raises(errors.ConfigError) as caught:
    splits.class_folds(np.asarray(list(classes)), folds)
  assert str(caught.value).startswith(f"config.data.validation_folds={folds}: ")
  assert message in str(caught.value) and hint in caught.value.hint


def test_fold_holdout_rejects_a_fold_out_of_range():
  with pytest.raises(errors.ConfigError, match=r"validation_fold=2: must be in \[0, 2\)"):
    splits.fold_holdout(np.arange(8), 2, 2)


def test_each_fold_of_digits_half_validates_on_its_classes_and_trains_on_the_others():
  seen = []
  for fold in range(2):
    dataset = datasets.load_dataset("digits", class_split="half", validation_folds=2,
                                    validation_fold=fold)
    train, validation = set(dataset.train.classes), set(dataset.validation.classes)
    assert not train & validation and train | validation == {0, 1, 2, 3, 4}
    assert not (train | validation) & set(dataset.test.classes)
    # Every image of a validation class is in validation, none stays in training.
    assert len(dataset.train) + len(dataset.validation) == int(np.isin(
        datasets.load_dataset("digits").train.labels, [0, 1, 2, 3, 4]).sum() + np.isin(
        datasets.load_dataset("digits").test.labels, [0, 1, 2, 3, 4]).sum())
    seen.append(validation)
  assert seen == [{0, 1, 2}, {3, 4}]  # The folds partition the training classes.


def test_folds_do_not_depend_on_the_seed_and_max_validation_subsamples():
  a = datasets.load_dataset("digits", class_split="half", validation_folds=2, seed=0)
  b = datasets.load_dataset("digits", class_split="half", validation_folds=2, seed=5,
                            max_validation=100)
  assert a.validation.classes.tolist() == b.validation.classes.tolist()
  assert len(b.validation) == 100 and len(a.validation) > 100


def test_folds_and_a_validation_fraction_together_are_an_error():
  with pytest.raises(errors.ConfigError, match="both hold out a validation set"):
    datasets.load_dataset("digits", class_split="half", validation_folds=2,
                          validation_fraction=0.2)
