"""The losses over a batch sharded across 4 devices.

The number of (fake CPU) devices is fixed when JAX starts, so the sharded programs run in a
subprocess (`tests.subprocesses.run_on_devices`) that writes its results to a file; this
process, with one device, checks them. Sharded programs mine with
mining_backend="xla": a host callback (the "numpy" backend) inside a program sharded over
several CPU devices deadlocks XLA:CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.mining import oracle
from tests.subprocesses import run_on_devices
from tripletjax import reference


SCRIPT = """
    import jax, numpy as np
    import tripletjax as tj
    from tripletjax.app import parallel

    assert jax.device_count() == 4
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, 5, 64).astype(np.int32)
    xs, ys = parallel.shard_batch(mesh, x, y)
    assert len(xs.sharding.device_set) == 4
    for fn in [tj.triplet_semihard_loss, tj.triplet_hard_loss, tj.batch_all_triplet_loss,
               tj.contrastive_loss]:
      step = jax.jit(jax.value_and_grad(fn, argnums=1))
      (single_loss, single_grad), (sharded_loss, sharded_grad) = step(y, x), step(ys, xs)
      np.testing.assert_allclose(float(sharded_loss), float(single_loss), rtol=1e-6)
      np.testing.assert_allclose(np.asarray(sharded_grad), np.asarray(single_grad), atol=1e-6)
    print("OK")
"""


def test_losses_over_a_sharded_global_batch_match_one_device():
  assert run_on_devices(4, SCRIPT).strip().endswith("OK")


# ----------------------------------------------------------------------------------------------
# The xla backend on a batch sharded over 4 devices, against the reference and the oracle.


MINING_SCRIPT = """
    import functools, json, sys
    import jax, numpy as np
    import tripletjax as tj
    from tripletjax.mining import blocks
    from tripletjax.app import parallel

    LOSSES = {"semihard": tj.triplet_semihard_loss, "batch_all": tj.batch_all_triplet_loss}
    inputs_path, cases, outputs_path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    assert jax.device_count() == 4
    mesh = parallel.make_mesh()
    inputs, outputs = np.load(inputs_path), {}
    for case in cases:
      name = case["name"]
      blocks.BLOCK_ENTRIES = case["block_entries"]  # Read while tracing the new jit below.
      loss_fn = functools.partial(LOSSES[case["variant"]], metric=case["metric"],
                                  return_stats=True, mining_backend="xla")
      step = jax.jit(jax.value_and_grad(lambda e, y, m: loss_fn(y, e, margin=m), has_aux=True))
      embeddings, labels = parallel.shard_batch(mesh, inputs[case["batch"] + "/embeddings"],
                                             inputs[case["batch"] + "/labels"])
      # Each device holds its own quarter of the rows.
      outputs[name + "/devices"] = len(embeddings.sharding.device_set)
      outputs[name + "/shard_rows"] = np.array(
          [[shard.index[0].start, shard.index[0].stop, shard.device.id]
           for shard in embeddings.addressable_shards])
      for margin in case["margins"]:
        (loss, stats), gradient = step(embeddings, labels, np.float32(margin))
        key = f"{name}/{margin}"
        outputs[key + "/loss"] = np.asarray(loss)
        outputs[key + "/gradient"] = np.asarray(gradient)
        for stat, value in stats.items():
          outputs[f"{key}/stats/{stat}"] = np.asarray(value)
    np.savez(outputs_path, **outputs)
"""

SHARDED_MARGINS = (0.2, 1.0)


def _separated_batch():
  """[8, 3] embeddings whose mining decisions and hinges stay put within a 1e-4 step.

  In every row all distances differ from each other, from 0, and (shifted by the margin 1.0)
  from each other by more than 0.01, so central differences of the reference are its gradient.
  """
  for seed in range(10_000):
    embeddings = np.random.default_rng(seed).normal(size=(8, 3)).astype(np.float32)
    distances = reference.pairwise_distances(embeddings)
    separated = True
    for row, keep in zip(distances, ~np.eye(8, dtype=bool)):
      values = row[keep]
      gaps = np.abs(values[:, None] - values[None, :])[~np.eye(7, dtype=bool)]
      separated &= gaps.min() > 0.01 and values.min() > 0.01
      separated &= np.abs(values[:, None] - values[None, :] + 1.0).min() > 0.01
    if separated:
      return np.array([0, 0, 0, 1, 1, 2, 2, 3], np.int32), embeddings
  raise AssertionError("no separated batch found")


def _mining_cases():
  """(inputs, cases): the batches and, per case, what the subprocess runs on them."""
  rng = np.random.default_rng(64)
  grid_labels = rng.integers(0, 5, size=64).astype(np.int32)
  separated_labels, separated = _separated_batch()
  inputs = {"grid/labels": grid_labels, "grid/embeddings": oracle.integer_grid(rng, 64),
            "separated/labels": separated_labels, "separated/embeddings": separated}
  cases = []
  for variant in ("semihard", "batch_all"):
    cases.append({"name": f"{variant}-l2", "variant": variant, "metric": "l2",
                  "batch": "grid", "margins": SHARDED_MARGINS, "block_entries": 2048**2})
    # 24 anchor rows per block: 3 blocks, the last with 8 padding rows.
    cases.append({"name": f"{variant}-blocks", "variant": variant, "metric": "l2",
                  "batch": "grid", "margins": SHARDED_MARGINS, "block_entries": 64 * 24})
    cases.append({"name": f"{variant}-separated", "variant": variant, "metric": "l2",
                  "batch": "separated", "margins": (1.0,), "block_entries": 2048**2})
  return inputs, cases


@pytest.fixture(scope="module")
def sharded_mining(tmp_path_factory):
  inputs, cases = _mining_cases()
  folder = tmp_path_factory.mktemp("sharded_mining")
  np.savez(folder / "inputs.npz", **inputs)
  run_on_devices(4, MINING_SCRIPT, str(folder / "inputs.npz"), json.dumps(cases),
                 str(folder / "outputs.npz"))
  outputs = np.load(folder / "outputs.npz")
  return inputs, cases, {key: outputs[key] for key in outputs.files}


def _result(outputs, name, margin):
  prefix = f"{name}/{margin}/stats/"
  stats = {key[len(prefix):]: value for key, value in outputs.items() if key.startswith(prefix)}
  return (outputs[f"{name}/{margin}/loss"], stats), outputs[f"{name}/{margin}/gradient"]


def test_xla_backend_on_4_devices_matches_reference_and_oracle(sharded_mining):
  inputs, cases, outputs = sharded_mining
  for case in cases:
    name = case["name"]
    assert outputs[name + "/devices"] == 4, name
    batch = len(inputs[case["batch"] + "/labels"])
    rows = outputs[name + "/shard_rows"]
    assert sorted(rows[:, 2]) == [0, 1, 2, 3], name
    quarter = batch // 4
    np.testing.assert_array_equal(rows[:, :2], [[d * quarter, (d + 1) * quarter]
                                                for d in rows[:, 2]], err_msg=name)
    if case["batch"] != "grid":
      continue
    for margin in case["margins"]:
      oracle.assert_matches(case["variant"], _result(outputs, name, margin),
                            inputs["grid/labels"], inputs["grid/embeddings"], margin,
                            case["metric"], f"{name} margin={margin} on 4 devices")


def test_xla_backend_on_4_devices_has_the_finite_difference_gradient(sharded_mining):
  inputs, cases, outputs = sharded_mining
  labels, embeddings = inputs["separated/labels"], inputs["separated/embeddings"]
  for case in cases:
    if case["batch"] != "separated":
      continue
    (loss, stats), gradient = _result(outputs, case["name"], 1.0)
    reference_loss = lambda x, fn=oracle.REFERENCE[case["variant"]]: fn(labels, x, margin=1.0)
    expected_loss, expected_stats = oracle.REFERENCE[case["variant"]](
        labels, embeddings, margin=1.0, return_stats=True)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5, err_msg=case["name"])
    for key in oracle.COUNTS[case["variant"]]:
      assert float(stats[key]) == expected_stats[key], (case["name"], key)
    expected = oracle.central_differences(reference_loss, embeddings.astype(np.float64))
    assert np.abs(expected).max() > 1e-2, "the batch should have active terms"
    np.testing.assert_allclose(gradient, expected, rtol=1e-3, atol=1e-5, err_msg=case["name"])
