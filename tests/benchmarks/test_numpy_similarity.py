"""The vectorised NumPy baseline of the losses of cosine similarities
(`benchmarks.numpy_similarity`) against the package: values and gradients."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from benchmarks import numpy_similarity
from tripletjax import losses


@pytest.mark.parametrize("name", sorted(numpy_similarity.FORWARD))
@pytest.mark.parametrize("num_classes", [1, 3, 40])
def test_matches_the_package(name, num_classes):
  rng = np.random.default_rng(num_classes)
  labels = rng.integers(0, num_classes, 32).astype(np.int32)
  embeddings = rng.normal(size=(32, 8)).astype(np.float32)
  loss, grad = numpy_similarity.FORWARD_AND_BACKWARD[name](labels, embeddings, 1.0)
  expected, expected_grad = jax.value_and_grad(losses.MINED_LOSSES[name].fn, argnums=1)(
      labels, embeddings)
  assert numpy_similarity.FORWARD[name](labels, embeddings, 1.0) == pytest.approx(loss)
  np.testing.assert_allclose(loss, float(expected), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
