"""The Keras losses on the JAX backend: tripletjax's own functions, mining the global batch.

Under `keras.distribution.DataParallel` Keras compiles the train step for the whole (global)
batch, split over the devices of the distribution's mesh. The loss then runs through
`tripletjax.sharded_loss(..., scope="global")`: each device mines its own rows as anchors
against the embeddings of every device (gathered), so the loss, and its gradients, are those of
the whole batch on one device, with O(B^2 / N) memory per device. Without a distribution (or
with a batch that does not split evenly) the loss is called on the whole batch.
"""

from __future__ import annotations

import functools
from typing import Callable

import keras

import tripletjax


def _data_parallel_mesh():
  """(mesh, batch axis name) of the active `keras.distribution.DataParallel`, or None."""
  distribution = keras.distribution.distribution()
  if not isinstance(distribution, keras.distribution.DataParallel):
    return None
  mesh = distribution.device_mesh.backend_mesh
  axis_name = distribution.batch_dim_name
  if axis_name not in mesh.axis_names or mesh.shape[axis_name] < 2:
    return None
  return mesh, axis_name


def call_loss(loss_fn: Callable, labels, embeddings, **options):
  """`loss_fn(labels, embeddings, **options)`, a loss of `tripletjax.losses`, mining the global
  batch across the devices of an active `DataParallel` distribution."""
  data_parallel = _data_parallel_mesh()
  if data_parallel is not None:
    mesh, axis_name = data_parallel
    if embeddings.shape[0] % mesh.shape[axis_name] == 0:
      sharded = tripletjax.sharded_loss(functools.partial(loss_fn, **options), mesh,
                                        scope="global", axis_name=axis_name)
      return sharded(labels, embeddings)
  return loss_fn(labels, embeddings, **options)
