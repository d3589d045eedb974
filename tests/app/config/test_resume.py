"""The config on resume: a change that would alter the run is an error naming it, one that
extends it (more epochs) is reported and goes ahead.

The run is `python -m tripletjax.main` on 2 CPU devices (`tests.app.runs.run_digits`).
"""

from __future__ import annotations

import json

import pytest

from tests.app.runs import run_digits


@pytest.mark.slow
def test_resume_with_a_changed_config(tmp_path, main_env):
  workdir = tmp_path / "run"
  first = run_digits(main_env, workdir, 2, "--config.num_epochs=1")
  assert first.returncode == 0, first.stderr[-3000:]

  changed = run_digits(main_env, workdir, 2, "--config.num_epochs=1",
                     "--config.model.embedding_dim=32")
  assert changed.returncode == 2
  lines = [line for line in changed.stderr.splitlines() if line.strip()]
  assert lines[0].startswith("error: ") and "model.embedding_dim 64 -> 32" in lines[0]
  assert "--workdir" in changed.stderr
  for noise in ("Traceback", "Event loop is closed", "sys.meta_path"):
    assert noise not in changed.stderr

  extended = run_digits(main_env, workdir, 2, "--config.num_epochs=2")
  assert extended.returncode == 0, extended.stderr[-3000:]
  assert "Config changes on resume: num_epochs 1 -> 2" in extended.stdout
  with open(workdir / "eval.json") as f:
    assert json.load(f)["steps"] == 16
