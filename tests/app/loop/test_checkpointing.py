"""Checkpoints that cannot be read are set aside and the run resumes from an earlier one; with
none left the run stops with one line, deleting nothing.

The run is `python -m tripletjax.main` on 2 CPU devices (`tests.app.runs.run_digits`).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.app.runs import read_jsonl, run_digits


def corrupt_checkpoint(path, how: str) -> None:
  files = sorted(os.path.join(root, name) for root, _, names in os.walk(os.path.join(path, "state"))
                 for name in names)
  assert files, path
  if how == "delete":
    for name in files:
      os.remove(name)
  else:  # Truncate every data file to half its size.
    for name in files:
      with open(name, "r+b") as f:
        f.truncate(os.path.getsize(name) // 2)


def read_checkpoint(path) -> tuple[list[np.ndarray], dict]:
  """(the state's arrays as NumPy, the meta record without its timing) of a step's checkpoint."""
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(os.path.join(path, "state")).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = checkpointer.restore(os.path.join(path, "state"),
                               args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  with open(os.path.join(path, "meta", "metadata")) as f:
    meta = json.load(f)
  del meta["train_seconds"]
  return jax.tree.leaves(state), meta


def without_timing(records: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, main_env):
  workdir = tmp_path / "run"
  first = run_digits(main_env, workdir, 2, "--config.num_epochs=2")
  assert first.returncode == 0, first.stderr[-3000:]
  steps = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  assert steps == [8, 16]
  first_records = without_timing(read_jsonl(workdir / "metrics.jsonl"))
  state_16, meta_16 = read_checkpoint(workdir / "checkpoints" / "16")
  corrupt_checkpoint(workdir / "checkpoints" / "16", "truncate")

  resumed = run_digits(main_env, workdir, 2, "--config.num_epochs=2")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "checkpoints/16 is unusable" in resumed.stdout
  assert os.listdir(workdir / "checkpoints" / "unusable")  # Set aside, not deleted.
  # Resumed from step 8's state (parameters, optimizer, RNG counts, sampler position): steps
  # 9-16 are trained again exactly as the first time, to the state of the lost checkpoint.
  resumed_records = without_timing(read_jsonl(workdir / "metrics.jsonl"))
  assert [r["step"] for r in first_records] == [3, 6, 9, 12, 15, 16]
  assert resumed_records == first_records
  state, meta = read_checkpoint(workdir / "checkpoints" / "16")
  assert meta == meta_16
  assert len(state) == len(state_16)
  for array, expected in zip(state, state_16):
    np.testing.assert_array_equal(array, expected)
  with open(workdir / "eval.json") as f:
    assert json.load(f)["steps"] == 16

  # No usable checkpoint at all: one line, exit status 2, nothing deleted.
  for step in (8, 16):
    corrupt_checkpoint(workdir / "checkpoints" / str(step), "delete")
  failed = run_digits(main_env, workdir, 2, "--config.num_epochs=3")
  assert failed.returncode == 2, failed.stderr[-3000:]
  assert "error: no usable checkpoint" in failed.stderr
  assert "Traceback" not in failed.stderr
