"""The image pipeline: decoding any PNG/JPEG mode, the MLRC transforms, threads, bad files."""

from __future__ import annotations

import functools
import math
import os
import warnings

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from tripletjax.app import errors
from tripletjax.app.data import images


def smooth_image(height: int, width: int) -> np.ndarray:
  """uint8 [H, W, 3] with smooth, position-dependent content (gradients and a ring)."""
  rows, columns = np.mgrid[0:height, 0:width].astype(np.float64)
  red = 255 * columns / max(width - 1, 1)
  green = 255 * rows / max(height - 1, 1)
  radius = np.hypot(rows - height / 3, columns - width / 2)
  blue = 127.5 * (1 + np.cos(radius / 9))
  return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def save(path, array: np.ndarray, **options) -> str:
  Image.fromarray(array).save(path, **options)
  return str(path)


def reference_eval(array: np.ndarray, size: int, resize: int) -> np.ndarray:
  """torchvision's Resize(resize) + CenterCrop(size), written with PIL in two steps."""
  image = Image.fromarray(array)
  width, height = image.size
  scale = resize / min(width, height)
  new_size = (round(width * scale), round(height * scale))
  image = image.resize(new_size, Image.Resampling.BILINEAR)
  left = round((new_size[0] - size) / 2)
  top = round((new_size[1] - size) / 2)
  return np.asarray(image.crop((left, top, left + size, top + size)))


# --- transforms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(200, 300), (300, 200), (224, 224)])
def test_eval_transform_is_resize_then_centre_crop(tmp_path, height, width):
  array = smooth_image(height, width)
  path = save(tmp_path / "image.png", array)
  decoded = images.load_image(path, images.EvalTransform(64, resize=80))
  expected = reference_eval(array, 64, 80)
  assert decoded.shape == (64, 64, 3) and decoded.dtype == np.uint8
  # One resampling from a sub-pixel box instead of two integer steps: close, not equal.
  assert np.abs(decoded.astype(int) - expected).mean() < 2.0


def test_eval_transform_box_is_centred_and_scaled():
  box, flip = images.EvalTransform(224, resize=256).crop(300, 200)
  scale = 256 / 200
  assert not flip
  assert box == pytest.approx((150 - 112 / scale, 100 - 112 / scale,
                               150 + 112 / scale, 100 + 112 / scale))
  # Without resize the crop spans the whole shorter side: (height 10, width 20) of 40 x 10.
  box, _ = images.EvalTransform((10, 20)).crop(40, 10)
  assert box == pytest.approx((10, 0, 30, 10))


def test_random_resized_crop_boxes_follow_scale_and_ratio():
  transform = images.TrainTransform(224, scale=(0.16, 1.0), ratio=(3 / 4, 4 / 3))
  width, height = 640, 480
  areas, ratios, lefts = [], [], []
  for position in range(400):
    left, top, right, bottom = transform.crop_box(width, height, images.image_rng(3, position))
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    areas.append((right - left) * (bottom - top) / (width * height))
    ratios.append((right - left) / (bottom - top))
    lefts.append(left)
  # Rounding the sides to pixels moves area and ratio a little beyond their ranges.
  assert 0.16 - 0.01 <= min(areas) and max(areas) <= 1.0
  assert 3 / 4 - 0.02 <= min(ratios) and max(ratios) <= 4 / 3 + 0.02
  # Spread over the whole range, not stuck at one value.
  assert np.percentile(areas, 10) < 0.35 and np.percentile(areas, 90) > 0.7
  assert len(set(lefts)) > 100
  # Log-uniform ratios: where every draw fits (a square image, at most half its area), as many
  # crops are wider than square as taller, so the median log ratio is 0.
  small = images.TrainTransform(224, scale=(0.16, 0.5))
  log_ratios = []
  for position in range(400):
    left, top, right, bottom = small.crop_box(1000, 1000, images.image_rng(4, position))
    log_ratios.append(math.log((right - left) / (bottom - top)))
  assert abs(np.median(log_ratios)) < 0.02


def test_random_resized_crop_falls_back_to_a_centred_box_of_clamped_ratio():
  transform = images.TrainTransform(8, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
  # A 1000 x 10 strip: no box of 90% of the area with ratio <= 4/3 fits.
  box = transform.crop_box(1000, 10, images.image_rng(0))
  assert box == (493, 0, 506, 10)  # 13 = round(10 * 4/3) wide, centred.
  box = transform.crop_box(10, 1000, images.image_rng(0))
  assert box == (0, 493, 10, 506)


def test_train_transform_is_a_pure_function_of_the_generator_seed(tmp_path):
  path = save(tmp_path / "image.png", smooth_image(120, 160))
  transform = images.TrainTransform(32)
  first = images.load_image(path, transform, rng=images.image_rng(0, 1, 2, 3))
  again = images.load_image(path, transform, rng=images.image_rng(0, 1, 2, 3))
  other = images.load_image(path, transform, rng=images.image_rng(0, 1, 2, 4))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  with pytest.raises(ValueError, match="generator"):
    images.load_image(path, transform)


def test_flip_mirrors_the_evaluation_crop_half_of_the_time(tmp_path):
  path = save(tmp_path / "image.png", smooth_image(50, 70))
  plain = images.load_image(path, images.EvalTransform(32, resize=40))
  transform = images.TrainTransform(32, random_crop=False, flip=True, resize=40)
  outcomes = []
  for seed in range(40):
    decoded = images.load_image(path, transform, rng=images.image_rng(seed))
    if np.array_equal(decoded, plain):
      outcomes.append(False)
    else:
      np.testing.assert_array_equal(decoded, plain[:, ::-1])
      outcomes.append(True)
  assert 10 <= sum(outcomes) <= 30


def test_transforms_check_their_arguments():
  with pytest.raises(ValueError, match="smaller than the crop"):
    images.EvalTransform(224, resize=200)
  with pytest.raises(ValueError, match="scale"):
    images.TrainTransform(224, scale=(0.5, 1.5))
  with pytest.raises(ValueError, match="ratio"):
    images.TrainTransform(224, ratio=(2.0, 1.0))
  with pytest.raises(ValueError, match="size"):
    images.EvalTransform(0)


# --- formats ------------------------------------------------------------------------------------


def uniform(height, width, value, mode):
  return Image.new(mode, (width, height), value)


@pytest.mark.parametrize("mode, value, suffix, expected_rgb", [
    ("RGB", (10, 200, 30), ".png", (10, 200, 30)),
    ("RGB", (10, 200, 30), ".jpg", (10, 200, 30)),
    ("L", 77, ".png", (77, 77, 77)),
    ("L", 77, ".jpg", (77, 77, 77)),
    ("RGBA", (10, 200, 30, 255), ".png", (10, 200, 30)),
    ("RGBA", (10, 200, 30, 0), ".png", (255, 255, 255)),  # Transparent: white background.
    ("LA", (0, 0), ".png", (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), ".jpg", (255, 0, 0)),
])
def test_every_mode_decodes_to_rgb_and_grey(tmp_path, mode, value, suffix, expected_rgb):
  path = str(tmp_path / f"image{suffix}")
  uniform(40, 60, value, mode).save(path, **({"quality": 100} if suffix == ".jpg" else {}))
  rgb = images.load_image(path, images.EvalTransform(16), channels=3)
  assert rgb.shape == (16, 16, 3)
  np.testing.assert_allclose(rgb.reshape(-1, 3).mean(axis=0), expected_rgb, atol=3)
  grey = images.load_image(path, images.EvalTransform(16), channels=1)
  assert grey.shape == (16, 16, 1)
  # PIL's ITU-R 601-2 luma, the conversion to "L".
  luma = np.dot(expected_rgb, (0.299, 0.587, 0.114))
  assert abs(grey.mean() - luma) < 3


def test_palette_png_with_transparency_goes_over_white(tmp_path):
  image = Image.new("P", (20, 20), 0)
  image.putpalette([200, 10, 10] + [0, 0, 0] * 255)
  image.paste(1, (0, 0, 20, 10))  # Top half: index 1, transparent.
  path = str(tmp_path / "palette.png")
  image.save(path, transparency=1)
  decoded = images.load_image(path, images.EvalTransform(20))
  np.testing.assert_array_equal(decoded[:8, :, :], 255)
  np.testing.assert_array_equal(decoded[12:, :, :], np.broadcast_to([200, 10, 10], (8, 20, 3)))


def test_16_bit_png_keeps_its_top_8_bits(tmp_path):
  values = np.full((12, 12), 0x8000, np.uint16)
  values[:6] = 0xFFFF
  path = save(tmp_path / "deep.png", values)
  assert Image.open(path).mode.startswith("I")
  decoded = images.load_image(path, images.EvalTransform(12), channels=1)
  assert decoded[:5].min() == 255 and decoded[7:].max() == 128


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
  array = smooth_image(60, 90)
  exif = Image.Exif()
  exif[0x0112] = orientation
  path = str(tmp_path / "rotated.jpg")
  Image.fromarray(array).save(path, exif=exif, quality=95)
  upright = {3: np.rot90(array, 2), 6: np.rot90(array, -1), 8: np.rot90(array, 1)}[orientation]
  decoded = images.load_image(path, images.EvalTransform(24, resize=30))
  expected = reference_eval(np.ascontiguousarray(upright), 24, 30)
  assert np.abs(decoded.astype(int) - expected).mean() < 4


def test_large_jpeg_is_decoded_at_a_reduced_scale_with_the_same_crop(tmp_path, monkeypatch):
  array = smooth_image(1200, 1600)
  path = save(tmp_path / "large.jpg", array, quality=95)
  drafts = []
  original_draft = JpegImagePlugin.JpegImageFile.draft

  def recording_draft(self, mode, size):
    drafts.append(size)
    return original_draft(self, mode, size)

  monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
  transform = images.TrainTransform(64, scale=(0.2, 0.5))
  rng_seed = (5, 6)
  decoded = images.load_image(path, transform, rng=images.image_rng(*rng_seed))
  assert drafts and drafts[0][0] < 1600  # Asked for a reduced decode.
  # The same box on the full-resolution pixels.
  box, flip = transform.crop(1600, 1200, images.image_rng(*rng_seed))
  full = Image.fromarray(array).resize((64, 64), Image.Resampling.BILINEAR, box=box)
  expected = np.asarray(full)[:, ::-1] if flip else np.asarray(full)
  assert np.abs(decoded.astype(int) - expected).mean() < 3


# --- unreadable files ---------------------------------------------------------------------------


def bad_files(folder) -> dict[str, str]:
  """Files that are not readable images, by what is wrong with them."""
  good = str(folder / "good.jpg")
  Image.fromarray(smooth_image(64, 64)).save(good, quality=90)
  content = open(good, "rb").read()
  files = {
      "missing": str(folder / "missing.png"),
      "truncated": str(folder / "truncated.jpg"),
      "text": str(folder / "text.png"),
      "empty": str(folder / "empty.jpg"),
      "folder": str(folder / "a_folder.png"),
  }
  open(files["truncated"], "wb").write(content[:len(content) // 2])
  open(files["text"], "w").write("not an image\n")
  open(files["empty"], "wb").close()
  os.mkdir(files["folder"])
  return files


def test_each_kind_of_unreadable_file_is_an_error_naming_its_path(tmp_path):
  for kind, path in bad_files(tmp_path).items():
    with pytest.raises(images.UnreadableImageError) as caught:
      images.load_image(path, images.EvalTransform(16))
    error = caught.value
    assert error.path == path and path in str(error), kind
    assert isinstance(error, errors.DataError) and "unreadable='skip'" in error.hint


def test_skip_policy_counts_reports_once_and_keeps_decoding(tmp_path):
  files = bad_files(tmp_path)
  good = str(tmp_path / "good.jpg")
  paths = [good, files["truncated"], good, files["text"], files["truncated"]]
  with images.ImageDecoder(channels=3, workers=2, on_error="skip") as decoder:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      batch, readable = decoder.decode(paths, images.EvalTransform(16))
      decoder.decode(paths, images.EvalTransform(16))
    assert readable.tolist() == [True, False, True, False, False]
    assert sorted(decoder.unreadable) == sorted([files["truncated"], files["text"]])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2  # Each bad file once, however often it is met.
    assert any(files["truncated"] in m for m in messages)
    assert np.all(batch[1] == 0) and batch[0].max() > 0
  with images.ImageDecoder(on_error="error") as decoder:
    with pytest.raises(images.UnreadableImageError, match="truncated.jpg"):
      decoder.decode(paths, images.EvalTransform(16))
  with pytest.raises(ValueError, match="policy"):
    images.ImageDecoder(on_error="ignore")


# --- batches, threads, the lazy array -----------------------------------------------------------


def write_folder(folder, count: int, size=(30, 40)) -> list[str]:
  paths = []
  for index in range(count):
    array = np.roll(smooth_image(*size), 3 * index, axis=1)
    suffix = ".png" if index % 2 else ".jpg"
    paths.append(save(folder / f"{index:03d}{suffix}", array))
  return paths


def test_batches_are_the_same_with_any_number_of_threads(tmp_path):
  paths = write_folder(tmp_path, 12)
  transform = images.TrainTransform(24, resize=28)
  batches = []
  for workers in (1, 3):
    rngs = [images.image_rng(7, 0, 1, position) for position in range(len(paths))]
    with images.ImageDecoder(workers=workers) as decoder:
      batch, readable = decoder.decode(paths, transform, rngs)
    assert readable.all() and batch.dtype == np.float32 and batch.shape == (12, 24, 24, 3)
    batches.append(batch)
  np.testing.assert_array_equal(batches[0], batches[1])
  # Each image as load_image gives it, scaled to [0, 1].
  single = images.load_image(paths[5], transform, rng=images.image_rng(7, 0, 1, 5))
  np.testing.assert_array_equal(batches[0][5], single.astype(np.float32) * np.float32(1 / 255))


def test_prefetch_yields_every_batch_in_order(tmp_path):
  paths = write_folder(tmp_path, 10)
  transform = images.EvalTransform(16)
  chunks = [paths[i:i + 3] for i in range(0, 10, 3)]
  with images.ImageDecoder(workers=2) as decoder:
    jobs = [functools.partial(decoder.submit, chunk, transform) for chunk in chunks]
    got = [batch for batch, _ in decoder.prefetch(jobs, depth=2)]
    expected = [decoder.decode(chunk, transform)[0] for chunk in chunks]
    assert [len(b) for b in got] == [3, 3, 3, 1]
    for a, b in zip(got, expected):
      np.testing.assert_array_equal(a, b)
    # Stopping early leaves the decoder usable.
    stream = decoder.prefetch(jobs, depth=3)
    next(stream)
    stream.close()
    np.testing.assert_array_equal(decoder.decode(chunks[0], transform)[0], expected[0])


def test_image_files_is_a_lazy_float32_array(tmp_path):
  paths = write_folder(tmp_path, 7)
  labels = np.array([0, 0, 1, 1, 1, 2, 2])
  with images.ImageDecoder(workers=2) as decoder:
    files = images.ImageFiles(paths, labels, decoder, images.EvalTransform(20, resize=24))
    assert files.shape == (7, 20, 20, 3) and files.dtype == np.float32 and len(files) == 7
    everything = files[:]
    np.testing.assert_array_equal(everything, images.decode_images(
        paths, images.EvalTransform(20, resize=24)))
    np.testing.assert_array_equal(files[3], everything[3])
    np.testing.assert_array_equal(files[np.array([6, 1])], everything[[6, 1]])
    subset = files.take(np.array([2, 5]))
    assert len(subset) == 2 and subset.source.labels.tolist() == [1, 2]
    np.testing.assert_array_equal(subset[:], everything[[2, 5]])
    both = images.concatenate(subset, files.take(slice(0, 1)))
    assert both.source.labels.tolist() == [1, 2, 0]
    assert images.take(np.arange(4), [1, 3]).tolist() == [1, 3]


def test_replacement_is_the_next_readable_item_of_the_same_label(tmp_path):
  paths = write_folder(tmp_path, 6)
  open(paths[3], "wb").write(b"broken")
  labels = np.array([0, 1, 0, 0, 1, 0])
  with images.ImageDecoder(on_error="skip") as decoder:
    files = images.ImageFiles(paths, labels, decoder, images.EvalTransform(8))
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      files[:]
    assert files.unreadable_indices().tolist() == [3]
    assert files.replacement(3) == 5
    assert files.replacement(5) == 0  # Cyclic, and skips item 3.
    assert files.replacement(2) == 5
    assert files.replacement(1) == 4


def test_normalize_imagenet():
  batch = np.full((2, 3, 3, 3), 0.5, np.float32)
  images.normalize(batch, "imagenet")
  mean, std = images.NORMALIZATIONS["imagenet"]
  np.testing.assert_allclose(batch[0, 0, 0], (0.5 - np.array(mean)) / np.array(std), rtol=1e-6)
  untouched = np.full((1, 2, 2, 1), 0.25, np.float32)
  assert images.normalize(untouched, "none") is untouched and untouched.max() == 0.25
  with pytest.raises(ValueError, match="channels"):
    images.normalize(np.zeros((1, 2, 2, 1), np.float32), "imagenet")
  with pytest.raises(ValueError, match="Unknown normalization"):
    images.normalize(batch, "imagenet21k")


def test_list_image_files_picks_images_by_extension(tmp_path):
  for name in ("b.JPG", "a.png", "notes.txt", ".hidden.png", "c.jpeg"):
    (tmp_path / name).write_bytes(b"")
  assert [os.path.basename(p) for p in images.list_image_files(str(tmp_path))] == [
      "a.png", "b.JPG", "c.jpeg"]
  assert math.isclose(images.DEFAULT_SCALE[0], 0.16)


@pytest.mark.parametrize("width, height", [(55, 60), (60, 55), (29, 33)])
def test_a_crop_spanning_the_whole_image_survives_float_rounding(tmp_path, width, height):
  # 28 / (28 / 55) is 55.00000000000001: the box pokes out of the image by a rounding error.
  path = save(tmp_path / "image.png", smooth_image(height, width))
  decoded = images.load_image(path, images.EvalTransform(28))
  assert decoded.shape == (28, 28, 3)


def test_a_failing_transform_is_a_bug_not_an_unreadable_file(tmp_path):
  path = save(tmp_path / "image.png", smooth_image(20, 20))

  class Broken(images.EvalTransform):
    def crop(self, width, height, rng=None):
      raise ValueError("a bug in the transform")

  with pytest.raises(ValueError, match="a bug in the transform") as caught:
    images.load_image(path, Broken(8))
  assert not isinstance(caught.value, images.UnreadableImageError)
