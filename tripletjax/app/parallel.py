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
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  global_batch = arrays[0].shape[0]
  if global_batch % jax.device_count():
    raise ValueError(f"The batch size {global_batch} must be divisible by the number of devices "
                     f"({jax.device_count()}).")
  per_process = global_batch // jax.process_count()
  rows = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
  put = lambda x: jax.make_array_from_process_local_data(sharding, x[rows], x.shape)
  return tuple(put(x) for x in arrays)


def apply_in_chunks(model, images: jax.Array, num_chunks: int):
  """`model(images)` computed on `num_chunks` chunks of every device's rows, one at a time.

  The batch is sharded over the mesh's devices, rows [d * B/D, (d + 1) * B/D) on device d; chunk
  c takes the c-th slice of every device's rows, so no row changes device. The outputs are put
  back in the original row order. Why: XLA:CPU runs a convolution over fewer images faster per
  image (they fit the caches). With BatchNorm, statistics become per chunk.

  Args:
    model: called on [N, H, W, C] images, returns a pytree of [N, ...] arrays.
    images: [B, H, W, C], B divisible by devices x `num_chunks`.
    num_chunks: K >= 1.
  """
  if num_chunks == 1:
    return model(images)
  num_devices = jax.device_count()
  batch = images.shape[0]
  rows = batch // (num_devices * num_chunks)
  grouped = images.reshape(num_devices, num_chunks, rows, *images.shape[1:])
  outputs = [model(grouped[:, chunk].reshape(num_devices * rows, *images.shape[1:]))
             for chunk in range(num_chunks)]
  return jax.tree.map(
      lambda *parts: jnp.stack([p.reshape(num_devices, rows, *p.shape[1:]) for p in parts],
                               axis=1).reshape(batch, *parts[0].shape[1:]),
      *outputs)
