"""Tests of the training-time augmentations (`tripletjax.augmentations`)."""

from __future__ import annotations

import numpy as np
import pytest

from tripletjax.app.data import augmentations


def _images(num=64, size=6, seed=0):
  # Random pixels: a flipped or shifted image is then unambiguous.
  return np.random.default_rng(seed).random((num, size, size, 1)).astype(np.float32) + 0.1


def _shifted(image, dy, dx):
  """`image` translated by (dy, dx) pixels, zero-filled."""
  out = np.zeros_like(image)
  height, width = image.shape[:2]
  out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
      image[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
  return out


def test_none_returns_the_images():
  images = _images()
  assert augmentations.augment(images, "none", seed=0, epoch=0, step=0) is images


def test_flip_mirrors_about_half_of_the_images():
  images = _images(num=200)
  out = augmentations.augment(images, "flip", seed=1, epoch=2, step=3)
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  kept = [np.array_equal(o, i) for o, i in zip(out, images)]
  assert all(f != k for f, k in zip(flipped, kept))  # Each image is exactly one of the two.
  assert 60 < sum(flipped) < 140


def test_flip_shift_translates_within_max_shift():
  images = _images(num=100)
  out = augmentations.augment(images, "flip_shift", seed=0, epoch=0, step=0, max_shift=2)
  shifts = set()
  for image, result in zip(images, out):
    matches = [(dy, dx, flip) for flip in (False, True) for dy in range(-2, 3)
               for dx in range(-2, 3)
               if np.array_equal(result, _shifted(image[:, ::-1] if flip else image, dy, dx))]
    assert matches, "output is not a flip + shift of its input"
    shifts.add(matches[0][:2])
  assert len(shifts) > 10  # Many of the 25 shifts occur.


def test_shift_translates_without_flipping():
  images = _images(num=100)
  out = augmentations.augment(images, "shift", seed=0, epoch=0, step=0, max_shift=1)
  shifts = set()
  for image, result in zip(images, out):
    matches = [(dy, dx) for dy in range(-1, 2) for dx in range(-1, 2)
               if np.array_equal(result, _shifted(image, dy, dx))]
    assert matches, "output is not a shift of its input (by at most 1 pixel)"
    shifts.add(matches[0])
  assert len(shifts) == 9  # Every shift of up to one pixel occurs among 100 images.


def test_same_seed_epoch_step_same_result_and_different_steps_differ():
  images = _images()
  first = augmentations.augment(images, "flip_shift", seed=5, epoch=1, step=7)
  again = augmentations.augment(images, "flip_shift", seed=5, epoch=1, step=7)
  other = augmentations.augment(images, "flip_shift", seed=5, epoch=1, step=8)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_unknown_augmentation_is_named():
  with pytest.raises(ValueError, match="rotate"):
    augmentations.augment(_images(), "rotate", seed=0, epoch=0, step=0)


@pytest.mark.parametrize("kind", ["flip", "shift", "flip_shift"])
def test_a_process_augments_its_rows_as_the_whole_batch_would(kind):
  # A process of several augments only its rows of the global batch: they must come out as
  # those rows of the whole batch augmented at once, whichever block of rows it holds.
  images = _images()
  whole = augmentations.augment(images, kind, seed=3, epoch=1, step=2)
  assert not np.array_equal(whole, images)
  for rows in (slice(0, 16), slice(16, 32), slice(48, 64)):
    part = augmentations.augment(images[rows], kind, seed=3, epoch=1, step=2, rows=rows,
                                 batch_size=64)
    np.testing.assert_array_equal(part, whole[rows], err_msg=str(rows))


def test_rows_that_are_not_the_images_given_are_an_error():
  with pytest.raises(ValueError, match="not the 16 images given"):
    augmentations.augment(_images(16), "flip", seed=0, epoch=0, step=0, rows=slice(0, 32),
                          batch_size=64)
