"""Checks every value of a training config before any work, each failure one clear line.

`check_config` raises `errors.ConfigError` (a ValueError) naming the key, the value and what is
allowed, e.g. "config.model.embedding_dim=0: must be an integer >= 1", instead of letting a bad
value fail deep inside a run (a ZeroDivisionError in an initializer, a NaN learning rate, an
int64 seed that JAX wraps). `main` calls it before it creates the workdir or loads data, and
`train.train_and_evaluate` before it trains.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
from typing import Any, Iterable

import jax
import ml_collections

from tripletjax import losses
from tripletjax import mining
from tripletjax import sharded
from tripletjax import validation
from tripletjax.app import errors
from tripletjax.app import models
from tripletjax.app import tasks
from tripletjax.app.config import defaults
from tripletjax.app.data import augmentations
from tripletjax.app.data import datasets
from tripletjax.app.data import images
from tripletjax.app.data import samplers
from tripletjax.app.data import splits
from tripletjax.app.evaluation import faiss_index
from tripletjax.app.evaluation import search
from tripletjax.app.loop import selection
from tripletjax.app.models import resnet
from tripletjax.app.models import weights
from tripletjax.app.step import optimizers
from tripletjax.app.step import train_step
from tripletjax.app.step import virtual_batch

# Seeds seed JAX keys (seed and seed + 1), which keep only their low 32 bits.
SEED_LIMIT = 2**31


def _value(config: ml_collections.ConfigDict, key: str) -> Any:
  for part in key.split("."):
    config = config[part]
  return config


def _fail(key: str, value: Any, allowed: str, hint: str | None = None):
  raise errors.ConfigError(f"config.{key}={value!r}: {allowed}.", hint)


def _is_integer(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _Checker:
  """Checks the values of one config by key."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def __getitem__(self, key: str) -> Any:
    return _value(self.config, key)

  def integer(self, key: str, minimum: int, optional: bool = False,
              below: int | None = None) -> None:
    value = self[key]
    if optional and value is None:
      return
    if not _is_integer(value) or value < minimum or (below is not None and value >= below):
      allowed = f"must be an integer >= {minimum}"
      if below is not None:
        allowed = f"must be an integer in [{minimum}, {below})"
      _fail(key, value, allowed + (" or None" if optional else ""))

  def number(self, key: str, *, minimum: float, below: float | None = None,
             exclusive_minimum: bool = False, optional: bool = False) -> None:
    """A finite number >= minimum (> with `exclusive_minimum`) and < `below` if given."""
    value = self[key]
    if optional and value is None:
      return
    low_ok = _is_number(value) and (value > minimum if exclusive_minimum else value >= minimum)
    if not (low_ok and math.isfinite(value) and (below is None or value < below)):
      if below is not None:
        allowed = f"must be a number in [{minimum:g}, {below:g})"
      else:
        allowed = f"must be a finite number {'>' if exclusive_minimum else '>='} {minimum:g}"
      _fail(key, value, allowed + (" or None" if optional else ""))

  def boolean(self, key: str, optional: bool = False) -> None:
    value = self[key]
    if not (isinstance(value, bool) or (optional and value is None)):
      _fail(key, value, "must be True or False" + (" or None" if optional else ""))

  def choice(self, key: str, valid: Iterable[str]) -> None:
    value, valid = self[key], sorted(valid)
    if value not in valid:
      close = difflib.get_close_matches(str(value), valid, n=1)
      _fail(key, value, f"must be one of {', '.join(map(repr, valid))}",
            f"did you mean {close[0]!r}?" if close else None)


def _check_known_keys(config: ml_collections.ConfigDict,
                      defaults: ml_collections.ConfigDict, prefix: str = "config") -> None:
  """Every key of `config` must be one of `defaults.get_config()`: a misspelt key in a config file
  would otherwise be silently ignored (command-line overrides are checked by ml_collections)."""
  for key in config.keys():
    if key not in defaults:
      close = difflib.get_close_matches(key, list(defaults.keys()), n=1)
      raise errors.ConfigError(
          f"{prefix}.{key} is not a config key; the keys of {prefix} are "
          f"{', '.join(sorted(defaults.keys()))}.",
          f"did you mean {prefix}.{close[0]}?" if close else None)
    value, default = config[key], defaults[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise errors.ConfigError(f"{prefix}.{key}={value!r}: must be a group of keys "
                                 f"({', '.join(sorted(default.keys()))}).")
      _check_known_keys(value, default, f"{prefix}.{key}")


def _check_validation_folds(check: _Checker, task: str) -> None:
  """validation_folds 0 (off) or K >= 2, validation_fold in [0, K), not with a fraction."""
  folds = check["data.validation_folds"]
  if task == "pairs" and folds != 0:
    _fail("data.validation_folds", folds,
          "must be 0 for pairs (their validation is a fraction of the pairs)")
  if not _is_integer(folds) or folds < 0 or folds == 1:
    _fail("data.validation_folds", folds, "must be 0 (no folds) or an integer >= 2")
  if folds:
    check.integer("data.validation_fold", 0, below=folds)
    if check["data.validation_fraction"]:
      _fail("data.validation_fraction", check["data.validation_fraction"],
            f"must be 0 with config.data.validation_folds={folds} (both hold out validation)",
            "set one of them to 0")
  elif check["data.validation_fold"] != 0:
    _fail("data.validation_fold", check["data.validation_fold"],
          "must be 0 without config.data.validation_folds (there is no fold to hold out)",
          "set config.data.validation_folds=K too")


def check_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises `errors.ConfigError` for the first value of `config` that is not allowed.

  Args:
    config: a training config (`defaults.get_config()` with changes).
    num_devices: the devices the batch is split over; default `jax.device_count()`.
  """
  if num_devices is None:
    num_devices = jax.device_count()
  _check_known_keys(config, defaults.get_config())
  check = _Checker(config)

  check.integer("seed", 0, below=SEED_LIMIT)
  for key in ("num_epochs", "log_every_steps", "eval_every_epochs", "checkpoint_every_epochs"):
    check.integer(key, 1)
  check.boolean("quiet")
  check.choice("train_step", train_step.TRAIN_STEPS)

  name = check["data.name"]
  task = tasks.task_for(name)
  if task == "labelled":
    try:
      datasets.find_loader(name)
    except errors.DataError:
      names = list(datasets.DATASETS) + [tasks.pairs.PAIRS_PREFIX, tasks.pairs.PAIRS_DEMO_PREFIX]
      close = difflib.get_close_matches(str(name), names, n=1)
      valid = [*datasets.dataset_names(), *tasks.TASKS["pairs"].data_names]
      _fail("data.name", name, f"must be one of {', '.join(valid)}",
            f"did you mean {close[0]!r}?" if close else None)
  elif name.startswith(tasks.pairs.PAIRS_DEMO_PREFIX):
    check.choice("data.name", [tasks.pairs.PAIRS_DEMO_PREFIX + s for s in tasks.pairs.PAIR_DEMO_SOURCES])
  elif name == tasks.pairs.PAIRS_PREFIX:
    _fail("data.name", name, "must name a pair folder or CSV file after 'pairs:'")
  data_dir = check["data.data_dir"]
  if data_dir is not None and (not isinstance(data_dir, str) or not data_dir):
    _fail("data.data_dir", data_dir, "must be a folder path or None")
  check.integer("data.max_train", 1, optional=True)
  check.integer("data.max_test", 1, optional=True)
  check.integer("data.max_validation", 1, optional=True)
  check.number("data.validation_fraction", minimum=0.0, below=1.0)
  _check_validation_folds(check, task)
  try:
    splits.check_class_split(check["data.class_split"])
  except ValueError as error:
    _fail("data.class_split", check["data.class_split"], str(error))
  if task == "pairs":
    check.number("data.validation_fraction", minimum=0.0, exclusive_minimum=True, below=1.0)
    check.choice("data.augment", tasks.pairs.PAIR_AUGMENTATIONS)
    check.choice("batch.sampler", ["shuffled"])
    if check["data.class_split"] != "none":
      _fail("data.class_split", check["data.class_split"],
            "must be 'none' for pairs (a pair's two images are its only class)")
  elif isinstance(name, str) and name.startswith(datasets.FOLDER_PREFIX):
    check.choice("data.augment", augmentations.FILE_AUGMENTATIONS)
  else:
    check.choice("data.augment", augmentations.AUGMENTATIONS)
  check.integer("data.max_shift", 0)
  check.integer("data.image_size", 1)
  if check["data.image_channels"] not in (1, 3) or isinstance(check["data.image_channels"], bool):
    _fail("data.image_channels", check["data.image_channels"], "must be 1 (grey) or 3 (RGB)")
  check.integer("data.eval_resize", check["data.image_size"], optional=True)
  for key, low, high in (("data.crop_scale", 0.0, 1.0), ("data.crop_ratio", 0.0, math.inf)):
    value = check[key]
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(_is_number(v) for v in value) and low < value[0] <= value[1] <= high):
      _fail(key, value, f"must be (low, high) with {low:g} < low <= high <= {high:g}")
  check.choice("data.unreadable", images.UNREADABLE_POLICIES)
  check.integer("data.decode_workers", 0)
  check.integer("data.prefetch_batches", 1)

  model_name = check["model.name"]
  check.choice("model.name", models.MODELS)
  check.integer("model.embedding_dim", 1)
  check.integer("model.width", 1, optional=True)
  check.number("model.dropout_rate", minimum=0.0, below=1.0, optional=True)
  check.boolean("model.batch_norm", optional=True)
  for key, valid in (("model.stem", resnet.STEMS), ("model.style", resnet.STYLES),
                     ("model.preprocess", resnet.PREPROCESSING), ("model.head", resnet.HEADS),
                     ("model.pooling", resnet.POOLINGS)):
    if check[key] is not None:
      check.choice(key, valid)
  freeze_before = check["model.freeze_before"]
  if freeze_before is not None and model_name in resnet.ARCHITECTURES:
    stage_sizes, _ = resnet.ARCHITECTURES[model_name]
    check.choice("model.freeze_before", resnet.part_names(stage_sizes)[1:])
  weights_path = check["model.weights"]
  if weights_path is not None:
    if model_name not in resnet.ARCHITECTURES:
      _fail("model.weights", weights_path,
            f"pretrained weights load into ResNets ({', '.join(resnet.ARCHITECTURES)}), not "
            f"into {model_name!r}")
    if not isinstance(weights_path, str) or not os.path.isfile(weights_path):
      _fail("model.weights", weights_path, "no such file",
            "nothing is downloaded at run time; the README's 'Pretrained backbones' says "
            "where to get the files")
    try:
      weights.find_format(weights_path)
    except errors.UserError as error:
      raise errors.ConfigError(f"config.model.weights={weights_path!r}: {error}") from None
  accepted = models.MODELS[model_name].options
  for option, value in config.model.items():
    if option in models.OPTION_NAMES and value is not None and option not in accepted:
      _fail(f"model.{option}", value,
            f"model {model_name!r} has no such option; leave it None (its options: "
            f"{', '.join(sorted(accepted))})")

  task_losses = tasks.TASKS[task].losses
  check.choice("loss.name", task_losses)
  check.number("loss.margin", minimum=0.0)
  check.choice("loss.metric", validation.METRICS)
  check.boolean("loss.soft")
  check.choice("loss.mining_backend", mining.BACKENDS)
  check.choice("loss.mining_scope", sharded.MINING_SCOPES)
  # An option of another loss set away from its default would be silently ignored.
  loss_options = (losses.MINED_LOSSES[config.loss.name].options
                  if config.loss.name in losses.MINED_LOSSES else ("margin",))
  # Every mined loss can be mined over the devices in any scope; the pairs task's loss cannot.
  scoped = ("mining_scope",) if config.loss.name in losses.MINED_LOSSES else ()
  default_loss = defaults.get_config().loss
  for option, value in config.loss.items():
    if option not in ("name", *scoped, *loss_options) and value != default_loss[option]:
      _fail(f"loss.{option}", value,
            f"loss {config.loss.name!r} has no such option (its options: "
            f"{', '.join(loss_options)}); leave it at {default_loss[option]!r}")
  # A host callback inside a program sharded over several CPU devices deadlocks XLA:CPU.
  step = train_step.resolve_train_step(config.train_step, config.loss, num_devices=num_devices)
  if step in virtual_batch.SPLIT_STEPS and config.loss.mining_scope == "local":
    _fail("train_step", config.train_step,
          "the split steps mine the whole global batch between two programs, not each "
          "device's rows alone (config.loss.mining_scope='local')",
          "set config.train_step='direct' (or 'auto') to mine locally")
  if (step == "direct" and config.loss.mining_backend == "numpy" and num_devices > 1
      and jax.default_backend() == "cpu" and losses.MINED_LOSSES[config.loss.name].sorts_rows):
    _fail("loss.mining_backend", "numpy",
          f"the direct train step over {num_devices} CPU devices cannot call the NumPy miner "
          "(a host callback in a sharded program deadlocks XLA:CPU)",
          "leave config.train_step='auto' (it then splits the step and mines in NumPy), or "
          "set config.loss.mining_backend='auto'")

  check.choice("batch.sampler", samplers.SAMPLERS)
  for key in ("batch.batch_size", "batch.classes_per_batch", "batch.samples_per_class"):
    check.integer(key, 1)
  batch = config.batch
  if batch.sampler == "balanced" and (
      batch.batch_size != batch.classes_per_batch * batch.samples_per_class):
    _fail("batch.batch_size", batch.batch_size,
          f"must equal classes_per_batch x samples_per_class = {batch.classes_per_batch} x "
          f"{batch.samples_per_class} for the balanced sampler")
  if batch.batch_size % num_devices:
    _fail("batch.batch_size", batch.batch_size,
          f"must be a multiple of the {num_devices} devices the batch is split over",
          "on a CPU-only machine --cpu_devices sets the number of devices")
  check.integer("model.forward_chunks", 1)
  chunks = config.model.forward_chunks
  if batch.batch_size % (chunks * num_devices):
    _fail("model.forward_chunks", chunks,
          f"must divide the batch size per device ({batch.batch_size} / {num_devices} "
          f"device(s) = {batch.batch_size // num_devices})")

  check.choice("optimizer.name", optimizers.OPTIMIZERS)
  check.number("optimizer.learning_rate", minimum=0.0, exclusive_minimum=True)
  check.choice("optimizer.schedule", optimizers.SCHEDULES)
  check.integer("optimizer.warmup_steps", 0)
  check.number("optimizer.weight_decay", minimum=0.0)
  check.number("optimizer.momentum", minimum=0.0, below=1.0)
  check.number("optimizer.grad_clip_norm", minimum=0.0)

  ks = check["eval.recall_ks"]
  if not (isinstance(ks, (tuple, list)) and ks and all(_is_integer(k) and k >= 1 for k in ks)):
    _fail("eval.recall_ks", ks, "must be a non-empty tuple of integers >= 1")
  check.choice("eval.backend", search.SEARCH_BACKENDS)
  if config.eval.backend == "faiss" and not faiss_index.available():
    raise errors.MissingDependencyError(
        "config.eval.backend='faiss': faiss is not installed", faiss_index.INSTALL_HINT)
  check.integer("eval.faiss_min_size", 1)
  check.choice("eval.select_by", selection.SELECT_BY)

  check.boolean("monitor.enabled")
  check.integer("monitor.patience_steps", 1)

  check.integer("export.projector_max_points", 1)
  check.boolean("export.pca_every_eval")
  check.boolean("export.test_embeddings")
