"""The device mesh, a global batch sharded over it, and the model run on chunks of it.

This process has one device; `tests/test_losses_sharded.py` and `tests/app/test_train_step.py`
run on several (subprocesses).
"""

import numpy as np
import pytest
from flax import nnx

from tests.app.runs import tiny_config
from tripletjax.app import models
from tripletjax.app import parallel
from tripletjax.app.config import checks


def test_shard_batch_places_the_global_batch():
  mesh = parallel.make_mesh()
  images = np.arange(8 * 4, dtype=np.float32).reshape(8, 2, 2, 1)
  labels = np.arange(8, dtype=np.int32)
  sharded_images, sharded_labels = parallel.shard_batch(mesh, images, labels)
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


def test_apply_in_chunks_matches_one_pass():
  # The model on K chunks of the batch, outputs back in row order: the same as one pass.
  model = models.create_model("hsu_cnn", input_shape=(8, 8, 1), embedding_dim=8,
                              rngs=nnx.Rngs(params=0, dropout=1), dropout_rate=0.0)
  images = np.random.default_rng(0).random((24, 8, 8, 1), dtype=np.float32)
  whole = model(images)
  for num_chunks in (2, 3, 4):
    chunked = parallel.apply_in_chunks(model, images, num_chunks)
    np.testing.assert_allclose(np.asarray(chunked.embeddings), np.asarray(whole.embeddings),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(chunked.norms), np.asarray(whole.norms), rtol=1e-5)
  with pytest.raises(ValueError, match="forward_chunks"):
    checks.check_config(tiny_config(**{"model.forward_chunks": 5}))  # 64 % 5 != 0
