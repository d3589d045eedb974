"""The L2 normalisation every model ends with (`tripletjax.app.models.embedding`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tripletjax.app.models import normalize_embeddings


def test_normalize_embeddings_matches_tf_l2_normalize_and_handles_zero_rows():
  raw = jnp.array([[3.0, 4.0], [0.0, 0.0], [1e-8, 0.0]])
  output = jax.jit(normalize_embeddings)(raw)
  # tf.math.l2_normalize: x / sqrt(max(|x|^2, 1e-12)), so tiny rows are scaled by 1e6.
  np.testing.assert_allclose(output.embeddings, [[0.6, 0.8], [0.0, 0.0], [1e-2, 0.0]],
                             rtol=1e-6)
  np.testing.assert_allclose(output.norms, [5.0, 0.0, 1e-8], rtol=1e-6)

  def total(x):
    output = normalize_embeddings(x)
    return jnp.sum(output.embeddings) + jnp.sum(output.norms)

  grads = jax.jit(jax.grad(total))(raw)
  assert np.all(np.isfinite(grads))
