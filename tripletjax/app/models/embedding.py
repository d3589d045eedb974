"""What every embedding model returns, and the L2 normalisation that produces it."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class EmbeddingOutput(NamedTuple):
  """What every embedding model returns.

  Attributes:
    embeddings: [B, E] float32, L2-normalised rows (an all-zero row stays zero).
    norms: [B] float32, L2 norm of each embedding before normalisation.
  """
  embeddings: jax.Array
  norms: jax.Array


def normalize_embeddings(raw_embeddings: jax.Array, eps: float = 1e-12) -> EmbeddingOutput:
  """L2-normalises rows the way `tf.math.l2_normalize` does and keeps their norms.

  Args:
    raw_embeddings: [B, E] output of the model's last Dense layer.
    eps: floor on the squared norm, so all-zero rows give zeros instead of NaNs.

  Returns:
    `EmbeddingOutput` with `embeddings` [B, E] = x / sqrt(max(|x|^2, eps)) and `norms` [B].
  """
  squared_norms = jnp.sum(raw_embeddings * raw_embeddings, axis=-1)
  inverse_norms = jax.lax.rsqrt(jnp.maximum(squared_norms, eps))
  # The gradient of sqrt is infinite at 0, and a NaN in the unused branch of a `where`
  # still poisons the gradient, so zero rows take the square root of a harmless 1.
  is_nonzero = squared_norms > 0
  norms = jnp.where(is_nonzero, jnp.sqrt(jnp.where(is_nonzero, squared_norms, 1.0)), 0.0)
  return EmbeddingOutput(raw_embeddings * inverse_norms[:, None], norms)
