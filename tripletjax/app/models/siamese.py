"""The three-tower (Siamese) network of the Keras example: one embedding network applied to an
anchor, a positive and a negative image, and the distance layer on top.

The towers share every weight because they are one network: `embed_triplets` runs it once on
the three batches stacked ([3N, H, W, C]), which is also how the trainer runs a batch of
triplets (`tasks.pairs.PairTask`): in training mode BatchNorm then normalises over all 3N images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tripletjax import losses


class SiameseNetwork(nnx.Module):
  """(anchor, positive, negative) images -> (d_ap, d_an), squared L2 distances of embeddings.

  Attributes:
    embedding: the shared embedding network, images [B, H, W, C] -> `EmbeddingOutput`.
  """

  def __init__(self, embedding: nnx.Module):
    self.embedding = embedding

  def embed_triplets(self, anchor: jax.Array, positive: jax.Array, negative: jax.Array
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The embeddings [N, E] of each tower, from one pass of the shared network.

    Args:
      anchor, positive, negative: [N, H, W, C] images of the same shape.
    """
    if not anchor.shape == positive.shape == negative.shape:
      raise ValueError("anchor, positive and negative images must have the same shape, got "
                       f"{anchor.shape}, {positive.shape} and {negative.shape}.")
    embeddings = self.embedding(jnp.concatenate([anchor, positive, negative])).embeddings
    return tuple(jnp.split(embeddings, 3))

  def __call__(self, anchor: jax.Array, positive: jax.Array, negative: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """The distance layer's output: ([N] ||f(a) - f(p)||^2, [N] ||f(a) - f(n)||^2)."""
    return losses.triplet_distances(*self.embed_triplets(anchor, positive, negative))
