"""Tests for the vectorised NumPy baselines of the benchmark (`benchmarks.numpy_vectorized`).

Values must match the loop reference `tripletjax.reference`, and the analytic gradients must
match central finite differences of the reference (float64, so the differences are accurate)
and, on batches with ties, the gradient of the tests' oracle (`tests.mining.oracle`). The baselines
import nothing from the package, so their agreement with it is that of two implementations.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# `benchmarks` is not an installed package: pytest puts the repository root on the path.
from benchmarks import numpy_vectorized
from tests.mining import oracle
from tripletjax import losses
from tripletjax import reference

LOSS_NAMES = ("semihard", "hard", "batch_all", "contrastive")

REFERENCE_LOSSES = reference.MINED_LOSSES


def _batch(batch_size: int, num_classes: int, dim: int = 6, seed: int = 0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, batch_size).astype(np.int32)
  embeddings = rng.standard_normal((batch_size, dim)).astype(np.float32)
  return labels, embeddings


def _reference_gradient(loss_fn, labels, embeddings, margin: float, **options) -> np.ndarray:
  """Central finite differences of the float64 reference loss `loss_fn`."""
  return oracle.central_differences(lambda x: loss_fn(labels, x, margin, **options),
                                    embeddings, step=1e-5)


# (batch size, classes, margin, seed): mixed batches, one class (no negatives), all classes
# different (no positive pair), a tiny batch.
BATCHES = [(24, 4, 1.0, 0), (16, 3, 0.5, 1), (24, 8, 2.0, 2), (9, 1, 1.0, 3), (10, 40, 1.0, 4),
           (2, 1, 1.0, 5), (1, 1, 1.0, 6)]


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
@pytest.mark.parametrize("batch_size,num_classes,margin,seed", BATCHES)
def test_values_match_reference(loss_name, batch_size, num_classes, margin, seed):
  labels, embeddings = _batch(batch_size, num_classes, seed=seed)
  expected = REFERENCE_LOSSES[loss_name](labels, embeddings, margin)
  forward = numpy_vectorized.FORWARD[loss_name](labels, embeddings, margin)
  loss, gradient = numpy_vectorized.FORWARD_AND_BACKWARD[loss_name](labels, embeddings, margin)
  np.testing.assert_allclose(forward, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-6)
  assert gradient.shape == embeddings.shape and gradient.dtype == np.float32


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
@pytest.mark.parametrize("batch_size,num_classes,margin,seed", BATCHES[:5])
def test_gradients_match_finite_differences_of_reference(loss_name, batch_size, num_classes,
                                                        margin, seed):
  labels, embeddings = _batch(batch_size, num_classes, dim=4, seed=seed)
  _, gradient = numpy_vectorized.FORWARD_AND_BACKWARD[loss_name](labels, embeddings, margin)
  expected = _reference_gradient(REFERENCE_LOSSES[loss_name], labels, embeddings, margin)
  np.testing.assert_allclose(gradient, expected, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("soft", [False, True])
def test_hard_soft_matches_reference(soft):
  labels, embeddings = _batch(20, 4, dim=4, seed=7)
  expected = reference.triplet_hard_loss(labels, embeddings, 0.5, soft=soft)
  loss, gradient = numpy_vectorized.triplet_hard_loss_and_grad(labels, embeddings, 0.5, soft=soft)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(
      numpy_vectorized.triplet_hard_loss(labels, embeddings, 0.5, soft=soft), expected, rtol=1e-5)
  finite_differences = _reference_gradient(reference.triplet_hard_loss, labels, embeddings, 0.5,
                                          soft=soft)
  np.testing.assert_allclose(gradient, finite_differences, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_duplicate_embeddings_and_ties_give_finite_gradients(loss_name):
  # Duplicated rows (distance 0 within and across classes) and repeated distances.
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2], np.int32)
  embeddings = np.array([[0, 0], [0, 0], [1, 0], [0, 0], [2, 0], [1, 0], [0, 3], [0, 3]],
                        np.float32)
  expected = REFERENCE_LOSSES[loss_name](labels, embeddings, 1.0)
  loss, gradient = numpy_vectorized.FORWARD_AND_BACKWARD[loss_name](labels, embeddings, 1.0)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-7)
  assert np.all(np.isfinite(gradient))


@pytest.mark.parametrize("loss_name", ["semihard", "batch_all"])
def test_sorting_baselines_resolve_ties_like_the_package(loss_name):
  # Integer coordinates: exact distances with many ties (positives level with negatives,
  # negatives level with each other). The gradient then follows the package's tie rules,
  # which the float64 oracle of the tests implements independently.
  rng = np.random.default_rng(12)
  labels = rng.integers(0, 4, size=40).astype(np.int32)
  embeddings = oracle.integer_grid(rng, 40, dim=4)
  distances = oracle.distances(embeddings, "l2")
  oracle.check_exact_decisions(distances, [1.0])
  mined = oracle.MINERS[loss_name](labels, distances, 1.0)
  expected = oracle.embedding_gradient(embeddings, distances, mined.distance_gradient,
                                              "l2")
  loss, gradient = numpy_vectorized.FORWARD_AND_BACKWARD[loss_name](labels, embeddings, 1.0)
  np.testing.assert_allclose(loss, mined.loss, rtol=1e-6)
  np.testing.assert_allclose(numpy_vectorized.FORWARD[loss_name](labels, embeddings, 1.0),
                             mined.loss, rtol=1e-6)
  np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-7)


def test_no_positive_pair_gives_zero_loss_and_gradient():
  labels, embeddings = _batch(12, 1000, seed=8)
  labels = np.arange(12, dtype=np.int32)
  for loss_name in ("semihard", "batch_all"):
    loss, gradient = numpy_vectorized.FORWARD_AND_BACKWARD[loss_name](labels, embeddings, 1.0)
    assert loss == 0.0 and not gradient.any()
    assert numpy_vectorized.FORWARD[loss_name](labels, embeddings, 1.0) == 0.0


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_matches_jax_losses_on_a_larger_batch(loss_name):
  labels, embeddings = _batch(160, 10, dim=16, seed=9)
  jax_loss, jax_gradient = jax.jit(jax.value_and_grad(
      lambda x: losses.MINED_LOSSES[loss_name](jnp.asarray(labels), x, margin=1.0)))(
          jnp.asarray(embeddings))
  loss, gradient = numpy_vectorized.FORWARD_AND_BACKWARD[loss_name](labels, embeddings, 1.0)
  np.testing.assert_allclose(loss, float(jax_loss), rtol=1e-5)
  np.testing.assert_allclose(gradient, np.asarray(jax_gradient), rtol=1e-3, atol=1e-6)


def test_baseline_imports_nothing_from_the_package():
  # Agreement with the JAX losses means something only if the two share no code.
  import ast

  tree = ast.parse(Path(numpy_vectorized.__file__).read_text())
  imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
              for alias in node.names]
  imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
  assert "numpy" in imported
  assert not [name for name in imported if name.split(".")[0] == "tripletjax"], imported


def test_rejects_bad_inputs():
  labels, embeddings = _batch(4, 2)
  with pytest.raises(ValueError):
    numpy_vectorized.triplet_semihard_loss(labels[:3], embeddings)
  with pytest.raises(ValueError):
    numpy_vectorized.contrastive_loss(labels, embeddings, margin=-1.0)
  with pytest.raises(TypeError):
    numpy_vectorized.batch_all_triplet_loss(labels.astype(np.float32), embeddings)
