"""Mining a large batch in blocks of anchor rows, so peak memory stays bounded.

A block miner takes the distances from C anchors to all B examples ([C, B]) and the anchors'
indices. Small batches are one block (the whole [B, B] matrix); larger ones a `lax.scan` over
blocks of rows whose distances are computed inside the block and recomputed in the backward
pass (one matmul) instead of all being kept alive.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tripletjax import distances as distances_lib

# A block holds at most this many distance-matrix entries (about 200 MB of working set), which
# bounds peak memory by what the backward pass keeps per entry (4 bytes for semi-hard, nothing
# for batch-hard) instead of ~50 bytes.
BLOCK_ENTRIES = 2048 * 2048


def over_anchor_blocks(block_fn, embeddings, metric, *, recompute_block: bool):
  """Applies `block_fn(block_distances[C, B], anchor_index[C])` to blocks covering all anchors.

  `anchor_index` is -1 on the padding rows of the last block. With `recompute_block`, the
  whole block is recomputed in the backward pass (for miners without a custom gradient, whose
  autodiff residuals would otherwise be [C, B] arrays).

  Returns:
    The outputs of `block_fn`, stacked over blocks: [num_blocks, ...] each.
  """
  batch = embeddings.shape[0]
  if batch * batch <= BLOCK_ENTRIES:
    distances = distances_lib.pairwise_distances(embeddings, metric=metric)
    outputs = block_fn(distances, jnp.arange(batch, dtype=jnp.int32))
    return jax.tree.map(lambda x: x[None], outputs)
  rows_per_block = max(1, BLOCK_ENTRIES // batch)
  num_blocks = -(-batch // rows_per_block)
  anchor_index = jnp.arange(num_blocks * rows_per_block, dtype=jnp.int32)
  anchor_index = jnp.where(anchor_index < batch, anchor_index, -1)  # -1: padding rows.
  squared_norms = jnp.sum(embeddings * embeddings, axis=1)
  block_distances_fn = jax.checkpoint(distances_lib.anchor_distances, static_argnums=(2,))

  def one_block(block_index):
    return block_fn(block_distances_fn(embeddings, block_index, metric, squared_norms),
                    block_index)

  if recompute_block:
    one_block = jax.checkpoint(one_block)
  _, outputs = jax.lax.scan(lambda carry, index: (carry, one_block(index)), None,
                            anchor_index.reshape(num_blocks, rows_per_block))
  return outputs


def sum_over_anchor_blocks(sums_fn, labels, embeddings, margin, metric, mining_backend):
  """Sums of a block miner (`semihard_sums`, `batch_all_sums`) over all anchors."""
  per_block = over_anchor_blocks(
      lambda distances, anchor_index: sums_fn(distances, anchor_index, labels, margin,
                                              mining_backend),
      embeddings, metric, recompute_block=False)
  return jax.tree.map(lambda x: jnp.sum(x, axis=0), per_block)


def map_over_anchor_blocks(block_fn, labels, embeddings, metric):
  """Per-anchor results of `block_fn(block_distances, labels, anchor_index)`: [B, ...] each."""
  per_block = over_anchor_blocks(
      lambda distances, anchor_index: block_fn(distances, labels, anchor_index),
      embeddings, metric, recompute_block=True)
  batch = labels.shape[0]
  return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:batch], per_block)
