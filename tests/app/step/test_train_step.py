"""The compiled train step: model options, and two steps on 2 devices equal two steps on 1.

The device count is fixed when JAX starts: the 2-device steps run in a subprocess
(`tests.subprocesses.run_on_devices`) that writes its results to a file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.app import runs
from tests.app.runs import tiny_config
from tests.subprocesses import run_on_devices
from tripletjax import losses
from tripletjax.app.config import defaults
from tripletjax.app.devices import mesh as mesh_lib
from tripletjax.app.loop import checks
from tripletjax.app.step import train_step


def test_model_options_pass_only_what_is_set_for_the_model():
  config = tiny_config()  # tfa_cnn: dropout_rate alone.
  assert train_step.model_options(config.model) == {}
  config.model.resnet.width = 8
  config.model.cnn.dropout_rate = 0.0
  config.model.cnn.batch_norm = True
  assert train_step.model_options(config.model) == {"dropout_rate": 0.0}
  config.model.name = "hsu_cnn"
  assert train_step.model_options(config.model) == {"dropout_rate": 0.0, "batch_norm": True}
  config.model.name = "resnet18"
  assert train_step.model_options(config.model) == {"width": 8}


def two_train_steps(loss_name: str, forward_chunks: int, dropout_rate: float) -> dict:
  """Metrics and parameters after two train steps on digits, on all devices of this process.

  Imports JAX when called, so a subprocess can set its device count first.
  """
  import jax
  from flax import nnx
  from tripletjax.app.config import defaults
  from tripletjax.app.data import datasets
  from tripletjax.app.data import samplers

  config = defaults.get_config()
  config.loss.name = loss_name
  config.model.embedding_dim = 16
  config.model.forward_chunks = forward_chunks
  config.model.cnn.dropout_rate = dropout_rate
  config.batch.batch_size = 64
  checks.check_config(config)
  dataset = datasets.load_dataset("digits", max_train=400, max_test=10, seed=0)
  mesh = mesh_lib.make_mesh()
  trainer = train_step.build_trainer(config, dataset.train.images.shape[1:], 10, mesh)
  results = {"devices": np.array(jax.device_count())}

  def record_parameters(prefix):
    parameters = nnx.to_pure_dict(nnx.state(trainer.model, nnx.Param))
    for path, value in jax.tree_util.tree_flatten_with_path(parameters)[0]:
      results[prefix + jax.tree_util.keystr(path)] = np.asarray(value)

  record_parameters("initial")
  batches = samplers.ShuffledBatches(dataset.train.labels, 64, seed=0).epoch(0)
  for step, indices in zip(range(2), batches):
    images, labels = mesh_lib.shard_batch(mesh, dataset.train.images[indices],
                                       dataset.train.labels[indices].astype(np.int32))
    metrics = trainer.train_step(trainer.model, trainer.optimizer, images, labels)
    results.update({f"step{step}/{key}": np.asarray(value) for key, value in metrics.items()})
  record_parameters("params")
  return results


TRAIN_SCRIPT = """
    import json, sys
    import jax, numpy as np
    from tests.app.step.test_train_step import two_train_steps

    # As in this test session (conftest.py).
    jax.config.update("jax_threefry_partitionable", False)
    np.savez(sys.argv[2], **two_train_steps(*json.loads(sys.argv[1])))
"""


# Integer statistics of the train step's metrics, compared exactly.
_COUNT_METRICS = ("num_positive_pairs", "num_fallback", "num_valid_triplets",
                  "num_active_triplets")


def test_train_steps_on_2_devices_equal_1_device(tmp_path):
  # Two forward chunks: each holds a slice of every device's rows, so the layout differs from
  # one device. No dropout: its masks are drawn per chunk, so they fall on other rows there.
  options = ("semihard", 2, 0.0)
  out = tmp_path / "two_devices.npz"
  run_on_devices(2, TRAIN_SCRIPT, json.dumps(options), str(out))
  sharded = dict(np.load(out))
  single = two_train_steps(*options)  # This process: one device, the "numpy" backend.
  assert int(single["devices"]) == 1 and int(sharded["devices"]) == 2
  assert set(sharded) == set(single)
  for key in sorted(set(single) - {"devices"}):
    if key.endswith(_COUNT_METRICS):
      assert float(sharded[key]) == float(single[key]), key
    elif key.startswith(("initial", "params")):
      np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)
    else:
      np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5, atol=1e-7, err_msg=key)
  # Both steps ran and moved every parameter array: not a comparison of two initialisations.
  assert {"step0/loss", "step1/loss"} <= set(single)
  for key in single:
    if key.startswith("params"):
      assert np.abs(single[key] - single["initial" + key[len("params"):]]).max() > 1e-5, key


@pytest.mark.parametrize("name, options, expected_options", [
    ("ntxent", {}, {}),  # temperature None: the loss's own 0.07.
    ("supcon", {"loss.temperature": 0.2}, {"temperature": 0.2}),
    ("multi_similarity", {"loss.alpha": 1.0, "loss.mining": False},
     {"alpha": 1.0, "beta": 50.0, "base": 0.5, "epsilon": 0.1, "mining": False}),
])
def test_the_loss_function_of_a_loss_of_cosine_similarities(name, options, expected_options):
  config = runs.override(defaults.get_config(), {"loss.name": name, **options})
  labels = np.array([0, 0, 1, 1, 2, 2], np.int32)
  embeddings = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
  loss, stats = train_step.make_loss_fn(config.loss)(labels, embeddings)
  expected, expected_stats = losses.MINED_LOSSES[name](labels, embeddings, return_stats=True,
                                                       **expected_options)
  assert float(loss) == float(expected)
  assert set(stats) == set(expected_stats) == set(losses.MINED_LOSSES[name].stats)
