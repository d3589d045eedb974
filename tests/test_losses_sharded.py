"""The losses on a batch sharded over several devices.

The number of (fake CPU) devices is fixed when JAX starts, so the sharded programs run in a
subprocess (`tests.subprocesses.run_on_devices`) that writes its results to a file; this
process, with one device, checks them.

On 4 devices: the losses of a batch sharded by `jit` alone, and the xla backend against the
reference, the oracle and finite differences.

On 8 devices, the mining scopes (`tripletjax.sharded`, the losses' `axis_name`): "global"
mining (each device mines its own anchors against the all-gathered batch) must give the loss,
statistics and gradient of the one-device loss on the whole batch: values and gradients within
1e-5, integer counts exactly. "local" mining must equal the mean of the per-device losses, and
differ from "global". Non-finite embeddings on one device make the loss and every gradient row
on every device NaN. Each device's rows of the distance matrix are the one-device matrix's.
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest

from tests.mining import oracle
from tests.subprocesses import run_on_devices
from tripletjax import losses
from tripletjax import reference
from tripletjax.mining import blocks


SCRIPT = """
    import jax, numpy as np
    import tripletjax as tj
    from tripletjax.app.devices import mesh as mesh_lib

    assert jax.device_count() == 4
    mesh = mesh_lib.make_mesh()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, 5, 64).astype(np.int32)
    xs, ys = mesh_lib.shard_batch(mesh, x, y)
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
    from tripletjax.app.devices import mesh as mesh_lib

    LOSSES = {"semihard": tj.triplet_semihard_loss, "batch_all": tj.batch_all_triplet_loss}
    inputs_path, cases, outputs_path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    assert jax.device_count() == 4
    mesh = mesh_lib.make_mesh()
    inputs, outputs = np.load(inputs_path), {}
    for case in cases:
      name = case["name"]
      blocks.BLOCK_ENTRIES = case["block_entries"]  # Read while tracing the new jit below.
      loss_fn = functools.partial(LOSSES[case["variant"]], metric=case["metric"],
                                  return_stats=True, mining_backend="xla")
      step = jax.jit(jax.value_and_grad(lambda e, y, m: loss_fn(y, e, margin=m), has_aux=True))
      embeddings, labels = mesh_lib.shard_batch(mesh, inputs[case["batch"] + "/embeddings"],
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

# ----------------------------------------------------------------------------------------------
# The mining scopes on 8 devices, against the plain losses on one device.


NUM_DEVICES = 8
BATCH = 64  # 8 rows per device.
MARGINS = (0.2, 1.0)
ONE_BLOCK = 2048 * 2048
# 3 anchor rows per block: each device's 8 anchors in 3 blocks, the last with a padding row.
SMALL_BLOCKS = BATCH * 3

# name -> (labels, embeddings, **options) -> (loss, stats): every mined loss, both mining
# backends of the semi-hard loss.
VARIANTS = {
    "semihard-xla": functools.partial(losses.triplet_semihard_loss, mining_backend="xla"),
    "semihard-numpy": functools.partial(losses.triplet_semihard_loss, mining_backend="numpy"),
    "hard": losses.triplet_hard_loss,
    "hard-soft": functools.partial(losses.triplet_hard_loss, soft=True),
    "batch_all-xla": functools.partial(losses.batch_all_triplet_loss, mining_backend="xla"),
    "contrastive": losses.contrastive_loss,
}

# Statistics that count something: compared exactly.
COUNTS = ("num_positive_pairs", "num_fallback", "num_valid_anchors", "num_valid_triplets",
          "num_active_triplets", "num_negative_pairs")


def make_inputs() -> dict[str, np.ndarray]:
  """The batches: random with duplicate rows (on one device and across devices), and an
  integer grid (exact distances, many ties)."""
  rng = np.random.default_rng(10)
  random = rng.normal(size=(BATCH, 8)).astype(np.float32)
  random[40] = random[3]   # Rows of devices 0 and 5.
  random[10] = random[9]   # Two rows of device 1.
  labels = rng.integers(0, 5, BATCH).astype(np.int32)
  labels[10] = labels[9]
  grid = oracle.integer_grid(rng, BATCH)
  grid_labels = rng.integers(0, 4, BATCH).astype(np.int32)
  # Wide rows: the Gram matrix's diagonal differs from separately summed squares.
  wide = rng.normal(size=(BATCH, 128)).astype(np.float32)
  wide[50] = wide[2]
  wide[12] = wide[11]
  return {"random/labels": labels, "random/embeddings": random,
          "grid/labels": grid_labels, "grid/embeddings": grid, "wide/embeddings": wide}


def _case(variant, batch="random", metric="l2", scope="global", block_entries=ONE_BLOCK,
          grad="outside", nonfinite=False):
  name = f"{variant}-{batch}-{metric}-{scope}-{block_entries}-{grad}"
  return {"name": name, "variant": variant, "batch": batch, "metric": metric, "scope": scope,
          "block_entries": block_entries, "grad": grad, "nonfinite": nonfinite}


def make_cases() -> list[dict]:
  cases = [_case(variant, nonfinite=variant in ("semihard-xla", "hard", "contrastive"))
           for variant in VARIANTS]
  # The angular metric: test_each_device_computes_its_rows_of_the_one_device_distance_matrix.
  cases += [_case("batch_all-xla", batch="grid", metric="squared_l2")]
  cases += [_case(variant, block_entries=SMALL_BLOCKS)
            for variant in ("semihard-xla", "batch_all-xla", "hard", "contrastive")]
  cases += [_case("semihard-xla", grad="inside")]
  cases += [_case("semihard-xla", scope="replicated")]
  cases += [_case(variant, scope="local", nonfinite=variant == "semihard-xla")
            for variant in ("semihard-xla", "contrastive")]
  return cases


def sharded_results(inputs: dict, cases: list[dict]) -> dict[str, np.ndarray]:
  """Runs `cases` on all devices of this process (the subprocess): loss, stats and gradient of
  each, with each margin; for the `nonfinite` ones also with a NaN and with an infinity."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import tripletjax

  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P("data"))
  from tripletjax import distances
  from tripletjax.mining import shards

  outputs = {"devices": np.array(jax.device_count())}
  for metric in ("l2", "angular"):
    def rows(x, metric=metric):
      anchors = shards.shard_anchors(x.shape[0], "data")
      return distances.shard_anchor_distances(
          shards.gather(x, "data"), anchors.index,
          functools.partial(shards.gather, axis_name="data"), metric)
    outputs[f"distances/{metric}"] = np.asarray(jax.jit(jax.shard_map(
        rows, mesh=mesh, in_specs=P("data"), out_specs=P("data")))(
            jax.device_put(inputs["wide/embeddings"], sharding)))
    # The one-device matrix in this process (XLA:CPU's matrix products depend on the
    # process's device count, so not in the test's process).
    outputs[f"distances/{metric}/one_device"] = np.asarray(jax.jit(functools.partial(
        distances.pairwise_distances, metric=metric))(inputs["wide/embeddings"]))
  for case in cases:
    blocks.BLOCK_ENTRIES = case["block_entries"]  # Read while tracing the new jit below.
    variant = VARIANTS[case["variant"]]

    def loss_fn(margin, variant=variant, case=case):
      return functools.partial(variant, margin=margin, metric=case["metric"], return_stats=True)

    if case["grad"] == "outside":
      def step(embeddings, labels, margin, case=case, loss_fn=loss_fn):
        sharded = tripletjax.sharded_loss(loss_fn(margin), mesh, scope=case["scope"])
        return jax.value_and_grad(lambda x: sharded(labels, x), has_aux=True)(embeddings)
    else:  # As a user would inside their own shard_map: the gradient of this device's rows.
      def step(embeddings, labels, margin, loss_fn=loss_fn):
        def per_device(labels, embeddings):
          return jax.value_and_grad(
              lambda x: loss_fn(margin)(labels, x, axis_name="data"), has_aux=True)(embeddings)
        return jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")),
                             out_specs=((P(), P()), P("data")))(labels, embeddings)
    step = jax.jit(step)
    labels = jax.device_put(inputs[case["batch"] + "/labels"], sharding)
    clean = inputs[case["batch"] + "/embeddings"]
    runs = {f"margin{margin}": (clean, margin) for margin in MARGINS}
    if case["nonfinite"]:
      for bad in ("nan", "inf"):
        poisoned = clean.copy()
        poisoned[5, 1] = float(bad)  # On device 0 only.
        runs[bad] = (poisoned, 1.0)
    for run, (embeddings, margin) in runs.items():
      embeddings = jax.device_put(embeddings, sharding)
      assert len(embeddings.sharding.device_set) == jax.device_count()
      (loss, stats), gradient = step(embeddings, labels, np.float32(margin))
      key = f"{case['name']}/{run}"
      outputs[key + "/loss"] = np.asarray(loss)
      outputs[key + "/gradient"] = np.asarray(gradient)
      for stat, value in stats.items():
        outputs[f"{key}/stats/{stat}"] = np.asarray(value)
  return outputs


SCOPES_SCRIPT = """
    import json, sys
    import numpy as np
    from tests.test_losses_sharded import sharded_results

    inputs = dict(np.load(sys.argv[1]))
    np.savez(sys.argv[3], **sharded_results(inputs, json.loads(sys.argv[2])))
"""


@pytest.fixture(scope="module")
def sharded_scopes(tmp_path_factory):
  inputs, cases = make_inputs(), make_cases()
  folder = tmp_path_factory.mktemp("losses_sharded")
  np.savez(folder / "inputs.npz", **inputs)
  run_on_devices(NUM_DEVICES, SCOPES_SCRIPT, str(folder / "inputs.npz"), json.dumps(cases),
                 str(folder / "outputs.npz"))
  outputs = np.load(folder / "outputs.npz")
  return inputs, cases, {key: outputs[key] for key in outputs.files}


def _scope_result(outputs, case, run):
  prefix = f"{case['name']}/{run}/"
  stats = {key[len(prefix + 'stats/'):]: value for key, value in outputs.items()
           if key.startswith(prefix + "stats/")}
  return outputs[prefix + "loss"], stats, outputs[prefix + "gradient"]


@functools.cache
def _one_device_step(variant: str, metric: str, block_entries: int):
  """The jitted value and gradient of a plain loss (`blocks.BLOCK_ENTRIES` is read when it is
  traced, so it is part of the key)."""
  del block_entries
  fn = functools.partial(VARIANTS[variant], metric=metric, return_stats=True)
  return jax.jit(jax.value_and_grad(lambda x, y, m: fn(y, x, margin=m), has_aux=True))


def _single_device(case, labels, embeddings, margin):
  """(loss, stats, gradient) of the plain loss on these rows, in this one-device process."""
  step = _one_device_step(case["variant"], case["metric"], case["block_entries"])
  (loss, stats), gradient = step(embeddings, labels, np.float32(margin))
  return np.asarray(loss), {k: np.asarray(v) for k, v in stats.items()}, np.asarray(gradient)


def _expected(case, inputs, margin, monkeypatch):
  """What the sharded case must give: the whole batch on one device, or for "local" the mean
  of the per-device losses (counts summed, other statistics averaged)."""
  monkeypatch.setattr(blocks, "BLOCK_ENTRIES", case["block_entries"])
  labels, embeddings = inputs[case["batch"] + "/labels"], inputs[case["batch"] + "/embeddings"]
  if case["scope"] != "local":
    return _single_device(case, labels, embeddings, margin)
  rows = BATCH // NUM_DEVICES
  parts = [_single_device(case, labels[d * rows:(d + 1) * rows],
                          embeddings[d * rows:(d + 1) * rows], margin)
           for d in range(NUM_DEVICES)]
  loss = np.mean([part[0] for part in parts])
  stats = {name: (np.sum if name.startswith("num_") else np.mean)(
      [part[1][name] for part in parts]) for name in parts[0][1]}
  gradient = np.concatenate([part[2] for part in parts]) / NUM_DEVICES
  return loss, stats, gradient


def _assert_equal(got, expected, what):
  loss, stats, gradient = got
  expected_loss, expected_stats, expected_gradient = expected
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-7, err_msg=what)
  assert set(stats) == set(expected_stats), what
  for name, value in stats.items():
    if name in COUNTS:
      assert int(value) == int(expected_stats[name]), (what, name, value, expected_stats[name])
      assert float(value) == float(expected_stats[name]), (what, name)
    else:
      np.testing.assert_allclose(value, expected_stats[name], rtol=1e-5, atol=1e-7,
                                 err_msg=f"{what} {name}")
  np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-5, atol=1e-7, err_msg=what)


@pytest.mark.parametrize("metric", ["l2", "angular"])
def test_each_device_computes_its_rows_of_the_one_device_distance_matrix(sharded_scopes,
                                                                         metric):
  _, _, outputs = sharded_scopes
  got, expected = outputs[f"distances/{metric}"], outputs[f"distances/{metric}/one_device"]
  # Bit for bit: each device takes its anchors' squared norms from its block of the Gram
  # matrix, as the one-device matrix takes them from its diagonal (XLA:CPU computes a row of
  # a matrix product the same way in a block of rows as in the whole).
  np.testing.assert_array_equal(got, expected)
  if metric == "l2":
    # Duplicate rows, on two devices (2 and 50) and on one (11 and 12), at distance exactly 0.
    assert got[2, 50] == got[50, 2] == got[11, 12] == got[12, 11] == 0.0


def test_the_subprocess_ran_every_case_on_8_devices(sharded_scopes):
  _, cases, outputs = sharded_scopes
  assert int(outputs["devices"]) == NUM_DEVICES
  for case in cases:
    for margin in MARGINS:
      assert f"{case['name']}/margin{margin}/loss" in outputs, case["name"]


@pytest.mark.parametrize("scope", ["global", "replicated"])
def test_global_mining_on_8_devices_equals_one_device(sharded_scopes, scope, monkeypatch):
  inputs, cases, outputs = sharded_scopes
  checked = set()
  for case in cases:
    if case["scope"] != scope:
      continue
    for margin in MARGINS:
      got = _scope_result(outputs, case, f"margin{margin}")
      expected = _expected(case, inputs, margin, monkeypatch)
      _assert_equal(got, expected, f"{case['name']} margin={margin}")
      # Not a comparison of zeros: the batch has active triplets in every case.
      assert np.abs(expected[2]).max() > 1e-3, case["name"]
    checked.add(case["variant"])
  if scope == "global":
    assert checked == set(VARIANTS)


def test_local_mining_is_the_mean_of_per_device_losses_and_not_global(sharded_scopes,
                                                                      monkeypatch):
  inputs, cases, outputs = sharded_scopes
  global_losses = {case["variant"]: _scope_result(outputs, case, "margin1.0")[0]
                   for case in cases if case["scope"] == "global" and case["name"].endswith(
                       f"random-l2-global-{ONE_BLOCK}-outside")}
  local_cases = [case for case in cases if case["scope"] == "local"]
  assert len(local_cases) == 2
  for case in local_cases:
    for margin in MARGINS:
      got = _scope_result(outputs, case, f"margin{margin}")
      _assert_equal(got, _expected(case, inputs, margin, monkeypatch),
                    f"{case['name']} margin={margin}")
    assert abs(float(_scope_result(outputs, case, "margin1.0")[0])
               - float(global_losses[case["variant"]])) > 1e-3, case["name"]


def test_nonfinite_embeddings_on_one_device_give_nan_everywhere(sharded_scopes):
  _, cases, outputs = sharded_scopes
  poisoned = [case for case in cases if case["nonfinite"]]
  assert {case["scope"] for case in poisoned} == {"global", "local"}
  for case in poisoned:
    for bad in ("nan", "inf"):
      loss, stats, gradient = _scope_result(outputs, case, bad)
      what = f"{case['name']} with {bad}"
      assert np.isnan(loss), what
      assert gradient.shape == (BATCH, 8) and np.all(np.isnan(gradient)), what
      floats = [value for value in stats.values() if np.issubdtype(value.dtype, np.floating)]
      assert floats and all(np.isnan(value) for value in floats), what
