"""Devices: the mesh, a global batch sharded over it, and the model run on chunks of it.

The training state is replicated on every device; every batch is one global array sharded over
the mesh's "data" axis. The same code runs on one CPU, on all GPUs of a machine, and on several
hosts after `jax.distributed.initialize()`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis "data"."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The sharding of the training state: a full copy on every device."""
  return NamedSharding(mesh, P())


def put_replicated(mesh: jax.sharding.Mesh, tree):
  """The arrays of `tree` (the same values on every process) replicated on every device.

  `jax.device_put` reaches only this process's devices; with several processes each one
  contributes its copy (`jax.make_array_from_process_local_data`). Random keys included.
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x), x.shape)
  return jax.tree.map(put, tree)


def process_rows(global_batch: int) -> slice:
  """The rows of a global batch of `global_batch` rows that this process's devices hold.

  Processes hold consecutive, equal blocks of rows in process order (the mesh of `make_mesh`
  orders devices by process).
  """
  if global_batch % jax.device_count():
    raise ValueError(f"The batch size {global_batch} must be divisible by the number of devices "
                     f"({jax.device_count()}).")
  per_process = global_batch // jax.process_count()
  return slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)


def shard_process_rows(mesh, global_batch: int, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
  """Places this process's rows of a global batch, sharded over the "data" axis.

  Args:
    mesh: the mesh of `make_mesh`.
    global_batch: B, the rows of the global batch.
    *arrays: [B / processes, ...] arrays, this process's rows (`process_rows(B)`) of each
      global array.

  Returns:
    The global [B, ...] arrays, in the same order.
  """
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  rows = process_rows(global_batch)
  for x in arrays:
    if x.shape[0] != rows.stop - rows.start:
      raise ValueError(f"This process holds rows {rows.start}:{rows.stop} of the batch of "
                       f"{global_batch}, got {x.shape[0]} rows.")
  return tuple(jax.make_array_from_process_local_data(sharding, x, (global_batch, *x.shape[1:]))
               for x in arrays)


def shard_batch(mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
  """Places arrays of a global batch (identical on every process) sharded over the "data" axis.

  Each process contributes only the rows its devices hold, so no host ever sends data to
  another host's devices.

  Args:
    mesh: the mesh of `make_mesh`.
    *arrays: [B, ...] arrays with the same B (e.g. images and labels).

  Returns:
    The sharded arrays, in the same order.
  """
  global_batch = arrays[0].shape[0]
  rows = process_rows(global_batch)
  return shard_process_rows(mesh, global_batch, *(x[rows] for x in arrays))


def gather_to_host(*arrays: jax.Array) -> tuple[np.ndarray, ...]:
  """The whole of each global array as a NumPy array, on every process.

  With several processes every process receives the rows of every other one (an all-gather
  across processes); with one process this is a copy to the host.
  """
  if jax.process_count() == 1:
    return tuple(np.asarray(x) for x in jax.device_get(arrays))
  from jax.experimental import multihost_utils
  return tuple(np.asarray(x) for x in multihost_utils.process_allgather(arrays, tiled=True))


def to_chunks(x: jax.Array, num_chunks: int) -> jax.Array:
  """[B, ...] -> [K, B / K, ...]: chunk c holds the c-th slice of every device's rows.

  The batch is sharded over the mesh's devices, rows [d * B/D, (d + 1) * B/D) on device d;
  chunk c takes rows [c * B/(D K), (c + 1) * B/(D K)) of every device's block, so no row changes
  device and every chunk is spread over all devices. `from_chunks` is the inverse.
  """
  num_devices = jax.device_count()
  rows = x.shape[0] // (num_devices * num_chunks)
  grouped = x.reshape(num_devices, num_chunks, rows, *x.shape[1:])
  return jnp.swapaxes(grouped, 0, 1).reshape(num_chunks, num_devices * rows, *x.shape[1:])


def from_chunks(chunks: jax.Array) -> jax.Array:
  """[K, B / K, ...] -> [B, ...], the rows in their original order (inverse of `to_chunks`)."""
  num_chunks, chunk_rows = chunks.shape[:2]
  num_devices = jax.device_count()
  rows = chunk_rows // num_devices
  grouped = chunks.reshape(num_chunks, num_devices, rows, *chunks.shape[2:])
  return jnp.swapaxes(grouped, 0, 1).reshape(num_chunks * chunk_rows, *chunks.shape[2:])


def chunk_of(x: jax.Array, num_chunks: int, index) -> jax.Array:
  """`to_chunks(x, num_chunks)[index]` for a traced `index`, without moving the other chunks."""
  num_devices = jax.device_count()
  rows = x.shape[0] // (num_devices * num_chunks)
  grouped = x.reshape(num_devices, num_chunks, rows, *x.shape[1:])
  chunk = jax.lax.dynamic_index_in_dim(grouped, index, axis=1, keepdims=False)
  return chunk.reshape(num_devices * rows, *x.shape[1:])


def apply_in_chunks(model, images: jax.Array, num_chunks: int):
  """`model(images)` computed on `num_chunks` chunks of every device's rows, one at a time.

  Chunk c takes the c-th slice of every device's rows (`to_chunks`), so no row changes device.
  The outputs are put back in the original row order. Why: XLA:CPU runs a convolution over
  fewer images faster per image (they fit the caches). With BatchNorm, statistics become per
  chunk.

  Args:
    model: called on [N, H, W, C] images, returns a pytree of [N, ...] arrays.
    images: [B, H, W, C], B divisible by devices x `num_chunks`.
    num_chunks: K >= 1.
  """
  if num_chunks == 1:
    return model(images)
  chunks = to_chunks(images, num_chunks)
  outputs = [model(chunks[chunk]) for chunk in range(num_chunks)]
  return jax.tree.map(lambda *parts: from_chunks(jnp.stack(parts)), *outputs)
