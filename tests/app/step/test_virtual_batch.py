"""The split train step and virtual batches (`tripletjax/app/step/virtual_batch.py`) against the
direct step, on 8 CPU devices.

The device count is fixed when JAX starts, so the 8-device computations run in one subprocess
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`) that saves its results; the tests here
compare them. There the direct step mines inside XLA (several devices) and the split steps in
NumPy on one device, so the comparisons also cross the two mining backends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from tests.subprocesses import REPO
from tripletjax.app import errors
from tripletjax.app.config import defaults
from tripletjax.app.step import plan as plan_lib
from tripletjax.app.step import train_step

TESTS = os.path.dirname(os.path.abspath(__file__))
NUM_DEVICES = 8
BATCH = 64
CHUNKS = 2  # Forward chunks: 4 rows per device each.

# The models of the comparisons: without dropout or BatchNorm the split steps must give the
# gradient of one pass over the whole batch; with them, the direct step's on the same chunks.
MODELS = {
    "plain": {"model.name": "tfa_cnn", "model.cnn.dropout_rate": 0.0},
    "dropout_batchnorm": {"model.name": "hsu_cnn", "model.cnn.batch_norm": True,
                          "model.cnn.dropout_rate": 0.3},
}
SPLIT_STEPS = ("split", "recompute")
STEPS = ("direct", *SPLIT_STEPS)


def small_config(model: str, step: str = "auto") -> ml_collections.ConfigDict:
  config = defaults.get_config()
  config.model.embedding_dim = 16
  config.model.forward_chunks = CHUNKS
  config.batch.batch_size = BATCH
  config.train_step = step
  # SGD with momentum: its update is linear in the gradient, so the states after two steps
  # differ only by the gradients' rounding (the direct step sums them in another order). Adam
  # divides by the gradient's size and turns the rounding of gradients near 0 into steps of
  # about the learning rate.
  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 0.05
  for key, value in MODELS[model].items():
    *sections, name = key.split(".")
    target = config
    for section in sections:
      target = target[section]
    target[name] = value
  return config


def flat(prefix: str, tree) -> dict[str, np.ndarray]:
  """{prefix + path: array} for every leaf of a pytree of arrays (random keys as their data)."""
  import jax

  def value(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    return np.asarray(leaf)
  return {prefix + jax.tree_util.keystr(path): value(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def eight_device_results() -> dict[str, np.ndarray]:
  """Everything the tests compare, computed on all devices of this process (8 in the child).

  * gradients/<model>/<way>/...: the loss, the mining counts, d loss / d parameters and the
    model's non-parameter state after the forward pass, for way = "direct" (one pass over the
    whole batch for "plain", the same chunks as the split steps otherwise), "split" and
    "recompute" (`SplitTrainStep.gradient`), from the same initial model and batch;
  * steps/<step>/...: the metrics of two train steps and a third whose batch holds a NaN pixel,
    and the whole state (parameters, BatchNorm statistics, optimizer state, dropout counts)
    after the second and the third step, for every train step kind.
  """
  import jax
  from flax import nnx

  from tripletjax.app.data import datasets
  from tripletjax.app.data import samplers
  from tripletjax.app.devices import mesh as mesh_lib
  from tripletjax.app.loop import checks
  from tripletjax.app.step import optimizers
  from tripletjax.app.step import virtual_batch

  dataset = datasets.load_dataset("digits", max_train=400, max_test=10, seed=0)
  mesh = mesh_lib.make_mesh()
  batches = [indices for _, indices in zip(range(2), samplers.ShuffledBatches(
      dataset.train.labels, BATCH, seed=0).epoch(0))]

  def sharded(indices, poison=False):
    images = dataset.train.images[indices].copy()
    if poison:
      images[5, 3, 3, 0] = np.nan
    return mesh_lib.shard_batch(mesh, images, dataset.train.labels[indices].astype(np.int32))

  results = {"devices": np.array(jax.device_count())}
  images, labels = sharded(batches[0])
  # The trainers of every step kind for the model with dropout and BatchNorm; their split
  # steps also give that model's split gradients (one compilation for both uses).
  trainers = {}
  for step_kind in STEPS:
    config = small_config("dropout_batchnorm", step_kind)
    checks.check_config(config)
    trainers[step_kind] = train_step.build_trainer(config, dataset.train.images.shape[1:], 10,
                                                   mesh)
    assert trainers[step_kind].step_kind == step_kind

  for model_name in MODELS:
    config = small_config(model_name)
    initial = trainers["direct"].model
    if model_name == "plain":
      initial = train_step.build_trainer(config, dataset.train.images.shape[1:], 10, mesh).model
    reference_chunks = 1 if model_name == "plain" else CHUNKS
    loss_fn = train_step.make_loss_fn(config.loss)
    replicated = mesh_lib.replicated(mesh)

    @nnx.jit
    def direct_gradient(model, images, labels, chunks=reference_chunks, loss_fn=loss_fn,
                        replicated=replicated):
      def objective(model):
        output = mesh_lib.apply_in_chunks(model, images, chunks)
        embeddings, all_labels = jax.lax.with_sharding_constraint(
            (output.embeddings, labels), replicated)
        return loss_fn(all_labels, embeddings)
      (loss, stats), gradient = nnx.value_and_grad(objective, has_aux=True)(model)
      return loss, stats, gradient

    prefix = f"gradients/{model_name}/"
    model = nnx.clone(initial)
    loss, stats, gradient = direct_gradient(model, images, labels)
    results.update(flat(prefix + "direct/loss", loss))
    results.update(flat(prefix + "direct/stats", stats))
    results.update(flat(prefix + "direct/gradient", gradient))
    results.update(flat(prefix + "direct/rest", nnx.state(model, nnx.Not(nnx.Param))))
    _, schedule = optimizers.make_optimizer(config.optimizer, 10)
    for way in SPLIT_STEPS:
      step = trainers[way].train_step
      if model_name == "plain":
        step = virtual_batch.SplitTrainStep(
            train_step.make_loss_fn(config.loss,
                                    trainers[way].plan.single_device_mining_backend),
            schedule, mesh, CHUNKS, recompute=way == "recompute")
      model = nnx.clone(initial)
      before = flat("", nnx.state(model))
      computed = step.gradient(model, images, labels)
      assert all(np.array_equal(before[k], v) for k, v in flat("", nnx.state(model)).items())
      results.update(flat(prefix + f"{way}/loss", computed.loss))
      results.update(flat(prefix + f"{way}/stats", computed.stats))
      results.update(flat(prefix + f"{way}/gradient", computed.gradient))
      results.update(flat(prefix + f"{way}/rest", computed.new_rest))

  # Where the split steps mine: their loss program calls the NumPy miner on the host.
  for step_kind in SPLIT_STEPS:
    program = jax.make_jaxpr(trainers[step_kind].train_step._loss_and_gradient)(
        jax.ShapeDtypeStruct((BATCH, 16), np.float32), jax.ShapeDtypeStruct((BATCH,), np.int32))
    results[f"host_miner/{step_kind}"] = np.array("pure_callback" in str(program))

  for step_kind, trainer in trainers.items():
    prefix = f"steps/{step_kind}/"
    for number, (indices, poison) in enumerate(
        [(batches[0], False), (batches[1], False), (batches[0], True)]):
      metrics = trainer.train_step(trainer.model, trainer.optimizer, *sharded(indices, poison))
      results.update(flat(prefix + f"metrics{number}", metrics))
      if number >= 1:
        results.update(flat(prefix + f"state{number}",
                            nnx.state((trainer.model, trainer.optimizer))))
  return results


SCRIPT = """
    import sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    # As in the test session (conftest.py).
    jax.config.update("jax_threefry_partitionable", False)
    from test_virtual_batch import eight_device_results
    np.savez(sys.argv[2], **eight_device_results())
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp("virtual_batch") / "results.npz"
  environment = dict(os.environ,
                     XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}")
  completed = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), TESTS, str(out)],
                             cwd=REPO, env=environment, capture_output=True, text=True,
                             timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]
  loaded = np.load(out)
  return {key: loaded[key] for key in loaded.files}


def part(results: dict, prefix: str) -> dict[str, np.ndarray]:
  found = {key[len(prefix):]: value for key, value in results.items() if key.startswith(prefix)}
  assert found, f"nothing under {prefix}"
  return found


def assert_close_trees(got: dict, expected: dict, what: str, rtol: float = 1e-5) -> None:
  """Same keys; every array within rtol, and within rtol of its largest entry (entries that
  cancel to about zero carry the rounding of the larger terms they are sums of)."""
  assert set(got) == set(expected), what
  for key in expected:
    scale = float(np.max(np.abs(expected[key]))) if expected[key].size else 0.0
    np.testing.assert_allclose(got[key], expected[key], rtol=rtol, atol=rtol * scale,
                               err_msg=f"{what}: {key}")


def test_ran_on_8_devices(results):
  assert int(results["devices"]) == NUM_DEVICES


def test_split_steps_mine_in_numpy_on_8_cpu_devices(results):
  # What the split is for: the direct step cannot call the host miner from a program sharded
  # over several CPU devices (it sorts inside XLA there); the split steps' loss program runs
  # on one device and does.
  for step in SPLIT_STEPS:
    assert results[f"host_miner/{step}"], step


@pytest.mark.parametrize("way", SPLIT_STEPS)
def test_split_gradient_equals_the_direct_full_batch_gradient(results, way):
  # Without dropout and BatchNorm, chunks change nothing: one direct pass over the 64 rows.
  prefix = "gradients/plain/"
  expected = part(results, prefix + "direct/gradient")
  got = part(results, prefix + f"{way}/gradient")
  assert len(expected) == 6  # The kernels and biases of two convolutions and a dense layer.
  for key, value in expected.items():
    assert np.abs(value).max() > 1e-4, f"{key}: a zero gradient would compare trivially"
  assert_close_trees(got, expected, f"{way} gradient")
  np.testing.assert_allclose(results[prefix + f"{way}/loss"], results[prefix + "direct/loss"],
                             rtol=1e-6)
  for stat in ("num_positive_pairs", "num_fallback"):
    key = f"['{stat}']"
    assert int(results[prefix + f"{way}/stats" + key]) == int(
        results[prefix + "direct/stats" + key]), stat


@pytest.mark.parametrize("way", SPLIT_STEPS)
def test_split_gradient_with_dropout_and_batchnorm_equals_direct_on_the_same_chunks(results, way):
  prefix = "gradients/dropout_batchnorm/"
  assert_close_trees(part(results, prefix + f"{way}/gradient"),
                     part(results, prefix + "direct/gradient"), f"{way} gradient")
  # The first pass's BatchNorm statistics and dropout counts, chunk after chunk, as direct.
  rest = part(results, prefix + f"{way}/rest")
  expected_rest = part(results, prefix + "direct/rest")
  assert_close_trees(rest, expected_rest, f"{way} BatchNorm statistics and dropout counts")
  counts = [key for key in rest if "rngs" in key and "count" in key]
  assert counts and all(int(rest[key]) == CHUNKS for key in counts), counts
  means = [key for key in rest if "mean" in key]
  assert means and all(np.abs(rest[key]).max() > 0 for key in means), "statistics unchanged"


@pytest.mark.parametrize("step", SPLIT_STEPS)
def test_train_steps_equal_the_direct_step(results, step):
  # Two steps with dropout and BatchNorm: metrics, parameters, BatchNorm statistics, the momentum
  # and the dropout counts, as the direct step leaves them.
  for number in (0, 1):
    expected = part(results, f"steps/direct/metrics{number}")
    got = part(results, f"steps/{step}/metrics{number}")
    assert set(got) == set(expected)
    for key in expected:
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-7, err_msg=key)
  assert_close_trees(part(results, f"steps/{step}/state1"),
                     part(results, "steps/direct/state1"), f"{step} state after two steps")


@pytest.mark.parametrize("step", STEPS)
def test_nonfinite_step_leaves_the_state_and_advances_dropout(results, step):
  metrics = part(results, f"steps/{step}/metrics2")
  assert int(metrics["['nonfinite']"]) == 1 and np.isnan(metrics["['loss']"])
  after_good, after_bad = (part(results, f"steps/{step}/state{n}") for n in (1, 2))
  for key, value in after_good.items():
    if "rngs" in key and "count" in key:  # Dropout streams advance: new masks next step.
      assert int(after_bad[key]) == int(value) + CHUNKS, key
    else:
      np.testing.assert_array_equal(after_bad[key], value, err_msg=key)
  assert int(after_good["[1]['step'].value"]) == 2


@pytest.mark.parametrize("platform, devices, loss, backend, expected", [
    ("cpu", 2, "semihard", "auto", "split"),
    ("cpu", 8, "batch_all", "numpy", "split"),
    ("cpu", 1, "semihard", "auto", "direct"),  # One device: the direct step mines in NumPy.
    ("cpu", 2, "semihard", "xla", "direct"),  # The user asked for the sort inside XLA.
    ("cpu", 2, "hard", "auto", "direct"),  # No sort to move out of XLA.
    ("gpu", 8, "semihard", "auto", "direct"),
    ("tpu", 4, "batch_all", "auto", "direct"),
])
def test_auto_train_step(platform, devices, loss, backend, expected):
  config = defaults.get_config()
  config.loss.name = loss
  config.loss.mining_backend = backend
  assert plan_lib.make_plan(config, platform=platform, num_devices=devices).step_kind == expected
  for requested in ("direct", "split", "recompute"):
    config.train_step = requested
    if requested == "direct" and backend == "numpy":  # A host callback would deadlock.
      with pytest.raises(errors.ConfigError, match="cannot call the NumPy miner"):
        plan_lib.make_plan(config, platform=platform, num_devices=devices)
      continue
    plan = plan_lib.make_plan(config, platform=platform, num_devices=devices)
    assert plan.step_kind == requested


@pytest.mark.parametrize("platform, devices, backend, sharded, one_device", [
    ("cpu", 2, "auto", "xla:rank_key", "numpy"),
    ("cpu", 1, "auto", "numpy", "numpy"),
    ("gpu", 8, "auto", "xla:three_keys", "xla:three_keys"),
    ("cpu", 2, "xla", "xla:rank_key", "xla:rank_key"),
])
def test_the_plan_resolves_the_mining_backends_once(platform, devices, backend, sharded,
                                                     one_device):
  config = defaults.get_config()
  config.loss.mining_backend = backend
  plan = plan_lib.make_plan(config, platform=platform, num_devices=devices)
  assert (plan.mining_backend, plan.single_device_mining_backend) == (sharded, one_device)
  config.loss.name = "hard"  # No sorting miner: no mining backend.
  plan = plan_lib.make_plan(config, platform=platform, num_devices=devices)
  assert (plan.mining_backend, plan.single_device_mining_backend) == (None, None)


def test_the_plan_in_one_line():
  config = defaults.get_config()
  config.batch.batch_size = 1024
  plan = plan_lib.make_plan(config, platform="cpu", num_devices=2)
  assert plan.describe() == ("train step: split; mining: numpy on the host, global batch of "
                             "1024 over 2 cpu devices")
  config.loss.mining_scope, config.model.forward_chunks = "local", 4
  plan = plan_lib.make_plan(config, platform="gpu", num_devices=8)
  assert plan.describe() == ("train step: direct; mining: xla:three_keys inside the program, "
                             "each device's 128 rows alone (8 gpu devices); 4 forward chunks")
  assert plan.record()["mining_scope"] == "local"


def test_recompute_holds_one_chunk_of_activations_whatever_the_batch():
  # XLA's memory plan of the two recompute programs, on this process's one device, for batches
  # of 64 and 256 in chunks of 32 rows: the temporaries of a chunk's forward and backward pass
  # stay the same, and the first pass grows only by a copy of the extra images.
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from tripletjax.app.devices import mesh as mesh_lib
  from tripletjax.app.step import optimizers
  from tripletjax.app.step import virtual_batch

  assert jax.device_count() == 1
  mesh = mesh_lib.make_mesh()
  image_shape, rows = (28, 28, 1), 32
  plans = {}
  for batch in (64, 256):
    config = small_config("dropout_batchnorm")
    trainer = train_step.build_trainer(config, image_shape, 10, mesh)
    _, schedule = optimizers.make_optimizer(config.optimizer, 10)
    step = virtual_batch.SplitTrainStep(
        train_step.make_loss_fn(config.loss, trainer.plan.single_device_mining_backend),
        schedule, mesh,
        batch // rows, recompute=True)
    images = jnp.zeros((batch, *image_shape), jnp.float32)
    cotangent = jnp.zeros((batch, config.model.embedding_dim), jnp.float32)
    model = trainer.model
    embed = step._embed.lower(model, images).compile().memory_analysis()
    total = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    rest = jax.tree.map(jnp.asarray, nnx.state(model, nnx.Not(nnx.Param)))
    chunk = step._add_chunk_gradient.lower(model, total, rest, images, cotangent,
                                           np.int32(0)).compile().memory_analysis()
    plans[batch] = (embed.temp_size_in_bytes, chunk.temp_size_in_bytes)
  # A chunk's activations: at least its first convolution's output, 32 x 14 x 14 x 64 floats.
  assert plans[64][1] > rows * 14 * 14 * 64 * 4
  assert plans[256][1] == plans[64][1]
  extra_images = (256 - 64) * 28 * 28 * 4
  assert plans[256][0] - plans[64][0] <= 2 * extra_images, plans
