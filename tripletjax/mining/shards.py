"""Mining a batch split over the devices of a mesh axis, inside `jax.shard_map`.

Mining rows are independent: a device that holds rows [i b, (i + 1) b) of a global batch of
B = N b examples mines those b anchors against all B examples, so it needs the gathered [B, D]
embeddings (`lax.all_gather(..., tiled=True)`, whose transpose is a reduce-scatter: every
device's contribution to every example's gradient reaches the device that holds it) but only
its own [b, B] block of the distance matrix, O(B^2 / N) per device. The sums of the miners are
then `psum`-ed over the axis, so a loss is normalised exactly as on one device.

`ShardAnchors` says which anchors a call mines; `mining.blocks` builds their distance rows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class ShardAnchors(NamedTuple):
  """The anchors of this device: its rows of a batch split evenly over a mesh axis."""
  index: jax.Array  # [b] int32 index of each local anchor in the gathered batch.
  axis_name: str    # The mesh axis the batch is split over.


def shard_anchors(local_batch: int, axis_name: str) -> ShardAnchors:
  """This device's anchors: rows [i b, (i + 1) b) of the gathered batch, i its axis index.

  Args:
    local_batch: b, the rows each device holds.
    axis_name: the mesh axis (of the enclosing `shard_map`) the batch is split over.
  """
  start = jax.lax.axis_index(axis_name) * local_batch
  return ShardAnchors(start + jnp.arange(local_batch, dtype=jnp.int32), axis_name)


def gather(x: jax.Array, axis_name: str) -> jax.Array:
  """[N b, ...] the shards of all N devices in axis order, from this device's [b, ...]."""
  return jax.lax.all_gather(x, axis_name, tiled=True)


def gather_replicated(x: jax.Array, axis_name: str) -> jax.Array:
  """`gather(x)`, typed as the same on every device (a `psum` of each device's rows placed in
  zeros, exact but for the sign of a zero), for state that leaves `shard_map` replicated
  (`out_specs=P()`), such as a cross-batch memory. Not differentiable through: for values
  that carry no gradient."""
  local = x.shape[0]
  start = jax.lax.axis_index(axis_name) * local
  placed = jax.lax.dynamic_update_slice_in_dim(
      jnp.zeros((axis_size(axis_name) * local, *x.shape[1:]), x.dtype), x, start, axis=0)
  return jax.lax.psum(placed, axis_name)


def total(x, axis_name: str | None):
  """The sum of `x` over the devices of `axis_name` (a pytree); `x` itself when None."""
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def all_devices(flag: jax.Array, axis_name: str | None) -> jax.Array:
  """Whether the bool scalar `flag` holds on every device of `axis_name` (itself when None)."""
  if axis_name is None:
    return flag
  return jax.lax.psum(jnp.logical_not(flag).astype(jnp.int32), axis_name) == 0


def axis_size(axis_name: str | None) -> int:
  """The number of devices along `axis_name` (1 when None)."""
  return 1 if axis_name is None else jax.lax.axis_size(axis_name)


def vary_like(x, like: jax.Array):
  """`x` (a pytree) typed as varying over the manual mesh axes `like` varies over.

  Inside `shard_map` a `jax.pure_callback` returns values typed as equal on every device even
  when they are not (they are computed from this device's data); a custom gradient built from
  them must be typed like its primal. Outside `shard_map` this returns `x` unchanged.
  """
  varying = jax.typeof(like).manual_axis_type.varying

  def cast(leaf):
    missing = tuple(sorted(varying - jax.typeof(leaf).manual_axis_type.varying))
    return jax.lax.pcast(leaf, missing, to="varying") if missing else leaf
  return jax.tree.map(cast, x) if varying else x
