"""Tests for the vectorised NumPy baselines of the benchmark (`benchmarks.numpy_vectorized`).

Values must match the loop reference `tripletjax.reference`, and the analytic gradients must
match central finite differences of the reference (float64, so the differences are accurate).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# `benchmarks` is not an installed package; `python -m pytest` finds it from the repository root,
# a bare `pytest` needs the root on the path.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
  sys.path.insert(0, _REPO_ROOT)

from benchmarks import numpy_vectorized  # noqa: E402
from tripletjax import losses  # noqa: E402
from tripletjax import reference  # noqa: E402

LOSS_NAMES = ("semihard", "hard", "batch_all", "contrastive")

REFERENCE_LOSSES = {
    "semihard": reference.triplet_semihard_loss,
    "hard": reference.triplet_hard_loss,
    "batch_all": reference.batch_all_triplet_loss,
    "contrastive": reference.contrastive_loss,
}


def _batch(batch_size: int, num_classes: int, dim: int = 6, seed: int = 0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, batch_size).astype(np.int32)
  embeddings = rng.standard_normal((batch_size, dim)).astype(np.float32)
  return labels, embeddings


def _reference_gradient(loss_name: str, labels, embeddings, margin: float,
                        step: float = 1e-5) -> np.ndarray:
  """Central finite differences of the float64 reference loss."""
  loss_fn = REFERENCE_LOSSES[loss_name]
  point = embeddings.astype(np.float64)
  gradient = np.zeros_like(point)
  for index in np.ndindex(point.shape):
    shifted = point.copy()
    shifted[index] += step
    above = loss_fn(labels, shifted, margin)
    shifted[index] -= 2 * step
    below = loss_fn(labels, shifted, margin)
    gradient[index] = (above - below) / (2 * step)
  return gradient


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
  expected = _reference_gradient(loss_name, labels, embeddings, margin)
  np.testing.assert_allclose(gradient, expected, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("soft", [False, True])
def test_hard_soft_matches_reference(soft):
  labels, embeddings = _batch(20, 4, dim=4, seed=7)
  expected = reference.triplet_hard_loss(labels, embeddings, 0.5, soft=soft)
  loss, gradient = numpy_vectorized.triplet_hard_loss_and_grad(labels, embeddings, 0.5, soft=soft)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(
      numpy_vectorized.triplet_hard_loss(labels, embeddings, 0.5, soft=soft), expected, rtol=1e-5)
  step, finite_differences = 1e-5, np.zeros(embeddings.shape)
  for index in np.ndindex(embeddings.shape):
    shifted = embeddings.astype(np.float64)
    shifted[index] += step
    above = reference.triplet_hard_loss(labels, shifted, 0.5, soft=soft)
    shifted[index] -= 2 * step
    below = reference.triplet_hard_loss(labels, shifted, 0.5, soft=soft)
    finite_differences[index] = (above - below) / (2 * step)
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


def test_no_positive_pair_gives_zero_loss_and_gradient():
  labels, embeddings = _batch(12, 1000, seed=8)
  labels = np.arange(12, dtype=np.int32)
  for loss_name in ("semihard", "batch_all"):
    loss, gradient = numpy_vectorized.FORWARD_AND_BACKWARD[loss_name](labels, embeddings, 1.0)
    assert loss == 0.0 and not gradient.any()
    assert numpy_vectorized.FORWARD[loss_name](labels, embeddings, 1.0) == 0.0


_JAX_LOSSES = {
    "semihard": losses.triplet_semihard_loss,
    "hard": losses.triplet_hard_loss,
    "batch_all": losses.batch_all_triplet_loss,
    "contrastive": losses.contrastive_loss,
}


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_matches_jax_losses_on_a_larger_batch(loss_name):
  labels, embeddings = _batch(160, 10, dim=16, seed=9)
  jax_loss, jax_gradient = jax.jit(jax.value_and_grad(
      lambda x: _JAX_LOSSES[loss_name](jnp.asarray(labels), x, 1.0)))(jnp.asarray(embeddings))
  loss, gradient = numpy_vectorized.FORWARD_AND_BACKWARD[loss_name](labels, embeddings, 1.0)
  np.testing.assert_allclose(loss, float(jax_loss), rtol=1e-5)
  np.testing.assert_allclose(gradient, np.asarray(jax_gradient), rtol=1e-3, atol=1e-6)


def test_rejects_bad_inputs():
  labels, embeddings = _batch(4, 2)
  with pytest.raises(ValueError):
    numpy_vectorized.triplet_semihard_loss(labels[:3], embeddings)
  with pytest.raises(ValueError):
    numpy_vectorized.contrastive_loss(labels, embeddings, margin=-1.0)
  with pytest.raises(TypeError):
    numpy_vectorized.batch_all_triplet_loss(labels.astype(np.float32), embeddings)


def test_benchmark_script_runs_and_writes_json(tmp_path, capsys):
  from benchmarks import miners

  out = tmp_path / "miners.json"
  results = miners.main(["--batch-sizes", "16", "--dims", "4", "--losses", "hard",
                         "--memory", "xla", "--min-time", "0.001", "--out", str(out)])
  assert out.exists() and len(results["cases"]) == 2
  for case in results["cases"]:
    assert case["jax_ms"] > 0 and case["numpy_ms"] > 0
    assert case["loss_relative_difference"] < 1e-5
  assert results["cases"][0]["reference_ms"] is not None  # forward, B <= 256
  assert results["cases"][1]["reference_ms"] is None      # forward+backward: no reference
  assert "| hard | forward | 16 | 4 |" in capsys.readouterr().out


def test_benchmark_script_times_the_xla_mining_backend(tmp_path):
  from benchmarks import miners

  results = miners.main(["--batch-sizes", "16", "--dims", "4", "--losses", "semihard",
                         "--modes", "forward+backward", "--mining-backend", "xla",
                         "--memory", "subprocess", "--min-time", "0.001",
                         "--out", str(tmp_path / "miners.json")])
  assert results["config"]["mining_backend"] == "xla"
  (case,) = results["cases"]
  assert case["loss_relative_difference"] < 1e-5 and case["memory"]["peak_rss_mb"] > 0
