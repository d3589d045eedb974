"""The config on resume: a change that would alter the run is an error naming it, one that
extends it (more epochs) is reported and goes ahead.

The run is `python -m tripletjax.main` on 2 CPU devices (`tests.app.runs.run_digits`).
"""

from __future__ import annotations

import json

import pytest

from tests.app import runs
from tests.app.runs import run_digits
from tripletjax.app import errors
from tripletjax.app.config import resume


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


def _flat_model_options_run(workdir, config):
  """A config.json as written before the model options had a section per model family."""
  recorded = resume.as_plain_dict(config)
  model = recorded["model"]
  for family in ("cnn", "resnet"):
    model.update(model.pop(family))
  workdir.mkdir(exist_ok=True)
  with open(workdir / resume.CONFIG_FILE, "w") as f:
    json.dump(recorded, f)
  return recorded


def test_a_config_json_with_flat_model_options_resumes_with_them_in_their_section(tmp_path):
  config = runs.load_config_module("fashion_mnist").get_config()
  recorded = _flat_model_options_run(tmp_path, config)
  assert recorded["model"]["batch_norm"] is True and "cnn" not in recorded["model"]
  read = resume.read_recorded(str(tmp_path))
  assert read["model"]["cnn"] == {"dropout_rate": 0.0, "batch_norm": True,
                                  "negative_slope": None}
  assert "batch_norm" not in read["model"] and read["model"]["resnet"]["width"] is None
  assert resume.check_resume(config, str(tmp_path)) == {}
  config.num_epochs = 30
  assert resume.check_resume(config, str(tmp_path)) == {"num_epochs": (20, 30)}
  config.model.cnn.batch_norm = False
  with pytest.raises(errors.UserError, match=r"model\.cnn\.batch_norm True -> False"):
    resume.check_resume(config, str(tmp_path))


def test_a_config_json_from_before_the_newest_model_options_resumes(tmp_path):
  config = runs.load_config_module("siamese_pairs").get_config()
  recorded = resume.as_plain_dict(config)
  model = recorded["model"]
  model.pop("cnn")
  resnet = model.pop("resnet")
  del resnet["bn_momentum"], resnet["zero_init_residual"]  # Options the config had not.
  model.update(resnet)
  with open(tmp_path / resume.CONFIG_FILE, "w") as f:
    json.dump(recorded, f)
  assert resume.check_resume(config, str(tmp_path)) == {}
