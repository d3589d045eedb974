"""The train step split at the embeddings, and virtual batches (cached gradients).

The direct step (`train_step`) is one compiled program: forward pass, mined loss, backward pass,
update. The split step computes the same gradient in three parts:

  1. embed (one program, sharded over the mesh): the embeddings [B, E] of the global batch;
  2. loss (between the programs, on one device of every process): the loss over the whole
     batch and its gradient d loss / d embeddings [B, E]. On a CPU the sorting miners run in
     NumPy here (`train_step.make_loss_fn(..., single_device=True)`), even when the model runs
     on several devices:
     a host callback inside a program sharded over several CPU devices deadlocks XLA:CPU's
     collectives, so the direct step must sort inside XLA there, several times slower;
  3. update (one program, sharded): the backward pass of the model with that cotangent, the
     parameter gradient summed over the whole batch, one optimizer update.

Two ways to get from 1 to 3:

  * "split": step 1 runs the forward pass under `jax.vjp` and returns its pullback (a pytree of
    residuals, kept on the devices); step 3 applies it. One forward and one backward pass, as
    in the direct step, and the same memory.
  * "recompute" (cached gradients, Gao et al. 2021, "Scaling Deep Contrastive Learning Batch
    Size under Memory Limited Setup"): step 1 embeds the batch chunk by chunk and keeps no
    activations; step 3 re-runs each chunk's forward pass under `jax.vjp` and applies that
    chunk's rows of the cotangent, accumulating the parameter gradient. The activations of one
    chunk (B / (devices x `config.model.forward_chunks`) rows per device) are all the memory the
    model needs, whatever the batch size: a virtual batch. It costs one more forward pass.

Both give the direct step's gradient, because the loss couples the examples only through their
embeddings: d loss / d params = sum over chunks c of (d e_c / d params)^T (d loss / d e_c).

Chunks, dropout and BatchNorm: every step embeds the batch in `config.model.forward_chunks`
chunks, chunk c holding the c-th slice of every device's rows (`mesh.to_chunks`), the same
chunks as the direct step. Dropout masks are drawn per chunk from the model's dropout stream;
the recomputation starts that stream from the same state, so each chunk gets the same masks in
both passes. BatchNorm normalises each chunk by its own statistics ("ghost" batches, as the
direct step does with `forward_chunks`); the running statistics are those the first pass
updated, chunk after chunk; the recomputation's updates are discarded, so they are updated
once per step, exactly as in the direct step. With the same chunks the three steps compute the
same function: the tests compare their gradients, dropout and BatchNorm included.

Non-finite steps: as in the direct step, a step whose loss or gradient is not finite leaves the
parameters, the optimizer state and the BatchNorm statistics as they were (the dropout streams
advance).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tripletjax.app.devices import mesh as mesh_lib
from tripletjax.app.step import optimizers

# The ways to split a step at the embeddings (see the module docstring).
SPLIT_STEPS = ("split", "recompute")


def _embed_chunks(graphdef, params, rest, chunks, trainable):
  """The model on each chunk in turn, threading its non-parameter state (BatchNorm statistics,
  dropout stream counts) from chunk to chunk.

  Args:
    graphdef, params, rest: the model, `nnx.split(model, trainable, ...)`.
    chunks: [K, N, H, W, C] images, K chunks of N rows.
    trainable: the filter of the parameters the optimizer updates (`models.trainable_filter`).

  Returns:
    `((embeddings [K, N, E], norms [K, N]), rest after the K chunks)`.
  """
  def one_chunk(rest, images):
    model = nnx.merge(graphdef, params, rest, copy=True)
    output = model(images)
    return nnx.state(model, nnx.Not(trainable)), (output.embeddings, output.norms)
  rest, outputs = jax.lax.scan(one_chunk, rest, chunks)
  return outputs, rest


def _embed_keeping_pullback(model, images, *, num_chunks, trainable):
  """Embeddings [B, E], norms [B], the model's new non-parameter state, and the pullback of
  the embeddings (its residuals: the activations of the forward pass)."""
  graphdef, params, rest = nnx.split(model, trainable, ...)

  def embed(params):
    model = nnx.merge(graphdef, params, rest, copy=True)
    output = mesh_lib.apply_in_chunks(model, images, num_chunks)
    return output.embeddings, (output.norms, nnx.state(model, nnx.Not(trainable)))
  embeddings, pullback, (norms, new_rest) = jax.vjp(embed, params, has_aux=True)
  return embeddings, norms, new_rest, pullback


def _embed_without_activations(model, images, *, num_chunks, trainable):
  """Embeddings [B, E], norms [B] and the model's new non-parameter state; no activations
  are kept. The chunks run in a `lax.scan`: XLA frees each chunk's activations."""
  graphdef, params, rest = nnx.split(model, trainable, ...)
  (embeddings, norms), new_rest = _embed_chunks(
      graphdef, params, rest, mesh_lib.to_chunks(images, num_chunks), trainable)
  return mesh_lib.from_chunks(embeddings), mesh_lib.from_chunks(norms), new_rest, None


def _pull_back(pullback, cotangent, *, replicated):
  """The parameter gradient: the pullback of `_embed_keeping_pullback` applied to
  d loss / d embeddings [B, E]. XLA sums the devices' parts (an all-reduce)."""
  (gradient,) = pullback(cotangent)
  return jax.lax.with_sharding_constraint(gradient, replicated)


def _add_chunk_gradient(model, total, rest, images, cotangent, chunk, *, num_chunks,
                        trainable):
  """`total` + the parameter gradient of chunk `chunk`, its forward pass re-run from `rest`.

  One chunk per call: XLA:CPU runs the backward pass of a convolution inside a loop
  (`lax.scan`) several times slower than outside one, and separate calls keep no more than one
  chunk's activations alive, whatever XLA's scheduler would do with an unrolled loop.

  Args:
    model: the model before the step (its parameters).
    total: the gradient of the chunks before `chunk`, like `nnx.state(model, trainable)`.
    rest: the model's non-parameter state before chunk `chunk` in the first pass.
    images: [B, H, W, C], the batch. cotangent: [B, E], d loss / d embeddings.
    chunk: the chunk's index (traced: one compilation serves every chunk).

  Returns:
    `(total + this chunk's gradient, the non-parameter state after the chunk)`.
  """
  graphdef, params, _ = nnx.split(model, trainable, ...)

  def embed(params):
    chunk_model = nnx.merge(graphdef, params, rest, copy=True)
    output = chunk_model(mesh_lib.chunk_of(images, num_chunks, chunk))
    return output.embeddings, nnx.state(chunk_model, nnx.Not(trainable))
  _, pullback, rest = jax.vjp(embed, params, has_aux=True)
  (gradient,) = pullback(mesh_lib.chunk_of(cotangent, num_chunks, chunk))
  return jax.tree.map(jnp.add, total, gradient), rest


def _update(model, optimizer, gradient, new_rest, loss, norms, *, schedule, replicated):
  """One optimizer update with `gradient` and the forward pass's non-parameter state, unless
  the loss or the gradient is not finite: then the parameters, the optimizer state and the
  BatchNorm statistics stay as they were (the dropout counts advance), as in the direct step.
  """
  before = optimizers.state_before_update(model, optimizer)
  nnx.update(model, new_rest)
  learning_rate = schedule(optimizer.step.value)  # This step's.
  finite = optimizers.update_if_finite(model, optimizer, gradient, loss, before)
  metrics = {"embedding_norm": jnp.mean(norms), "learning_rate": learning_rate,
             "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}
  return jax.lax.with_sharding_constraint(metrics, replicated)


@dataclasses.dataclass
class StepGradient:
  """What a split step computes before its update.

  Attributes:
    loss: the loss over the global batch (a NumPy scalar, the same on every process).
    stats: the loss's mining statistics (NumPy scalars).
    norms: [B] the embeddings' norms before normalisation, sharded like the batch.
    gradient: d loss / d trainable parameters, like `nnx.state(model, trainable)`,
      replicated.
    new_rest: the model's non-parameter state after the forward pass (BatchNorm statistics,
      dropout counts), not yet written into the model.
  """
  loss: np.ndarray
  stats: dict
  norms: jax.Array
  gradient: Any
  new_rest: Any


class SplitTrainStep:
  """The split train step, called like the direct one: `step(model, optimizer, images, labels)`
  returns the same metrics and updates `model` and `optimizer` in place.

  Args:
    loss_fn: `(labels, embeddings) -> (loss, stats)` for a program on one device (e.g.
      `train_step.make_loss_fn(config.loss, single_device=True)`), computed on the whole
      global batch between the two programs.
    schedule: the optimizer's learning-rate schedule (for the logged learning rate).
    mesh: the mesh of `mesh.make_mesh`; the state is replicated over it.
    num_chunks: K, the chunks each device's rows are embedded in (`config.model.forward_chunks`).
    trainable: the filter of the parameters the optimizer updates (`models.trainable_filter`;
      `nnx.Param` when nothing is frozen): the gradient is taken with respect to them.
    recompute: keep no activations between the programs and re-run each chunk's forward pass
      for the gradient ("recompute"), or keep the forward pass's residuals ("split").
  """

  def __init__(self, loss_fn: Callable, schedule, mesh, num_chunks: int, trainable=nnx.Param,
               *, recompute: bool):
    self.mesh = mesh
    self.num_chunks = num_chunks
    self.recompute = recompute
    replicated = mesh_lib.replicated(mesh)
    self._loss_and_gradient = jax.jit(jax.value_and_grad(
        lambda embeddings, labels: loss_fn(labels, embeddings), has_aux=True))
    self._loss_device = jax.local_devices()[0]
    embed = _embed_without_activations if recompute else _embed_keeping_pullback
    self.trainable = trainable
    self._embed = nnx.jit(functools.partial(embed, num_chunks=num_chunks, trainable=trainable),
                          graph=False)
    self._pull_back = jax.jit(functools.partial(_pull_back, replicated=replicated))
    self._add_chunk_gradient = nnx.jit(
        functools.partial(_add_chunk_gradient, num_chunks=num_chunks, trainable=trainable),
        graph=False)
    self._update = nnx.jit(
        functools.partial(_update, schedule=schedule, replicated=replicated), graph=False)

  def loss_and_cotangent(self, embeddings: jax.Array, labels: jax.Array):
    """The loss over the global batch and d loss / d embeddings, sharded like `embeddings`.

    Every process mines the whole batch on one of its devices: the loss and its cotangent come
    out the same on all of them, and each keeps the rows of its own devices.

    Args:
      embeddings: [B, E], sharded over the mesh. labels: [B], sharded likewise.

    Returns:
      `(loss, stats, cotangent [B, E])`: NumPy scalars and a sharded array.
    """
    host_embeddings, host_labels = mesh_lib.gather_to_host(embeddings, labels)
    (loss, stats), cotangent = self._loss_and_gradient(
        jax.device_put(host_embeddings, self._loss_device),
        jax.device_put(host_labels, self._loss_device))
    (cotangent,) = mesh_lib.shard_batch(self.mesh, np.asarray(cotangent))
    loss, stats = jax.device_get((loss, stats))
    return loss, stats, cotangent

  def recomputed_gradient(self, model, images: jax.Array, cotangent: jax.Array):
    """The sum over chunks of each chunk's forward pass, re-run, pulled back with its rows of
    the cotangent. The chunks start from the model's state before the step, as the first pass
    did, so each draws the same dropout masks; their BatchNorm updates are discarded."""
    rest = jax.tree.map(jnp.asarray, nnx.state(model, nnx.Not(self.trainable)))  # A copy.
    total = jax.tree.map(jnp.zeros_like, nnx.state(model, self.trainable))
    for chunk in range(self.num_chunks):
      total, rest = self._add_chunk_gradient(model, total, rest, images, cotangent,
                                             np.int32(chunk))
      # One chunk in flight at a time: with many queued executions that hold collectives,
      # XLA:CPU's devices can stall at a rendezvous until it times out and aborts the process.
      jax.block_until_ready(total)
    return total

  def gradient(self, model, images: jax.Array, labels: jax.Array) -> StepGradient:
    """The loss and its parameter gradient over the global batch; `model` is not changed.

    Args:
      model: the embedding model, replicated over the mesh.
      images: [B, H, W, C] and labels: [B], sharded over the mesh (`mesh.shard_batch`).
    """
    embeddings, norms, new_rest, pullback = self._embed(model, images)
    loss, stats, cotangent = self.loss_and_cotangent(embeddings, labels)
    if self.recompute:
      gradient = self.recomputed_gradient(model, images, cotangent)
    else:
      gradient = self._pull_back(pullback, cotangent)
    return StepGradient(loss, stats, norms, gradient, new_rest)

  def __call__(self, model, optimizer, images: jax.Array, labels: jax.Array) -> dict:
    step = self.gradient(model, images, labels)
    metrics = self._update(model, optimizer, step.gradient, step.new_rest, step.loss,
                           step.norms)
    return {"loss": step.loss, **metrics, **step.stats}
