"""A mined loss of a global batch sharded over the devices of a mesh: who mines what.

`sharded_loss(loss_fn, mesh, scope)` turns a loss of `tripletjax.losses` into a function of
the global `labels[B]` and `embeddings[B, D]`, sharded over a mesh axis (N devices holding b =
B / N rows each), to call under `jax.jit`. `MINING_SCOPES` says where the mining happens:

  * "global": each device mines its own b anchors against the embeddings of the whole batch,
    gathered with `lax.all_gather` (the losses' `axis_name`, inside `jax.shard_map`); the
    sums are `psum`-ed. Loss, statistics and gradients are those of the loss of the whole
    batch on one device (up to the order of float additions), with O(B^2 / N) memory and
    mining work per device.
  * "local": each device mines its b rows alone, as data-parallel training in TensorFlow or
    PyTorch does by default: negatives come from the same device only. The loss is the mean of
    the N per-device losses; of the statistics, the counts (`num_*`) are summed over the
    devices and the others averaged. A different loss from "global" (for comparisons).
  * "replicated": the embeddings are gathered and every device mines the whole batch: the loss
    of "global", at N times the mining work and O(B^2) memory per device (for comparisons).

With any scope, non-finite embeddings on any device make the loss NaN and every row of its
gradient NaN, as on one device.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tripletjax.mining import shards


def _split(output):
  """(loss, stats or None) of a loss's output."""
  return output if isinstance(output, tuple) else (output, None)


def _join(loss, stats):
  return loss if stats is None else (loss, stats)


def _global_scope(loss_fn: Callable, mesh, axis_name: str) -> Callable:
  return jax.shard_map(
      lambda labels, embeddings: loss_fn(labels, embeddings, axis_name=axis_name),
      mesh=mesh, in_specs=(P(axis_name), P(axis_name)), out_specs=P())


def _local_scope(loss_fn: Callable, mesh, axis_name: str) -> Callable:
  def per_device(labels, embeddings):
    finite = shards.all_devices(jnp.all(jnp.isfinite(embeddings)), axis_name)
    loss, stats = _split(loss_fn(labels, embeddings))
    # Non-finite embeddings on any device: a NaN loss and NaN gradients on every device (a
    # factor of 1 otherwise, which changes no bit).
    scale = jnp.where(finite, 1.0, jnp.nan)
    loss = jax.lax.pmean(loss * scale.astype(loss.dtype), axis_name)
    if stats is not None:
      stats = {name: jax.lax.psum(value, axis_name) if name.startswith("num_")
               else jax.lax.pmean(value * scale.astype(value.dtype), axis_name)
               for name, value in stats.items()}
    return _join(loss, stats)
  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(axis_name), P(axis_name)),
                       out_specs=P())


def _replicated_scope(loss_fn: Callable, mesh, axis_name: str) -> Callable:
  del axis_name
  replicated = NamedSharding(mesh, P())

  def everywhere(labels, embeddings):
    labels, embeddings = jax.lax.with_sharding_constraint((labels, embeddings), replicated)
    return loss_fn(labels, embeddings)
  return everywhere


# Scope name -> builder(loss_fn, mesh, axis_name) of the function of the sharded batch.
MINING_SCOPES: dict[str, Callable] = {
    "global": _global_scope,
    "local": _local_scope,
    "replicated": _replicated_scope,
}


def sharded_loss(loss_fn: Callable, mesh: jax.sharding.Mesh, scope: str = "global",
                 axis_name: str = "data") -> Callable:
  """`loss_fn` as a function of a global batch sharded over `axis_name` of `mesh`.

  Args:
    loss_fn: `(labels, embeddings, **options) -> loss` or `(loss, stats)`, e.g.
      `functools.partial(tripletjax.triplet_semihard_loss, margin=0.2, return_stats=True)`;
      the "global" scope passes it `axis_name` (every loss of `losses.MINED_LOSSES` takes it).
    mesh: the devices; the batch is split over its axis `axis_name`.
    scope: "global", "local" or "replicated" (`MINING_SCOPES`, see the module docstring).
    axis_name: the mesh axis the batch dimension is sharded over.

  Returns:
    `(labels[B], embeddings[B, D]) -> loss_fn's output`, the loss and statistics the same on
    every device. B must be a multiple of the axis size. Differentiable in `embeddings`.
  """
  if scope not in MINING_SCOPES:
    raise ValueError(f"Unknown mining scope {scope!r}; expected one of {tuple(MINING_SCOPES)}.")
  if axis_name not in mesh.axis_names:
    raise ValueError(f"The mesh has no axis {axis_name!r}; its axes are {mesh.axis_names}.")
  fn = MINING_SCOPES[scope](loss_fn, mesh, axis_name)
  num_devices = mesh.shape[axis_name]

  def loss_of_sharded_batch(labels, embeddings):
    batch = jnp.shape(embeddings)[0] if jnp.ndim(embeddings) else 0
    if batch % num_devices:
      raise ValueError(f"The batch size {batch} must be a multiple of the {num_devices} "
                       f"devices of mesh axis {axis_name!r}.")
    return fn(labels, embeddings)
  return loss_of_sharded_batch
