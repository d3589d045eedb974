"""Cross-batch memory (XBM): mine a batch's anchors against the embeddings of past batches.

Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020: embeddings drift slowly,
so those of the last few thousand examples can serve as references for the current batch's
anchors, and a small batch mines like a large one.

The memory is a functional ring buffer, `CrossBatchMemory` (a pytree of arrays: it goes
through `jax.jit`, is donated, sharded and checkpointed with the train state):

    memory = tripletjax.memory.init(memory_size=4096, embedding_dim=128)
    loss, memory = tripletjax.memory.cross_batch_loss("multi_similarity", memory, labels,
                                                      embeddings)

`cross_batch_loss` computes exactly what pytorch-metric-learning 2.9's
`CrossBatchMemory(loss, embedding_size, memory_size)` does on each call:

  1. the batch (its embeddings with no gradient) is written into the memory at the write
     position, wrapping around (`update`);
  2. the loss is that of the batch's anchors against the filled part of the memory (the
     batch included): an anchor's positives are the same-label memory slots but its own,
     its negatives the other-label slots. The multi-similarity miner, as
     pytorch-metric-learning's, still sees the own slot as a positive (it is removed after
     mining). Only the anchors carry gradient.

Under `jax.shard_map` (`axis_name`) every device gathers the global batch and writes it in
the global order, so the memory is the same on every device and process; each device mines
its own anchors against it and the sums are totalled over the devices. A batch whose
embeddings are not all finite gives a NaN loss and is not written, so one bad step does not
poison later ones. A memory of size 0 gives the plain loss, bit for bit.

Memory: O(B x (B + M)) per step (O(B x M / N) per device).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tripletjax import similarity_losses
from tripletjax import validation
from tripletjax.finite import finish
from tripletjax.mining import shards


class CrossBatchMemory(NamedTuple):
  """The memory: a ring buffer of the last `M` embeddings and labels."""
  embeddings: jax.Array  # [M, D] float32.
  labels: jax.Array      # [M] int32.
  count: jax.Array       # int32 scalar: the filled slots, min(examples written, M).
  position: jax.Array    # int32 scalar: the slot the next example is written to.


# The losses a memory serves (those of `tripletjax.similarity_losses`).
MEMORY_LOSSES = tuple(similarity_losses.LOSSES)


def init(memory_size: int, embedding_dim: int) -> CrossBatchMemory:
  """An empty memory of `memory_size` slots (0: no memory) for `embedding_dim` embeddings."""
  if memory_size < 0 or embedding_dim < 1:
    raise ValueError(f"memory_size must be >= 0 and embedding_dim >= 1, got {memory_size} and "
                     f"{embedding_dim}.")
  return CrossBatchMemory(jnp.zeros((memory_size, embedding_dim), jnp.float32),
                          jnp.zeros((memory_size,), jnp.int32), jnp.zeros((), jnp.int32),
                          jnp.zeros((), jnp.int32))


def update(memory: CrossBatchMemory, labels: jax.Array,
           embeddings: jax.Array) -> CrossBatchMemory:
  """`memory` with the batch (`labels[B]`, `embeddings[B, D]`, B <= M) written at its position.

  The rows go to slots (position + i) mod M in order; no gradient flows into the memory.
  """
  memory_size, batch = memory.labels.shape[0], labels.shape[0]
  _check_fits(memory, batch, embeddings.shape[1])
  slots = (memory.position + jnp.arange(batch, dtype=jnp.int32)) % memory_size
  return CrossBatchMemory(
      memory.embeddings.at[slots].set(jax.lax.stop_gradient(embeddings).astype(jnp.float32)),
      memory.labels.at[slots].set(labels.astype(jnp.int32)),
      jnp.minimum(memory.count + batch, memory_size).astype(jnp.int32),
      ((memory.position + batch) % memory_size).astype(jnp.int32))


def _check_fits(memory: CrossBatchMemory, batch: int, embedding_dim: int) -> None:
  memory_size, memory_dim = memory.embeddings.shape
  if batch > memory_size:
    raise ValueError(f"The batch of {batch} does not fit in a cross-batch memory of "
                     f"{memory_size}; memory_size must be >= the (global) batch size.")
  if embedding_dim != memory_dim:
    raise ValueError(f"The embeddings have {embedding_dim} dimensions, the memory "
                     f"{memory_dim}.")


def memory_pairs(batch: similarity_losses.Batch, memory: CrossBatchMemory,
                 start: jax.Array) -> similarity_losses.Pairs:
  """The pairs of this device's anchors with the filled slots of `memory`, into which the
  batch was written from slot `start`."""
  memory_size = memory.labels.shape[0]
  similarity = similarity_losses.cosine_similarity(batch.embeddings[batch.anchor_index],
                                                   jax.lax.stop_gradient(memory.embeddings))
  same = batch.labels[batch.anchor_index][:, None] == memory.labels[None, :]
  slot = jax.lax.broadcasted_iota(jnp.int32, same.shape, 1)
  filled = slot < memory.count
  own_slot = (start + batch.anchor_index[:, None]) % memory_size
  return similarity_losses.Pairs(similarity, same & filled & (slot != own_slot),
                                 ~same & filled, same & filled, batch.labels.shape[0],
                                 batch.axis_name)


def _global_batch(labels, embeddings, batch: similarity_losses.Batch, axis_name: str | None):
  """(labels [B], embeddings [B, D] float32) of the global batch, with no gradient, to write:
  under `axis_name` gathered so that they are typed as the same on every device, as the
  memory they go into."""
  if axis_name is None or shards.axis_size(axis_name) == 1:
    return batch.labels, jax.lax.stop_gradient(batch.embeddings)
  labels, embeddings = validation.check_labels_and_embeddings(labels, embeddings)
  return (shards.gather_replicated(labels.astype(jnp.int32), axis_name),
          shards.gather_replicated(jax.lax.stop_gradient(embeddings).astype(jnp.float32),
                                   axis_name))


def _loss_name(loss) -> str:
  """The name in `MEMORY_LOSSES` of `loss`, a name or one of the loss functions."""
  for name, fn in similarity_losses.LOSSES.items():
    if loss == name or loss is fn:
      return name
  raise ValueError(f"A cross-batch memory serves the losses {MEMORY_LOSSES}, got {loss!r}.")


def cross_batch_loss(loss, memory: CrossBatchMemory, labels, embeddings, *,
                     return_stats: bool = False, axis_name: str | None = None, **options):
  """The loss of the batch's anchors against the memory with the batch written in, and that
  memory: pytorch-metric-learning's `CrossBatchMemory(loss, D, M)(embeddings, labels)`.

  Args:
    loss: "multi_similarity", "ntxent" or "supcon", or the function of that name.
    memory: a `CrossBatchMemory` (`init`); the same on every device under `axis_name`.
    labels: [B] integer class ids (this device's rows under `axis_name`).
    embeddings: [B, D] float embeddings (idem).
    return_stats: also return the loss's statistics (those of the loss function).
    axis_name: inside `jax.shard_map`, the mesh axis the batch is split over; the memory is
      replicated and receives the global batch in the global order on every device.
    **options: the loss's options (e.g. `alpha`, `temperature`).

  Returns:
    `(loss, memory)`, or `((loss, stats), memory)` with `return_stats`: the loss in the dtype
    of `embeddings`, and the updated memory.
  """
  name = _loss_name(loss)
  if memory.labels.shape[0] == 0:
    plain = similarity_losses.LOSSES[name](labels, embeddings, return_stats=return_stats,
                                           axis_name=axis_name, **options)
    return plain, memory
  batch = similarity_losses.prepare(labels, embeddings, axis_name)
  start = memory.position
  written = update(memory, *_global_batch(labels, embeddings, batch, axis_name))
  pairs = memory_pairs(batch, written, start)
  value, stats = similarity_losses.OF_PAIRS[name](pairs, **options)
  # A non-finite batch is not written: its loss is NaN, and later batches stay finite.
  written = jax.tree.map(lambda new, old: jnp.where(batch.finite, new, old), written, memory)
  return finish(value, batch.dtype, stats, return_stats, batch.finite), written
