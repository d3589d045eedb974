"""Checkpoints that cannot be read are set aside and the run resumes from an earlier one; with
none left the run stops with one line, deleting nothing.

The run is `python -m tripletjax.main` on 2 CPU devices (`tests.app.runs.run_digits`).
"""

from __future__ import annotations

import json
import os

import pytest

from tests.app.runs import run_digits


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


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, main_env):
  workdir = tmp_path / "run"
  first = run_digits(main_env, workdir, 2, "--config.num_epochs=2")
  assert first.returncode == 0, first.stderr[-3000:]
  steps = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  assert steps == [8, 16]
  corrupt_checkpoint(workdir / "checkpoints" / "16", "truncate")

  resumed = run_digits(main_env, workdir, 2, "--config.num_epochs=3")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "checkpoints/16 is unusable" in resumed.stdout
  assert "Resuming from the checkpoint of step 8" in resumed.stdout
  assert os.listdir(workdir / "checkpoints" / "unusable")  # Set aside, not deleted.
  with open(workdir / "eval.json") as f:
    assert json.load(f)["steps"] == 24

  # No usable checkpoint at all: one line, exit status 2, nothing deleted.
  for step in (16, 24):
    corrupt_checkpoint(workdir / "checkpoints" / str(step), "delete")
  failed = run_digits(main_env, workdir, 2, "--config.num_epochs=3")
  assert failed.returncode == 2, failed.stderr[-3000:]
  assert "error: no usable checkpoint" in failed.stderr
  assert "Traceback" not in failed.stderr
