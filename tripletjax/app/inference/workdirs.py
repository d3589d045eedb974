"""Whether a folder is a training run: cheap to ask (no JAX, no flax), so a command line says
so before it loads anything."""

from __future__ import annotations

import os

from tripletjax.app import errors

CONFIG_FILE = "config.json"  # `config.resume.CONFIG_FILE`: the run's config.
CHECKPOINTS_DIR = "checkpoints"


def check_is_run(workdir: str) -> str:
  """`workdir` if it holds a run's config.json and checkpoints/; a `errors.WorkdirError`
  otherwise."""
  if not os.path.isdir(workdir):
    raise errors.WorkdirError(f"--workdir={workdir}: no such folder")
  if not (os.path.isfile(os.path.join(workdir, CONFIG_FILE))
          and os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR))):
    raise errors.WorkdirError(
        f"--workdir={workdir}: not a training run (it has no {CONFIG_FILE} and "
        f"{CHECKPOINTS_DIR}/)",
        hint="pass the --workdir a `python -m tripletjax.main` run wrote")
  return workdir
