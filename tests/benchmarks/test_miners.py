"""The benchmark script `benchmarks/miners.py`: it runs, writes its JSON and prints its table, and
its figures follow from its own measurements (medians, speed-ups) and from the reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import miners
from tripletjax import reference


def assert_case_is_consistent(case, loss_name):
  """The figures of one benchmark case follow from its own measurements and inputs."""
  for name in ("jax", "numpy"):
    runs = case[f"{name}_runs_ms"]
    assert 3 <= len(runs) <= 20 and min(runs) > 0, name
    assert case[f"{name}_ms"] == pytest.approx(float(np.median(runs)), rel=1e-12), name
  assert case["numpy_speedup"] == pytest.approx(case["numpy_ms"] / case["jax_ms"], rel=1e-12)
  # Both losses are the reference's loss of the case's inputs.
  labels, embeddings = miners.make_inputs(case["batch_size"], case["dim"], case["classes"])
  expected = reference.MINED_LOSSES[loss_name](labels, embeddings, miners.MARGIN)
  assert expected > 0.1  # Something to compare.
  for name in ("jax_loss", "numpy_loss"):
    np.testing.assert_allclose(case[name], expected, rtol=1e-5, err_msg=name)
  assert case["loss_relative_difference"] == pytest.approx(
      abs(case["jax_loss"] - case["numpy_loss"]) / abs(case["jax_loss"]), rel=1e-9, abs=1e-15)
  if case["mode"] == "forward+backward":
    assert case["grad_max_abs"] > 1e-3
    assert case["grad_max_abs_difference"] <= 1e-5 * case["grad_max_abs"]


def test_benchmark_script_runs_and_writes_json(tmp_path, capsys):
  out = tmp_path / "miners.json"
  results = miners.main(["--batch-sizes", "16", "--dims", "4", "--losses", "hard",
                         "--memory", "xla", "--min-time", "0.001", "--out", str(out)])
  assert json.loads(out.read_text())["cases"] == json.loads(json.dumps(results["cases"]))
  assert [(case["mode"], case["batch_size"], case["dim"]) for case in results["cases"]] == [
      ("forward", 16, 4), ("forward+backward", 16, 4)]
  for case in results["cases"]:
    assert_case_is_consistent(case, "hard")
  forward, backward = results["cases"]
  assert forward["reference_loss"] == pytest.approx(forward["jax_loss"], rel=1e-5)  # B <= 256
  assert forward["reference_speedup"] == pytest.approx(
      forward["reference_ms"] / forward["jax_ms"], rel=1e-12)
  assert backward["reference_ms"] is None  # forward+backward: the reference has no gradient.
  # The printed table shows the measured times.
  assert (f"| hard | forward | 16 | 4 | {forward['jax_ms']:.1f} | "
          f"{forward['jax_compile_s']:.2f} | {forward['numpy_ms']:.1f} | "
          f"{forward['reference_ms']:.1f} |") in capsys.readouterr().out


def test_benchmark_script_times_the_xla_mining_backend(tmp_path):
  results = miners.main(["--batch-sizes", "16", "--dims", "4", "--losses", "semihard",
                         "--modes", "forward+backward", "--mining-backend", "xla",
                         "--memory", "subprocess", "--min-time", "0.001",
                         "--out", str(tmp_path / "miners.json")])
  assert results["config"]["mining_backend"] == "xla"
  (case,) = results["cases"]
  assert_case_is_consistent(case, "semihard")
  # A child process that imported JAX and ran the case: far above an empty interpreter's 10 MB.
  assert case["memory"]["peak_rss_mb"] > 50
  assert case["peak_mb"] == case["memory"]["peak_rss_mb"]


def test_benchmark_script_times_the_losses_of_cosine_similarities_beside_the_peer(tmp_path):
  results = miners.main(["--batch-sizes", "16", "--dims", "4", "--losses", "multi_similarity",
                         "ntxent", "--modes", "forward+backward", "--memory", "xla",
                         "--min-time", "0.001", "--out", str(tmp_path / "miners.json")])
  for case in results["cases"]:
    labels, embeddings = miners.make_inputs(case["batch_size"], case["dim"], case["classes"])
    expected = reference.MINED_LOSSES[case["loss"]](labels, embeddings)  # Default options.
    for name in ("jax_loss", "numpy_loss"):
      np.testing.assert_allclose(case[name], expected, rtol=1e-5, err_msg=name)
    assert case["grad_max_abs_difference"] <= 1e-4 * case["grad_max_abs"]
    if case["pml_ms"] is not None:  # pytorch-metric-learning is installed.
      np.testing.assert_allclose(case["pml_loss"], expected, rtol=1e-5)
      assert case["pml_ms"] == pytest.approx(float(np.median(case["pml_runs_ms"])), rel=1e-12)
