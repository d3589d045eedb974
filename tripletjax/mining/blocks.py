"""Mining a large batch in blocks of anchor rows, so peak memory stays bounded.

A block miner takes the distances from C anchors to all B examples ([C, B]) and the anchors'
indices. Small batches are one block (the whole [B, B] matrix); larger ones a `lax.scan` over
blocks of rows whose distances are computed inside the block and recomputed in the backward
pass (one matmul) instead of all being kept alive. With a batch split over devices
(`shards.ShardAnchors`) the blocks cover only this device's anchors: its [B / N, B] rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tripletjax import distances as distances_lib
from tripletjax.mining import shards

# A block holds at most this many distance-matrix entries (about 200 MB of working set), which
# bounds peak memory by what the backward pass keeps per entry (4 bytes for semi-hard, nothing
# for batch-hard) instead of ~50 bytes.
BLOCK_ENTRIES = 2048 * 2048


def over_anchor_blocks(block_fn, embeddings, metric, *, recompute_block: bool,
                       shard: shards.ShardAnchors | None = None):
  """Applies `block_fn(block_distances[C, B], anchor_index[C])` to blocks covering all anchors.

  The anchors are all B rows of `embeddings`, or with `shard` this device's rows of a batch
  split over a mesh axis (`embeddings` then holds the gathered batch): the blocks cover only
  those, so a device builds only its own rows of the distance matrix. `anchor_index` is -1 on
  the padding rows of the last block. With `recompute_block`, the whole block is recomputed in
  the backward pass (for miners without a custom gradient, whose autodiff residuals would
  otherwise be [C, B] arrays).

  Returns:
    The outputs of `block_fn`, stacked over blocks: [num_blocks, ...] each.
  """
  batch = embeddings.shape[0]
  anchors = jnp.arange(batch, dtype=jnp.int32) if shard is None else shard.index
  num_anchors = anchors.shape[0]
  # The batch size alone decides how the distances are computed (from the Gram diagonal's
  # norms, or from separately computed ones), so a row is the same whichever device mines it.
  if batch * batch <= BLOCK_ENTRIES:
    if shard is None:
      distances = distances_lib.pairwise_distances(embeddings, metric=metric)
    else:
      distances = distances_lib.shard_anchor_distances(
          embeddings, anchors, functools.partial(shards.gather, axis_name=shard.axis_name),
          metric)
    outputs = block_fn(distances, anchors)
    return jax.tree.map(lambda x: x[None], outputs)
  rows_per_block = min(max(1, BLOCK_ENTRIES // batch), num_anchors)
  num_blocks = -(-num_anchors // rows_per_block)
  padding = jnp.full((num_blocks * rows_per_block - num_anchors,), -1, jnp.int32)
  anchor_index = jnp.concatenate([anchors, padding])  # -1: padding rows.
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


def sum_over_anchor_blocks(sums_fn, labels, embeddings, margin, metric, mining_backend,
                           shard: shards.ShardAnchors | None = None):
  """Sums of a block miner (`semihard_sums`, `batch_all_sums`) over all anchors (this device's
  with `shard`, not yet summed over devices)."""
  per_block = over_anchor_blocks(
      lambda distances, anchor_index: sums_fn(distances, anchor_index, labels, margin,
                                              mining_backend),
      embeddings, metric, recompute_block=False, shard=shard)
  return jax.tree.map(lambda x: jnp.sum(x, axis=0), per_block)


def map_over_anchor_blocks(block_fn, labels, embeddings, metric,
                           shard: shards.ShardAnchors | None = None):
  """Per-anchor results of `block_fn(block_distances, labels, anchor_index)`: [B, ...] each, or
  [b, ...] for this device's b anchors with `shard`."""
  per_block = over_anchor_blocks(
      lambda distances, anchor_index: block_fn(distances, labels, anchor_index),
      embeddings, metric, recompute_block=True, shard=shard)
  num_anchors = labels.shape[0] if shard is None else shard.index.shape[0]
  return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:num_anchors], per_block)
