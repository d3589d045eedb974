"""`benchmarks/accelerator.py` end to end in its smoke mode (tiny sizes, on the CPU), and its
handling of a part that runs out of time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks import accelerator
from tests.conftest import skip_unless_ci
from tests.subprocesses import REPO
from tripletjax.app.data import datasets

SORTS = {"xla:rank_key": [1, 1], "xla:three_keys": [3], "xla:packed_key": [2]}


# What a bare accelerator machine lacks: the check must run without importing any of them.
ABSENT = ("ml_collections", "tqdm", "tensorboardX", "tensorflow_datasets", "sklearn",
          "matplotlib", "orbax")
# Imported at start-up from PYTHONPATH by every process of the check: makes ABSENT unimportable.
BLOCKER = f"""
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {ABSENT!r}:
      raise ModuleNotFoundError(f"{{name}} is blocked (a bare accelerator machine)", name=name)
    return None

sys.meta_path.insert(0, Blocker())
"""


def run_accelerator(*args: str, timeout_s: float = 600, site: Path | None = None):
  environment = dict(os.environ)
  if site is not None:
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(site), REPO, environment.get("PYTHONPATH")]))
  result = subprocess.run([sys.executable, "-m", "benchmarks.accelerator", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s, env=environment)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  return result


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out, site = tmp_path_factory.mktemp("accelerator"), tmp_path_factory.mktemp("bare_site")
  (site / "sitecustomize.py").write_text(BLOCKER)
  run_accelerator("--smoke", "--out", str(out), site=site)
  return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_every_part_runs_and_is_reported_without_the_app_dependencies(smoke):
  results, report = smoke
  assert list(results["parts"]) == list(accelerator.PARTS)
  for part, result in results["parts"].items():
    assert result["status"] == "ok", (part, result.get("log_tail"))
    assert result["items"], part
    assert f"## {part}: ok" in report
  environment = results["parts"]["environment"]["items"][0]
  # The check's processes see the devices of this one (same platform, same XLA_FLAGS).
  assert (environment["backend"], environment["device_count"]) == (jax.default_backend(),
                                                                    jax.device_count())
  assert environment["packages"]["flax"]
  # The blocker was in force in the check's processes.
  assert not any(environment["packages"][name] for name in ABSENT if name in
                 environment["packages"]), environment["packages"]


def test_miners_part_times_every_loss_and_sort_method_alike(smoke):
  results, _ = smoke
  items = results["parts"]["miners"]["items"]
  for batch_size in accelerator.SMOKE["batch_sizes"]:
    assert any(i["case"] == "matmul" and i["batch_size"] == batch_size for i in items)
    for loss in accelerator.LOSSES:
      cases = [i for i in items if i["case"] == loss and i["batch_size"] == batch_size]
      methods = sorted(i["method"] for i in cases) if loss != "hard" else [None]
      assert methods == (sorted(SORTS) if loss != "hard" else [None]), (loss, cases)
      for item in cases:
        assert "error" not in item, item
        assert item["ms"] == pytest.approx(float(np.median(item["runs_ms"])))
        # What the compiled program sorts with, read from its HLO (no CUB on a CPU).
        assert item["sorts"]["xla_sorts"] == SORTS.get(item["method"], []), item
        assert item["sorts"]["cub_sorts"] == []
        # Every sort method computes the same loss and gradient.
        assert item["loss"] == cases[0]["loss"] and item["loss"] > 0, (loss, item)
        assert item["gradient_abs_sum"] == cases[0]["gradient_abs_sum"], (loss, item)


def test_scaling_part_compares_the_scopes_on_two_devices(smoke):
  results, _ = smoke
  items = {(i["devices"], i["scope"], i["case"]): i
           for i in results["parts"]["scaling"]["items"]}
  assert set(items) == {(2, scope, "loss") for scope in ("global", "replicated", "local")} | {
      (2, "global", "train")}
  assert all("error" not in item for item in items.values()), items
  global_loss, replicated = items[2, "global", "loss"], items[2, "replicated", "loss"]
  assert global_loss["loss"] == pytest.approx(replicated["loss"], rel=1e-5)
  assert abs(items[2, "local", "loss"]["loss"] - global_loss["loss"]) > 1e-4
  # Each device holds only its own rows: smaller arrays than mining the whole batch.
  assert global_loss["largest_array_elements"] < replicated["largest_array_elements"]
  for (_, _, case), item in items.items():
    if case == "train":
      assert item["images_per_s"] == pytest.approx(
          accelerator.SMOKE["scaling_train_batch_size"] / (item["ms"] / 1e3))


def test_training_part_trains_on_fashion_mnist_or_says_why_not(smoke):
  results, _ = smoke
  items = results["parts"]["training"]["items"]
  if not os.path.isdir(datasets.FASHION_MNIST_DEBIAN_DIR):
    # Without scikit-learn (blocked) digits are not an option either.
    assert items == [{"skipped": items[0]["skipped"]}] and "no training data" in items[0][
        "skipped"], items
    skip_unless_ci(f"{datasets.FASHION_MNIST_DEBIAN_DIR} is absent: the training part ran "
                   "the no-data path only")
  assert [i["stage"] for i in items] == ["data", "initial evaluation", "epoch 1", "done"]
  item = items[-1]
  assert item["dataset"] == "fashion_mnist", item
  assert item["finite_losses"]
  # Leave-one-out precision@1 of the test images: a count of hits over them, far above chance
  # (0.1) from the start (the CNN's random features), below 1 (a query never finds itself).
  for key in ("precision_at_1_before", "precision_at_1"):
    hits = item[key] * item["test_examples"]
    assert hits == round(hits) and 0.3 < item[key] < 1.0, (key, item)
  expected_steps = accelerator.SMOKE["max_train"] // accelerator.SMOKE["train_batch_size"]
  assert item["steps"] == expected_steps or item["stopped_early_after_s"] is not None


def test_a_part_out_of_time_is_recorded_and_the_next_part_runs(tmp_path):
  run_accelerator("--smoke", "--out", str(tmp_path), "--parts", "miners", "environment",
                  "--timeout", "miners=1", timeout_s=120)
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["parts"]["miners"]["status"] == "timed out after 1 s"
  assert results["parts"]["environment"]["status"] == "ok"
  assert "## miners: timed out after 1 s" in (tmp_path / "results.md").read_text()


def test_out_is_required():
  with pytest.raises(SystemExit):
    accelerator.parse_args(["--smoke"])
