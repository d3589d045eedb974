"""The input pipeline: the batches of a resumed epoch, unreadable files, normalisation, and the
memory a folder larger than its batches takes."""

from __future__ import annotations

import textwrap
import warnings

import numpy as np
import pytest

from tests.app.data import image_folders
from tests.subprocesses import run_python
from tripletjax.app import errors
from tripletjax.app.config import defaults
from tripletjax.app.data import datasets
from tripletjax.app.data import images
from tripletjax.app.data import pipeline
from tripletjax.app.data import samplers

def data_config(**changes):
  config = defaults.get_config().data
  config.image_size, config.eval_resize, config.prefetch_batches = 16, 20, 2
  for key, value in changes.items():
    config[key] = value
  return config


def folder_dataset(tmp_path, workers=2, unreadable="error", per_class=6):
  image_folders.write_class_folders(tmp_path / "images", 4, per_class)
  options = datasets.ImageOptions(size=16, eval_resize=20, workers=workers,
                                  unreadable=unreadable)
  return datasets.load_dataset(f"folder:{tmp_path / 'images'}", class_split="half",
                               image_options=options)


def epoch_batches(inputs, split, sampler, epoch, first_step=0):
  return [(images_.copy(), labels.copy())
          for images_, labels in inputs.train_batches(split, sampler, epoch, first_step)]


def test_a_resumed_epoch_sees_the_same_file_batches_with_any_thread_count(tmp_path):
  dataset = folder_dataset(tmp_path, workers=1)
  other = folder_dataset(tmp_path, workers=3)
  try:
    inputs = pipeline.InputPipeline(data_config(augment="crop_flip"), seed=5)
    sampler = samplers.make_sampler("shuffled", dataset.train.labels, batch_size=4, seed=5)
    full = epoch_batches(inputs, dataset.train, sampler, epoch=2)
    resumed = epoch_batches(inputs, other.train, sampler, epoch=2, first_step=1)
    assert len(full) == 3 and len(resumed) == 2
    for (a, a_labels), (b, b_labels) in zip(full[1:], resumed):
      np.testing.assert_array_equal(a, b)
      np.testing.assert_array_equal(a_labels, b_labels)
    # Each image: its own draw of (seed, epoch, step, position).
    indices = list(sampler.epoch(2))[1]
    transform = images.TrainTransform(16)
    expected = dataset.train.images.decode(
        indices, transform, [images.image_rng(5, 2, 1, p) for p in range(4)])
    np.testing.assert_array_equal(full[1][0], expected)
    # Another epoch draws other crops.
    assert not np.array_equal(epoch_batches(inputs, dataset.train, sampler, epoch=3)[0][0],
                              full[0][0])
  finally:
    dataset.close()
    other.close()


def test_a_resumed_epoch_sees_the_same_array_batches():
  dataset = datasets.load_dataset("digits", max_train=200)
  inputs = pipeline.InputPipeline(data_config(augment="flip_shift"), seed=1)
  sampler = samplers.make_sampler("shuffled", dataset.train.labels, batch_size=32, seed=1)
  full = epoch_batches(inputs, dataset.train, sampler, epoch=0)
  resumed = epoch_batches(inputs, dataset.train, sampler, epoch=0, first_step=4)
  for (a, a_labels), (b, b_labels) in zip(full[4:], resumed, strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a_labels, b_labels)


def test_unreadable_training_file_is_replaced_by_the_next_image_of_its_class(tmp_path):
  dataset = folder_dataset(tmp_path, unreadable="skip")
  try:
    files = dataset.train.images
    broken = 2
    with open(files.source.paths[broken], "wb") as f:
      f.write(b"\x89PNG\r\n\x1a\n truncated")
    replacement = files.replacement(broken)  # Not yet known bad: the next item of the class.
    assert files.source.labels[replacement] == files.source.labels[broken]
    inputs = pipeline.InputPipeline(data_config(augment="crop_flip"), seed=0)

    class Fixed:  # A sampler whose only batch holds the broken file at position 1.
      def epoch(self, epoch):
        yield np.array([0, broken, 5, 7])

    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      [(batch, labels)] = epoch_batches(inputs, dataset.train, Fixed(), epoch=0)
    assert [str(files.source.paths[broken]) in str(w.message) for w in caught] == [True]
    assert files.unreadable_indices().tolist() == [broken]
    np.testing.assert_array_equal(labels, dataset.train.labels[[0, broken, 5, 7]])
    expected = files.decode([replacement], images.TrainTransform(16),
                            [images.image_rng(0, 0, 0, 1)])[0]
    np.testing.assert_array_equal(batch[1], expected)
  finally:
    dataset.close()


def test_unreadable_training_file_stops_the_run_by_default(tmp_path):
  dataset = folder_dataset(tmp_path)
  try:
    path = dataset.train.images.source.paths[0]
    open(path, "wb").close()
    inputs = pipeline.InputPipeline(data_config(augment="none"), seed=0)
    sampler = samplers.make_sampler("shuffled", dataset.train.labels, batch_size=12, seed=0)
    with pytest.raises(images.UnreadableImageError) as caught:
      epoch_batches(inputs, dataset.train, sampler, epoch=0)
    assert caught.value.path == path
  finally:
    dataset.close()


def test_eval_chunks_are_in_order_and_stay_in_0_1(tmp_path):
  dataset = folder_dataset(tmp_path)
  try:
    files = dataset.test.images
    inputs = pipeline.InputPipeline(data_config(), seed=0)
    chunks = list(inputs.eval_chunks(files, 5))
    assert [len(c) for c in chunks] == [5, 5, 2]
    everything = np.concatenate(chunks)
    np.testing.assert_array_equal(everything, files[:])
    assert 0.0 <= everything.min() and everything.max() <= 1.0
    digits = datasets.load_dataset("digits", max_test=20).test.images
    np.testing.assert_array_equal(np.concatenate(list(inputs.eval_chunks(digits, 7))), digits)
  finally:
    dataset.close()


def test_augmentation_names_follow_the_kind_of_images(tmp_path):
  dataset = folder_dataset(tmp_path)
  try:
    sampler = samplers.make_sampler("shuffled", dataset.train.labels, batch_size=4, seed=0)
    with pytest.raises(errors.ConfigError, match="image files take"):
      epoch_batches(pipeline.InputPipeline(data_config(augment="shift"), seed=0),
                    dataset.train, sampler, epoch=0)
    digits = datasets.load_dataset("digits", max_train=64).train
    with pytest.raises(errors.ConfigError, match="in-memory images take"):
      epoch_batches(pipeline.InputPipeline(data_config(augment="crop_flip"), seed=0), digits,
                    samplers.make_sampler("shuffled", digits.labels, batch_size=32, seed=0),
                    epoch=0)
  finally:
    dataset.close()


STREAM_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from PIL import Image
    from tripletjax.app.config import defaults
    from tripletjax.app.data import datasets, pipeline, samplers

    folder, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    for index in range(count):
      pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(f"{folder}/{index % 10}/{index}.png")
    config = defaults.get_config().data
    config.image_size, config.eval_resize, config.augment = size, size, "crop_flip"
    dataset = datasets.load_dataset(
        f"folder:{folder}", class_split="half",
        image_options=datasets.ImageOptions(size=size, eval_resize=size, workers=2))
    inputs = pipeline.InputPipeline(config, seed=0)
    sampler = samplers.make_sampler("shuffled", dataset.train.labels, batch_size=32, seed=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seen = 0
    for batch, labels in inputs.train_batches(dataset.train, sampler, epoch=0):
      seen += len(batch)
    for chunk in inputs.eval_chunks(dataset.test.images, 64):
      seen += len(chunk)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dataset.close()
    print(seen, before * 1024, after * 1024)
""")


@pytest.mark.slow
def test_streaming_a_folder_keeps_memory_to_a_few_batches(tmp_path):
  # 3,000 files at 128 x 128 x 3 would take 590 MB as float32; batches of 32 take 6.3 MB.
  count, size = 3000, 128
  for label in range(10):
    (tmp_path / str(label)).mkdir()
  result = run_python("-c", STREAM_SCRIPT, str(tmp_path), str(count), str(size))
  assert result.returncode == 0, result.stderr[-3000:]
  seen, before, after = map(int, result.stdout.split())
  whole = count * size * size * 3 * 4
  assert seen >= count - 32  # Every training batch (the last partial one dropped) and test image.
  growth = after - before
  assert growth < 0.15 * whole, f"peak RSS grew by {growth / 2**20:.0f} MiB while streaming"
