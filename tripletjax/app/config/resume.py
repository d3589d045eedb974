"""The config a workdir was started with, and what may change when a run resumes.

`config.json` in the workdir records the config of the run; on resume the new config is
compared with it key by key. Keys that change the parameters' or the optimizer state's shapes,
the data or its order (`FIXED_ON_RESUME`) are an error; the others (more epochs, logging,
learning rate, margin, ...) are allowed, reported, and appended to `config_changes.jsonl`.

A config.json from before the model options moved into their family's section
(`config.model.batch_norm` -> `config.model.cnn.batch_norm`, `config.model.head` ->
`config.model.resnet.head`, ...) is read with its options in their new place
(`nest_model_options`): such a run resumes, and its model is rebuilt, as before.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from tripletjax.app import errors
from tripletjax.app.config import defaults

CONFIG_FILE = "config.json"
# The key of config.json that records the execution plan of the run's last start (not a config
# key: a resumed run may compute differently, e.g. on other devices).
PLAN_KEY = "execution_plan"
CHANGES_FILE = "config_changes.jsonl"

# Dotted keys, or prefixes ending in ".", that a resumed run cannot change.
FIXED_ON_RESUME = (
    "seed",
    "data.",  # The examples and their order.
    "model.",  # Parameter shapes and the forward pass.
    "batch.",  # Steps per epoch and the data order.
    "loss.name",  # The logged statistics and the objective itself.
    "optimizer.name",  # The optimizer state's structure.
    "optimizer.grad_clip_norm",  # Clipping on or off changes the optimizer state's structure.
)

# Keys under a fixed prefix that change how fast the data comes, not what it is.
CHANGEABLE_ON_RESUME = ("data.decode_workers", "data.prefetch_batches")

_MISSING = "<absent>"


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def as_plain_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as JSON types (what `config.json` holds)."""
  return json.loads(config.to_json_best_effort())


def differences(recorded: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """Dotted key -> (recorded value, current value) for every key whose value differs."""
  old, new = flatten(recorded), flatten(current)
  return {key: (old.get(key, _MISSING), new.get(key, _MISSING))
          for key in sorted(set(old) | set(new))
          if old.get(key, _MISSING) != new.get(key, _MISSING)}


def is_fixed(key: str) -> bool:
  if key in CHANGEABLE_ON_RESUME:
    return False
  return any(key == fixed or (fixed.endswith(".") and key.startswith(fixed))
             for fixed in FIXED_ON_RESUME)


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
  return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def nest_model_options(recorded: dict) -> dict:
  """`recorded` (a config as JSON types) with any model option recorded at the top of
  "model" (before the options had a section per model family) moved into its family's
  section of today's defaults, e.g. model.head -> model.resnet.head. A key already in its
  section is kept."""
  model = recorded.get("model")
  if not isinstance(model, dict):
    return recorded
  sections = {name: section for name, section in defaults.get_config().model.items()
              if isinstance(section, ml_collections.ConfigDict)}
  moved = dict(model)
  for key, value in model.items():
    family = next((name for name, section in sections.items() if key in section), None)
    if family is None or isinstance(value, dict):
      continue
    del moved[key]
    section = moved.get(family)
    section = dict(section) if isinstance(section, dict) else {}
    section.setdefault(key, value)
    moved[family] = section
  return {**recorded, "model": moved}


def read_recorded(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      recorded = json.load(f)
    recorded.pop(PLAN_KEY, None)
  except (OSError, ValueError) as error:
    raise errors.UserError(f"{path} cannot be read ({error})",
                           hint="restore the file, or start again with a new --workdir") from None
  return nest_model_options(recorded)


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> dict[str, tuple[Any, Any]]:
  """Compares `config` with the workdir's recorded config before resuming.

  Returns:
    The allowed differences (empty when the configs are equal or nothing was recorded).

  Raises:
    errors.UserError: naming every key that cannot change on resume.
  """
  recorded = read_recorded(workdir)
  if recorded is None:
    return {}
  changes = differences(recorded, as_plain_dict(config))
  # A key added to the config since the run started is no change while it has its default.
  default = flatten(as_plain_dict(defaults.get_config()))
  changes = {key: (old, new) for key, (old, new) in changes.items()
             if not (old == _MISSING and key in default and new == default[key])}
  fixed = {key: change for key, change in changes.items() if is_fixed(key)}
  if fixed:
    raise errors.UserError(
        f"{workdir} was trained with a different config; these keys cannot change when a run "
        f"resumes: {_describe(fixed)}",
        hint="use a new --workdir for the new config, or drop these overrides to resume")
  return changes


def record(config: ml_collections.ConfigDict, workdir: str, step: int,
           changes: dict[str, tuple[Any, Any]], plan: dict | None = None) -> None:
  """Writes `config.json` (with the execution `plan` under `PLAN_KEY`, if given); appends the
  allowed `changes` (if any) to `config_changes.jsonl`."""
  recorded = as_plain_dict(config)
  if plan is not None:
    recorded[PLAN_KEY] = plan
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    json.dump(recorded, f, indent=2)
  if changes:
    with open(os.path.join(workdir, CHANGES_FILE), "a") as f:
      f.write(json.dumps({"step": step, "changes": {k: list(v) for k, v in changes.items()}})
              + "\n")


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
  return _describe(changes)
