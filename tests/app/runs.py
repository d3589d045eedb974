"""Runs of the trainer in the tests: tiny configs, the config files, `python -m tripletjax.main`
on digits, and what runs write."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import ml_collections

from tests import subprocesses
from tripletjax.app.config import defaults


def override(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets the dotted keys of `overrides` ("loss.margin": 0.2) in `config`; returns it."""
  for key, value in overrides.items():
    *sections, name = key.split(".")
    target = config
    for section in sections:
      target = target[section]
    target[name] = value
  return config


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """A run of a few seconds on 400 digits; `overrides` as in `override`."""
  config = defaults.get_config()
  config.data.name = "digits"
  config.data.max_train = 400
  config.data.max_test = 200
  config.model.name = "tfa_cnn"
  config.model.embedding_dim = 16
  config.batch.batch_size = 64
  config.num_epochs = 2
  config.log_every_steps = 2
  config.quiet = True
  config.export.projector_max_points = 100
  return override(config, overrides)


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def load_config_module(name: str):
  """The module configs/<name>.py (as main.py's --config flag loads it)."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(subprocesses.REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# `python -m tripletjax.main` on digits, 8 steps an epoch, a checkpoint every epoch.
MAIN_ARGS = ["--config=configs/digits.py", "--config.data.max_train=512",
             "--config.data.max_test=200", "--config.batch.batch_size=64",
             "--config.num_epochs=12", "--config.eval_every_epochs=4",
             "--config.checkpoint_every_epochs=1", "--config.log_every_steps=3",
             "--config.quiet=True", "--config.export.pca_every_eval=False"]


def main_args(workdir, devices: int, *extra) -> list[str]:
  """The arguments of `python` for a digits run on `devices` CPU devices, writing `workdir`."""
  return ["-m", "tripletjax.main", *MAIN_ARGS, *extra, f"--cpu_devices={devices}",
          f"--workdir={workdir}"]


def run_digits(env, workdir, devices: int = 2, *extra) -> subprocess.CompletedProcess:
  """Runs `main_args` to the end, in the environment `env` (the `main_env` fixture)."""
  return subprocesses.run_python(*main_args(workdir, devices, *extra), env=env, timeout=300)
