"""Multi-similarity, NT-Xent, SupCon and the cross-batch memory on a batch sharded over 8 CPU
devices (in a subprocess: the device count is fixed when JAX starts).

"global" mining (each device mines its own anchors against the gathered batch, the losses'
`axis_name`) must give the loss, statistics and gradient of the one-device loss: values and
gradients within 1e-5, counts exactly. With a cross-batch memory every device writes the
global batch in the global order: after every step the memory is the same on all 8 devices,
and the same as on one device, and so are the losses and gradients.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.subprocesses import run_on_devices

NUM_DEVICES = 8
BATCH = 64
MEMORY_SIZE = 96  # Full after the second step of 64, which wraps around.
NUM_STEPS = 4
# (The multi-similarity loss without its miner shares its code with the mined one but for
# the masks; SupCon's memory is checked over 2 processes below.)
VARIANTS = {
    "ms-mined": ("multi_similarity", {}),
    "ntxent": ("ntxent", {}),
    "supcon": ("supcon", {}),
}
MEMORY_VARIANTS = ("ms-mined",)

SCRIPT = """
    import functools, json, sys
    import jax, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import tripletjax as tj
    from tripletjax import memory as memory_lib

    variants, memory_variants, inputs_path, outputs_path = (
        json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4])
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    inputs, outputs = np.load(inputs_path), {}
    rows = NamedSharding(mesh, P("data"))

    def save(prefix, loss_and_stats, grad):
      loss, stats = loss_and_stats
      outputs[prefix + "/loss"], outputs[prefix + "/grad"] = np.asarray(loss), np.asarray(grad)
      for key, value in stats.items():
        outputs[f"{prefix}/stats/{key}"] = np.asarray(value)

    for variant, (name, options) in variants.items():
      fn = functools.partial(tj.MINED_LOSSES[name].fn, return_stats=True, **options)
      single = jax.jit(jax.value_and_grad(lambda x, y: fn(y, x), has_aux=True))
      sharded_fn = tj.sharded_loss(fn, mesh, "global")
      sharded = jax.jit(jax.value_and_grad(lambda x, y: sharded_fn(y, x), has_aux=True))
      for batch in ("random", "nonfinite"):
        labels, embeddings = inputs[batch + "/labels"], inputs[batch + "/embeddings"]
        save(f"{variant}/{batch}/single", *single(embeddings, labels))
        x, y = jax.device_put(embeddings, rows), jax.device_put(labels, rows)
        save(f"{variant}/{batch}/sharded", *sharded(x, y))

    for variant in memory_variants:
      name, options = variants[variant]
      def loss_fn(embeddings, memory, labels, axis_name=None):
        (loss, stats), memory = memory_lib.cross_batch_loss(
            name, memory, labels, embeddings, return_stats=True, axis_name=axis_name, **options)
        return loss, (stats, memory)
      single = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
      def per_device(embeddings, memory, labels):
        (loss, (stats, memory)), grad = jax.value_and_grad(
            functools.partial(loss_fn, axis_name="data"), has_aux=True)(embeddings, memory,
                                                                        labels)
        copies = jax.tree.map(lambda leaf: leaf[None], memory)  # Each device's own memory.
        return (loss, stats), grad, memory, copies
      sharded = jax.jit(jax.shard_map(
          per_device, mesh=mesh, in_specs=(P("data"), P(), P("data")),
          out_specs=((P(), P()), P("data"), P(), P("data"))))
      single_memory = sharded_memory = memory_lib.init(%(memory_size)d, 8)
      for step in range(%(num_steps)d):
        labels, embeddings = inputs[f"step{step}/labels"], inputs[f"step{step}/embeddings"]
        (loss, (stats, single_memory)), grad = single(embeddings, single_memory, labels)
        save(f"memory-{variant}/{step}/single", (loss, stats), grad)
        outputs[f"memory-{variant}/{step}/single/memory"] = np.asarray(single_memory.embeddings)
        x, y = jax.device_put(embeddings, rows), jax.device_put(labels, rows)
        loss_and_stats, grad, sharded_memory, copies = sharded(x, sharded_memory, y)
        save(f"memory-{variant}/{step}/sharded", loss_and_stats, grad)
        for field, value in zip(copies._fields, copies):
          outputs[f"memory-{variant}/{step}/copies/{field}"] = np.asarray(value)
        for field, value in zip(sharded_memory._fields, sharded_memory):
          assert np.array_equal(np.asarray(value), np.asarray(getattr(single_memory, field)))
    np.savez(outputs_path, **outputs)
""" % {"memory_size": MEMORY_SIZE, "num_steps": NUM_STEPS}

COUNTS = ("num_positive_pairs", "num_negative_pairs", "num_anchors_in_mean")


def make_inputs() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(8)
  embeddings = rng.normal(size=(BATCH, 8)).astype(np.float32)
  labels = rng.integers(0, 6, BATCH).astype(np.int32)
  embeddings[40], labels[40] = embeddings[3], labels[3]   # A duplicate across devices.
  embeddings[10], labels[10] = embeddings[9], labels[9]   # And on one device.
  nonfinite = embeddings.copy()
  nonfinite[21, 4] = np.nan  # On device 2 only.
  inputs = {"random/labels": labels, "random/embeddings": embeddings,
            "nonfinite/labels": labels, "nonfinite/embeddings": nonfinite}
  for step in range(NUM_STEPS):
    inputs[f"step{step}/labels"] = rng.integers(0, 12, BATCH).astype(np.int32)
    inputs[f"step{step}/embeddings"] = rng.normal(size=(BATCH, 8)).astype(np.float32)
  return inputs


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  folder = tmp_path_factory.mktemp("similarity_sharded")
  np.savez(folder / "inputs.npz", **make_inputs())
  run_on_devices(NUM_DEVICES, SCRIPT, json.dumps(VARIANTS), json.dumps(MEMORY_VARIANTS),
                 str(folder / "inputs.npz"), str(folder / "outputs.npz"))
  results = np.load(folder / "outputs.npz")
  return {key: results[key] for key in results.files}


def assert_same_result(outputs, single, sharded):
  np.testing.assert_allclose(outputs[sharded + "/loss"], outputs[single + "/loss"], rtol=1e-5,
                             atol=1e-7, err_msg=sharded)
  np.testing.assert_allclose(outputs[sharded + "/grad"], outputs[single + "/grad"], rtol=1e-5,
                             atol=1e-6, err_msg=sharded)
  prefix = single + "/stats/"
  keys = [key[len(prefix):] for key in outputs if key.startswith(prefix)]
  assert keys, single
  for key in keys:
    got, expected = outputs[f"{sharded}/stats/{key}"], outputs[prefix + key]
    if key in COUNTS:
      assert int(got) == int(expected), (sharded, key)
    else:
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7, err_msg=f"{sharded} {key}")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_global_mining_over_8_devices_equals_one_device(outputs, variant):
  assert_same_result(outputs, f"{variant}/random/single", f"{variant}/random/sharded")
  assert float(outputs[f"{variant}/random/single/loss"]) > 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_nan_on_one_device_is_nan_everywhere(outputs, variant):
  assert np.isnan(outputs[f"{variant}/nonfinite/sharded/loss"])
  assert np.all(np.isnan(outputs[f"{variant}/nonfinite/sharded/grad"]))


@pytest.mark.parametrize("variant", MEMORY_VARIANTS)
def test_the_memory_is_the_same_on_every_device_and_equals_one_device(outputs, variant):
  for step in range(NUM_STEPS):
    prefix = f"memory-{variant}/{step}"
    assert_same_result(outputs, prefix + "/single", prefix + "/sharded")
    copies = outputs[prefix + "/copies/embeddings"]
    assert copies.shape == (NUM_DEVICES, MEMORY_SIZE, 8)
    for device in range(1, NUM_DEVICES):
      assert copies[device].tobytes() == copies[0].tobytes(), (prefix, device)
      for field in ("labels", "count", "position"):
        np.testing.assert_array_equal(outputs[f"{prefix}/copies/{field}"][device],
                                      outputs[f"{prefix}/copies/{field}"][0])
    np.testing.assert_array_equal(copies[0], outputs[prefix + "/single/memory"])
    assert int(outputs[prefix + "/copies/count"][0]) == min((step + 1) * BATCH, MEMORY_SIZE)


# ----------------------------------------------------------------------------------------------
# The memory over 2 processes of 2 CPU devices each (localhost, gloo collectives).

PROCESS_SCRIPT = """
    import sys
    import jax, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from tripletjax import memory as memory_lib

    port, process_id, inputs_path, outputs_path = sys.argv[1:5]
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    step = jax.jit(jax.shard_map(
        lambda memory, labels, embeddings: memory_lib.cross_batch_loss(
            "supcon", memory, labels, embeddings, axis_name="data"),
        mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=(P(), P())))
    inputs, outputs = np.load(inputs_path), {}
    memory = jax.device_put(memory_lib.init(%(memory_size)d, 8), NamedSharding(mesh, P()))
    for index in range(%(num_steps)d):
      arrays = [jax.make_array_from_callback(x.shape, rows, lambda i, x=x: x[i])
                for x in (inputs[f"step{index}/labels"], inputs[f"step{index}/embeddings"])]
      loss, memory = step(memory, *arrays)
      outputs[f"{index}/loss"] = np.asarray(loss.addressable_data(0))
      for field, value in zip(memory._fields, memory):
        for device, shard in enumerate(value.addressable_shards):  # This process's devices.
          outputs[f"{index}/{field}/{device}"] = np.asarray(shard.data)
    np.savez(outputs_path, **outputs)
""" % {"memory_size": MEMORY_SIZE, "num_steps": NUM_STEPS}


def test_the_memory_is_the_same_in_2_processes_and_equals_one_process(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import textwrap  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  from tests.subprocesses import REPO  # pylint: disable=import-outside-toplevel
  from tripletjax import memory as memory_lib  # pylint: disable=import-outside-toplevel

  inputs = make_inputs()
  np.savez(tmp_path / "inputs.npz", **inputs)
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  runs = [subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(PROCESS_SCRIPT), str(port), str(index),
       str(tmp_path / "inputs.npz"), str(tmp_path / f"outputs{index}.npz")],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in range(2)]
  for run in runs:
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
  outputs = [np.load(tmp_path / f"outputs{index}.npz") for index in range(2)]
  memory = memory_lib.init(MEMORY_SIZE, 8)
  step = jax.jit(lambda memory, labels, x: memory_lib.cross_batch_loss("supcon", memory, labels, x))
  for index in range(NUM_STEPS):
    loss, memory = step(memory, inputs[f"step{index}/labels"], inputs[f"step{index}/embeddings"])
    for output in outputs:
      np.testing.assert_allclose(output[f"{index}/loss"], float(loss), rtol=1e-5)
      for field, expected in zip(memory._fields, memory):
        for device in range(2):
          np.testing.assert_array_equal(output[f"{index}/{field}/{device}"], expected,
                                        err_msg=f"step {index} {field} device {device}")
    # Bit for bit the same in both processes.
    for key in outputs[0].files:
      if "/loss" not in key:
        assert outputs[0][key].tobytes() == outputs[1][key].tobytes(), key
