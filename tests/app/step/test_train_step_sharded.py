"""The train step on 8 devices with each mining scope (`config.loss.mining_scope`).

One subprocess on 8 virtual CPU devices builds the trainer of a digits config with each scope,
compiles its train step, reads the compiled program (per-device array shapes and XLA's memory
analysis) and runs one step on one batch of B = 1024 from the same initial state. Checks:

  * "global" allocates no array of B^2 elements on any device (its largest holds this device's
    [B / 8, B] rows); "replicated" does (so the check can see one), and needs several times
    the temporary memory;
  * "global" and "replicated" give the same loss, statistics and updated parameters; both
    equal the loss of the whole batch's embeddings on one device;
  * "local" gives the mean of the per-device losses of those embeddings, not the global loss.

And the training loop builds its trainer with the configured scope.
"""

from __future__ import annotations


import numpy as np
import pytest

from tests.subprocesses import run_on_devices
from tripletjax import losses

NUM_DEVICES = 8
BATCH = 1024
SCOPES = ("global", "local", "replicated")


def train_step_programs(batch_size: int) -> dict[str, np.ndarray]:
  """For each scope: the compiled step's largest arrays and memory, and one step's results.

  Imports JAX's users when called, so the subprocess sets its device count first.
  """
  import jax
  from flax import nnx

  from benchmarks import compiled as compiled_lib
  from tripletjax.app.config import defaults
  from tripletjax.app.data import datasets
  from tripletjax.app.data import samplers
  from tripletjax.app.devices import mesh as mesh_lib
  from tripletjax.app.loop import checks
  from tripletjax.app.step import train_step

  jax.config.update("jax_threefry_partitionable", False)  # As in the test session.
  config = defaults.get_config()
  config.model.embedding_dim = 16
  config.model.cnn.dropout_rate = 0.0
  config.batch.batch_size = batch_size
  config.train_step = "direct"  # The one-program step, where the scopes apply.
  dataset = datasets.load_dataset("digits", seed=0)
  mesh = mesh_lib.make_mesh()
  indices = next(iter(samplers.ShuffledBatches(dataset.train.labels, batch_size, seed=0)
                      .epoch(0)))
  images, labels = mesh_lib.shard_batch(mesh, dataset.train.images[indices],
                                        dataset.train.labels[indices].astype(np.int32))
  results = {"devices": np.array(jax.device_count()), "labels": np.asarray(labels)}
  for scope in SCOPES:
    config.loss.mining_scope = scope
    checks.check_config(config)
    trainer = train_step.build_trainer(config, dataset.train.images.shape[1:], 10, mesh)
    if scope == SCOPES[0]:
      results["embeddings"] = np.asarray(trainer.embed_fn(trainer.model, images))
    compiled = trainer.train_step.lower(trainer.model, trainer.optimizer, images,
                                        labels).compile()
    text = compiled.as_text()
    largest_shape, largest_elements = compiled_lib.largest_array(text)
    results[f"{scope}/largest_shape"] = np.array(largest_shape)
    results[f"{scope}/largest_elements"] = np.array(largest_elements)
    results[f"{scope}/square_arrays"] = np.array(
        compiled_lib.arrays_with_at_least(text, batch_size * batch_size) or [""])
    results[f"{scope}/temp_mb"] = np.array(compiled_lib.memory_mb(compiled)["temp_mb"])
    metrics = trainer.train_step(trainer.model, trainer.optimizer, images, labels)
    for key, value in metrics.items():
      results[f"{scope}/metrics/{key}"] = np.asarray(value)
    parameters = nnx.to_pure_dict(nnx.state(trainer.model, nnx.Param))
    for path, value in jax.tree_util.tree_flatten_with_path(parameters)[0]:
      results[f"{scope}/params{jax.tree_util.keystr(path)}"] = np.asarray(value)
  return results


SCRIPT = """
    import sys
    import numpy as np
    from tests.app.step.test_train_step_sharded import train_step_programs

    np.savez(sys.argv[1], **train_step_programs(int(sys.argv[2])))
"""


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
  out = tmp_path_factory.mktemp("train_step_sharded") / "programs.npz"
  run_on_devices(NUM_DEVICES, SCRIPT, str(out), str(BATCH))
  return dict(np.load(out))


def test_global_train_step_allocates_no_full_batch_square_on_any_device(programs):
  assert int(programs["devices"]) == NUM_DEVICES
  square = BATCH * BATCH
  # The largest arrays are the model's activations of the device's B / 8 images and the
  # device's own rows of the distance matrix, [B / 8, B].
  assert int(programs["global/largest_elements"]) < square, programs["global/largest_shape"]
  assert list(programs["global/square_arrays"]) == [""]
  # Mining the whole batch on every device does build [B, B] arrays: the check sees them.
  assert int(programs["replicated/largest_elements"]) >= square
  assert "f32[1024,1024]" in set(programs["replicated/square_arrays"])
  assert float(programs["global/temp_mb"]) < float(programs["replicated/temp_mb"]) / 3


def _metrics(programs, scope):
  prefix = f"{scope}/metrics/"
  return {key[len(prefix):]: value for key, value in programs.items()
          if key.startswith(prefix)}


def test_global_and_replicated_train_steps_agree_with_the_one_device_loss(programs):
  global_metrics, replicated = _metrics(programs, "global"), _metrics(programs, "replicated")
  assert set(global_metrics) == set(replicated) and "num_positive_pairs" in global_metrics
  for key, value in global_metrics.items():
    np.testing.assert_allclose(value, replicated[key], rtol=1e-5, atol=1e-7, err_msg=key)
  for key in programs:
    if key.startswith("global/params"):
      other = programs["replicated/params" + key[len("global/params"):]]
      np.testing.assert_allclose(programs[key], other, rtol=1e-5, atol=1e-6, err_msg=key)
  # The whole batch's embeddings (before the step) on one device.
  expected, stats = losses.triplet_semihard_loss(
      programs["labels"], programs["embeddings"], margin=0.5, return_stats=True)
  np.testing.assert_allclose(global_metrics["loss"], expected, rtol=1e-4)
  assert int(global_metrics["num_positive_pairs"]) == int(stats["num_positive_pairs"])


def test_local_train_step_mines_each_device_alone(programs):
  local = _metrics(programs, "local")
  rows = BATCH // NUM_DEVICES
  parts = [losses.triplet_semihard_loss(programs["labels"][d * rows:(d + 1) * rows],
                                        programs["embeddings"][d * rows:(d + 1) * rows],
                                        margin=0.5, return_stats=True)
           for d in range(NUM_DEVICES)]
  np.testing.assert_allclose(local["loss"], np.mean([loss for loss, _ in parts]), rtol=1e-4)
  assert int(local["num_positive_pairs"]) == sum(int(s["num_positive_pairs"]) for _, s in parts)
  assert abs(float(local["loss"]) - float(_metrics(programs, "global")["loss"])) > 1e-3
  assert int(local["num_positive_pairs"]) < int(
      _metrics(programs, "global")["num_positive_pairs"])


@pytest.mark.parametrize("scope", ["local", "replicated"])
def test_the_training_loop_builds_the_trainer_with_the_configured_scope(scope, monkeypatch,
                                                                       tmp_path):
  # The loop hands the task's loss to `build_trainer` with the task's scope; stop it there.
  from tests.app.runs import tiny_config
  from tripletjax.app.loop import train
  from tripletjax.app.step import train_step

  class Built(Exception):
    pass

  seen = {}

  def build_trainer(config, input_shape, total_steps, mesh, plan=None, loss_fn=None,
                    single_device_loss_fn=None):
    seen.update(loss_fn=loss_fn, mining_scope=plan.mining_scope)
    raise Built

  monkeypatch.setattr(train_step, "build_trainer", build_trainer)
  with pytest.raises(Built):
    train.train_and_evaluate(tiny_config(**{"loss.mining_scope": scope}), str(tmp_path))
  assert seen["mining_scope"] == scope and seen["loss_fn"] is not None
