"""tripletjax.keras on one Keras backend: run by `test_backends.py` in a subprocess with
KERAS_BACKEND set (Keras picks its backend once per process), not collected by itself.

Every loss is compared with tripletjax's JAX function (values and gradients) and with the NumPy
reference (`tripletjax.reference`, TensorFlow Addons' semantics; values), on random and
degenerate batches, for every `distance_metric`.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import keras
import ml_dtypes
import numpy as np
import pytest
from keras import ops

import tripletjax
from tripletjax import keras as tjk
from tripletjax import reference
from tests.subprocesses import REPO

BACKEND = keras.backend.backend()
METRICS = {"L2": "l2", "squared-L2": "squared_l2", "angular": "angular"}


def explicit_l2(embeddings):
  """A callable distance_metric: Euclidean distances from explicit differences (B x B x D)."""
  differences = embeddings[:, None, :] - embeddings[None, :, :]
  return tjk.losses.distances_lib.safe_sqrt(ops.sum(differences * differences, axis=-1))


# name -> (Keras function, tripletjax function, reference function, extra options)
LOSSES = {
    "semihard": (tjk.triplet_semihard_loss, tripletjax.triplet_semihard_loss,
                 reference.triplet_semihard_loss, {}),
    "hard": (tjk.triplet_hard_loss, tripletjax.triplet_hard_loss, reference.triplet_hard_loss,
             {}),
    "hard_soft": (tjk.triplet_hard_loss, tripletjax.triplet_hard_loss,
                  reference.triplet_hard_loss, {"soft": True}),
    "batch_contrastive": (tjk.batch_contrastive_loss, tripletjax.contrastive_loss,
                          reference.contrastive_loss, {}),
}


def _batches():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(24, 8)).astype(np.float32)
  duplicates = rng.normal(size=(8, 4)).astype(np.float32)
  duplicates[1] = duplicates[0]  # A duplicate positive...
  duplicates[5] = duplicates[2]  # ... and a duplicate negative.
  lattice = rng.integers(0, 2, size=(12, 3)).astype(np.float32)  # Many equal distances.
  return {
      "random": (rng.integers(0, 4, 24), x),
      "one_class": (np.zeros(6, np.int64), x[:6]),
      "all_distinct": (np.arange(6), x[:6]),
      "duplicates": (np.array([0, 0, 1, 1, 2, 0, 1, 2]), duplicates),
      "ties": (rng.integers(0, 3, 12), lattice),
      "two_same": (np.array([3, 3]), x[:2]),
      "two_different": (np.array([3, 4]), x[:2]),
  }


BATCHES = _batches()


def value_and_grad(fn, x: np.ndarray):
  """(value, d value / d x) of `fn(x)` on this backend, as NumPy (compiled on JAX, as in
  `model.fit`)."""
  if BACKEND == "jax":
    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(x))
    return float(value), np.asarray(grad)
  if BACKEND == "tensorflow":
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    variable = tf.Variable(x)
    with tf.GradientTape() as tape:
      value = fn(variable)
    return float(value), tape.gradient(value, variable).numpy()
  import torch  # pylint: disable=import-outside-toplevel
  tensor = torch.tensor(x, requires_grad=True)
  value = fn(tensor)
  value.backward()
  return float(value.detach()), tensor.grad.numpy()


# TFA's two triplet losses on every batch with the default metric, and with every other metric
# on a random batch and one with duplicate embeddings; the other losses on fewer batches.
DEGENERATE = ("one_class", "all_distinct", "ties", "two_same", "two_different")
CASES = ([(loss, batch, "L2") for loss in ("semihard", "hard") for batch in DEGENERATE]
         + [(loss, batch, metric) for loss in ("semihard", "hard")
            for batch in ("random", "duplicates")
            for metric in ("L2", "squared-L2", "angular", "callable")]
         + [(loss, batch, metric) for loss in ("hard_soft", "batch_contrastive")
            for batch, metric in (("random", "L2"), ("duplicates", "angular"),
                                  ("one_class", "callable"), ("two_different", "L2"))])


@pytest.mark.parametrize("loss,batch,metric", CASES)
def test_values_and_gradients_equal_tripletjax_and_the_reference(loss, batch, metric):
  keras_fn, jax_fn, reference_fn, options = LOSSES[loss]
  labels, x = BATCHES[batch]
  name = METRICS.get(metric, "l2")
  distance_metric = explicit_l2 if metric == "callable" else metric
  value, grad = value_and_grad(
      lambda e: keras_fn(labels, e, distance_metric=distance_metric, **options), x)
  np.testing.assert_allclose(value, reference_fn(labels, x, metric=name, **options),
                             rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(grad))
  if BACKEND == "jax" and metric != "callable":
    return  # The Keras loss is then tripletjax's function itself.
  expected_value, expected_grad = jax.jit(jax.value_and_grad(
      lambda e: jax_fn(labels, e, metric=name, **options)))(jnp.asarray(x))
  np.testing.assert_allclose(value, float(expected_value), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad, np.asarray(expected_grad), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("loss", ["semihard", "hard"])
def test_half_precision_is_computed_in_float32_and_cast_back(loss, dtype):
  keras_fn, _, reference_fn, options = LOSSES[loss]
  labels, x = BATCHES["random"]
  half = ops.cast(ops.convert_to_tensor(x), dtype)
  value = keras_fn(labels, half, **options)
  assert keras.backend.standardize_dtype(value.dtype) == dtype
  rounded = x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16)
  expected = reference_fn(labels, rounded.astype(np.float32), **options)
  np.testing.assert_allclose(float(ops.cast(value, "float32")), expected, rtol=1e-2)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_fit_is_finite_without_positive_pairs(policy):
  keras.mixed_precision.set_global_policy(policy)
  try:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(optimizer="adam", loss=tjk.TripletSemiHardLoss())
    x = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)
    # All distinct labels: no positive pair, where TFA's loss is NaN.
    history = model.fit(x, np.arange(16), batch_size=16, epochs=2, verbose=0)
    assert history.history["loss"] == [0.0, 0.0]
    history = model.fit(x, np.arange(16) % 4, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.all([np.all(np.isfinite(w)) for w in model.get_weights()])
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_nan_in_gives_nan_out():
  labels, x = BATCHES["random"]
  x = x.copy()
  x[3, 1] = np.nan
  for loss in LOSSES.values():
    assert np.isnan(float(loss[0](labels, x, **loss[3])))


def test_tfa_contrastive_loss_is_a_pair_loss_on_distances():
  rng = np.random.default_rng(2)
  similar = rng.integers(0, 2, 10)
  distances = rng.uniform(0, 2, 10).astype(np.float32)
  expected = similar * distances**2 + (1 - similar) * np.maximum(0.7 - distances, 0)**2
  np.testing.assert_allclose(ops.convert_to_numpy(tjk.contrastive_loss(similar, distances, 0.7)),
                             expected, rtol=1e-6)
  np.testing.assert_allclose(float(tjk.ContrastiveLoss(margin=0.7)(similar, distances)),
                             expected.mean(), rtol=1e-6)


def test_labels_of_shape_b_1_and_bad_inputs():
  labels, x = BATCHES["random"]
  assert float(tjk.TripletSemiHardLoss()(labels[:, None], x)) == pytest.approx(
      reference.triplet_semihard_loss(labels, x), rel=1e-5)
  with pytest.raises(ValueError, match="distance_metric"):
    tjk.TripletSemiHardLoss(distance_metric="cosine")
  with pytest.raises(ValueError, match=r"y_true must be integer labels of shape \[B\]"):
    tjk.triplet_hard_loss(np.zeros((24, 2)), x)
  with pytest.raises(ValueError, match="margin"):
    tjk.TripletHardLoss(margin=-1.0)


@keras.saving.register_keras_serializable(package="tripletjax_tests")
def squared_distances(embeddings):
  return tjk.pairwise_distances(embeddings, "squared-L2")


@pytest.mark.parametrize("loss", [
    tjk.TripletSemiHardLoss(margin=0.3, distance_metric="angular"),
    "tripletjax>triplet_hard_loss",
], ids=["class", "string"])
def test_a_compiled_model_saves_and_loads_with_its_loss(loss, tmp_path):
  # The configs of the other classes round-trip too (no model needed).
  for other in (tjk.TripletHardLoss(margin=0.2, soft=True, distance_metric="squared-L2"),
                tjk.BatchContrastiveLoss(margin=0.5), tjk.ContrastiveLoss(margin=2.0),
                tjk.TripletSemiHardLoss(distance_metric=squared_distances)):
    config = keras.saving.serialize_keras_object(other)
    again = keras.saving.deserialize_keras_object(config)
    assert type(again) is type(other) and again.get_config() == other.get_config()
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(32, 6)).astype(np.float32), rng.integers(0, 4, 32)
  model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])
  model.compile(optimizer="sgd", loss=loss)
  model.fit(x, y, batch_size=32, epochs=1, verbose=0)
  path = str(tmp_path / "model.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  if not isinstance(loss, str):
    assert type(loaded.loss) is type(loss) and loaded.loss.get_config() == loss.get_config()
  before = model.evaluate(x, y, batch_size=32, verbose=0)
  assert loaded.evaluate(x, y, batch_size=32, verbose=0) == pytest.approx(before, rel=1e-6)
  assert before > 0


def test_a_short_fit_lowers_the_loss():
  rng = np.random.default_rng(4)
  centres = rng.normal(size=(8, 16))
  y = rng.integers(0, 8, 256)
  x = (centres[y] + 0.7 * rng.normal(size=(256, 16))).astype(np.float32)
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8),
                            keras.layers.UnitNormalization()])
  model.compile(optimizer=keras.optimizers.Adam(0.02), loss=tjk.TripletSemiHardLoss(0.5))
  before = model.evaluate(x, y, batch_size=256, verbose=0)
  model.fit(x, y, batch_size=64, epochs=4, verbose=0)
  after = model.evaluate(x, y, batch_size=256, verbose=0)
  assert after < 0.7 * before, (before, after)


def _run_example(name: str, *args: str):
  path = os.path.join(REPO, "examples", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main(list(args))


@pytest.mark.skipif(BACKEND != "jax", reason="the tutorial's model on one backend keeps the "
                    "test suite's time; the fit tests cover every backend")
def test_the_tfa_tutorial_runs_end_to_end(fashion_mnist_dir, tmp_path):
  result = _run_example("keras_tfa_tutorial", "--fashion-mnist-dir", fashion_mnist_dir,
                        "--epochs", "1", "--max-train", "96", "--max-test", "40",
                        "--output-dir", str(tmp_path))
  vectors = np.loadtxt(tmp_path / "vecs.tsv", delimiter="\t")
  labels = np.loadtxt(tmp_path / "meta.tsv", dtype=int)
  assert vectors.shape == (40, 256) and labels.shape == (40,)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
  assert np.isfinite(result["loss"]).all() and 0 < result["loss"][0] < 1.5
