"""Pairwise distances (`tripletjax.distances`) against the reference, and their gradients at 0."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tripletjax
from tripletjax import reference

FEATURES = 8
METRICS = ("l2", "squared_l2", "angular")


_jitted_distances = jax.jit(tripletjax.pairwise_distances, static_argnames="metric")


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distances_match_reference(metric):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(9, FEATURES)).astype(np.float32)
  y = rng.normal(size=(4, FEATURES)).astype(np.float32)
  distances = np.asarray(_jitted_distances(x, metric=metric))
  np.testing.assert_allclose(distances, reference.pairwise_distances(x, metric=metric),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.diag(distances), 0.0)
  np.testing.assert_allclose(np.asarray(_jitted_distances(x, y, metric=metric)),
                             reference.pairwise_distances(x, y, metric=metric), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distances_have_finite_gradients_on_duplicates(metric):
  x = np.repeat(np.random.default_rng(2).normal(size=(2, 3)).astype(np.float32), 2, axis=0)
  distances = _jitted_distances(x, metric=metric)
  if metric != "angular":  # Angular duplicates are 1 - cos in float32: 0 or ~1e-8.
    assert float(distances[0, 1]) == 0.0
  gradient = jax.jit(jax.grad(
      lambda e: jnp.sum(tripletjax.pairwise_distances(e, metric=metric))))(x)
  assert np.all(np.isfinite(np.asarray(gradient)))
