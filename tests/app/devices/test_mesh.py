"""The device mesh, a global batch sharded over it, and the model run on chunks of it.

This process has one device; `tests/test_losses_sharded.py` and `tests/app/step/test_train_step.py`
run on several (subprocesses).
"""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from tests.app.runs import tiny_config
from tripletjax.app import models
from tripletjax.app.config import checks
from tripletjax.app.devices import mesh as mesh_lib


def test_mesh_spans_every_device_on_the_data_axis():
  mesh = mesh_lib.make_mesh()
  assert mesh.axis_names == (mesh_lib.DATA_AXIS,) == ("data",)
  assert list(mesh.devices.flat) == jax.devices()
  replicated = mesh_lib.replicated(mesh)
  assert replicated.spec == P() and replicated.mesh == mesh
  state = jax.device_put(np.arange(6.0), replicated)
  assert state.sharding.is_fully_replicated


def test_shard_batch_places_the_global_batch():
  mesh = mesh_lib.make_mesh()
  images = np.arange(8 * 4, dtype=np.float32).reshape(8, 2, 2, 1)
  labels = np.arange(8, dtype=np.int32)
  sharded_images, sharded_labels = mesh_lib.shard_batch(mesh, images, labels)
  np.testing.assert_array_equal(np.asarray(sharded_images), images)
  np.testing.assert_array_equal(np.asarray(sharded_labels), labels)
  assert sharded_images.sharding.spec[0] == "data"
  # Every device of the mesh holds its contiguous slice of the rows, and only that slice
  # (four devices: tests/test_losses_sharded.py).
  assert sharded_images.sharding.device_set == set(mesh.devices.flat)
  rows_per_device = 8 // mesh.devices.size
  for array, local in ((sharded_images, images), (sharded_labels, labels)):
    for shard in array.addressable_shards:
      position = list(mesh.devices.flat).index(shard.device)
      assert shard.index[0].indices(8)[:2] == (position * rows_per_device,
                                               (position + 1) * rows_per_device)
      np.testing.assert_array_equal(np.asarray(shard.data), local[shard.index])


def test_shard_batch_needs_a_batch_divisible_by_the_device_count(monkeypatch):
  mesh = mesh_lib.make_mesh()
  monkeypatch.setattr(jax, "device_count", lambda: 3)
  with pytest.raises(ValueError, match=r"batch size 8 must be divisible by the number of "
                     r"devices \(3\)"):
    mesh_lib.shard_batch(mesh, np.zeros((8, 2), np.float32))


def test_apply_in_chunks_matches_one_pass():
  # The model on K chunks of the batch, outputs back in row order: the same as one pass.
  model = models.create_model("hsu_cnn", input_shape=(8, 8, 1), embedding_dim=8,
                              rngs=nnx.Rngs(params=0, dropout=1), dropout_rate=0.0)
  images = np.random.default_rng(0).random((24, 8, 8, 1), dtype=np.float32)
  whole = model(images)
  for num_chunks in (2, 3, 4):
    chunked = mesh_lib.apply_in_chunks(model, images, num_chunks)
    np.testing.assert_allclose(np.asarray(chunked.embeddings), np.asarray(whole.embeddings),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(chunked.norms), np.asarray(whole.norms), rtol=1e-5)
  with pytest.raises(ValueError, match="forward_chunks"):
    checks.check_config(tiny_config(**{"model.forward_chunks": 5}))  # 64 % 5 != 0


@pytest.mark.parametrize("num_devices, num_chunks", [(1, 3), (2, 2), (4, 2), (2, 3)])
def test_each_chunk_takes_a_slice_of_every_device_rows(monkeypatch, num_devices, num_chunks):
  # The layout on `num_devices` devices: device d holds rows [d * B/D, (d + 1) * B/D), and
  # chunk c must take the c-th slice of each device's rows (no row changes device), with the
  # outputs put back in row order. Only the device count matters to the arithmetic.
  monkeypatch.setattr(jax, "device_count", lambda: num_devices)
  batch = 24
  rows_per_slice = batch // (num_devices * num_chunks)
  images = np.arange(batch, dtype=np.float32).reshape(batch, 1, 1, 1)
  chunks = []

  def model(chunk):
    chunks.append(np.asarray(chunk).reshape(-1))
    return {"rows": chunk.reshape(-1), "twice": 2 * chunk}

  outputs = mesh_lib.apply_in_chunks(model, images, num_chunks)
  assert len(chunks) == num_chunks
  for chunk, rows in enumerate(chunks):
    expected = [device * (batch // num_devices) + chunk * rows_per_slice + offset
                for device in range(num_devices) for offset in range(rows_per_slice)]
    np.testing.assert_array_equal(rows, expected, err_msg=f"chunk {chunk}")
  np.testing.assert_array_equal(outputs["rows"], np.arange(batch))
  np.testing.assert_array_equal(outputs["twice"], 2 * images)


def test_one_chunk_is_one_call():
  calls = []
  images = np.zeros((4, 2, 2, 1), np.float32)
  assert mesh_lib.apply_in_chunks(lambda x: calls.append(x) or "out", images, 1) == "out"
  assert len(calls) == 1 and calls[0] is images
