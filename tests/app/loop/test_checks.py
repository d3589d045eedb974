"""Config values are checked before any work: one line naming the key, the value and what is
allowed; the shipped config files pass."""

from __future__ import annotations

import os

import pytest

from tests import subprocesses
from tests.app import runs
from tripletjax import losses
from tripletjax.app import errors
from tripletjax.app.config import defaults
from tripletjax.app.loop import checks


def config_with(key: str, value):
  return runs.override(defaults.get_config(), {key: value})


@pytest.mark.parametrize("key, value, allowed", [
    ("model.embedding_dim", 0, "integer >= 1"),
    ("batch.batch_size", 0, "integer >= 1"),
    ("batch.classes_per_batch", 0, "integer >= 1"),
    ("batch.samples_per_class", -2, "integer >= 1"),
    ("num_epochs", 0, "integer >= 1"),
    ("log_every_steps", 0, "integer >= 1"),
    ("eval_every_epochs", 0, "integer >= 1"),
    ("checkpoint_every_epochs", 0, "integer >= 1"),
    ("model.forward_chunks", 0, "integer >= 1"),
    ("data.max_train", 0, "integer >= 1 or None"),
    ("data.max_test", -1, "integer >= 1 or None"),
    ("data.max_shift", -1, "integer >= 0"),
    ("export.projector_max_points", 0, "integer >= 1"),
    ("seed", -1, "integer in [0, 2147483648)"),
    ("optimizer.learning_rate", 0.0, "finite number > 0"),
    ("optimizer.learning_rate", float("nan"), "finite number > 0"),
    ("optimizer.learning_rate", float("inf"), "finite number > 0"),
    ("loss.margin", -0.1, "finite number >= 0"),
    ("loss.margin", float("inf"), "finite number >= 0"),
    ("model.cnn.dropout_rate", 1.0, "number in [0, 1) or None"),
    ("model.cnn.negative_slope", -0.3, "finite number >= 0 or None"),
    ("model.resnet.bn_momentum", 1.0, "number in [0, 1) or None"),
    ("optimizer.weight_decay", -1e-4, "finite number >= 0"),
    ("optimizer.momentum", 1.5, "number in [0, 1)"),
    ("optimizer.warmup_steps", -1, "integer >= 0"),
    ("optimizer.grad_clip_norm", -1.0, "finite number >= 0"),
    ("loss.name", "semi_hard", "one of 'batch_all', 'contrastive', 'hard', 'multi_similarity', "
     "'ntxent', 'semihard', 'supcon'"),
    ("loss.alpha", 0.0, "finite number > 0"),
    ("loss.beta", -1.0, "finite number > 0"),
    ("loss.base", float("nan"), "finite number >= -1"),
    ("loss.epsilon", -0.1, "finite number >= 0"),
    ("loss.temperature", 0.0, "finite number > 0 or None"),
    ("loss.metric", "cosine", "one of 'angular', 'l2', 'squared_l2'"),
    ("loss.mining_scope", "globl", "one of 'global', 'local', 'replicated'"),
    ("model.name", "vgg16", "one of 'hsu_cnn'"),
    ("optimizer.name", "lamb", "one of 'adam', 'adamw', 'rmsprop', 'sgd'"),
    ("optimizer.schedule", "linear", "one of 'constant', 'cosine', 'warmup_cosine'"),
    ("batch.sampler", "random", "one of 'balanced', 'shuffled'"),
    ("train_step", "virtual", "one of 'auto', 'direct', 'recompute', 'split'"),
    ("data.augment", "rotate", "one of 'flip'"),
    ("data.name", "imagenet", "one of digits, fashion_mnist, mnist, folder:<path>, tfds:<name>"),
    ("data.name", "tfds:", "one of digits, fashion_mnist, mnist, folder:<path>, tfds:<name>"),
    ("model.resnet.width", 0, "integer >= 1 or None"),
    ("model.resnet.head", "conv", "must be one of 'linear', 'mlp'"),
    ("model.resnet.stem", "tiny", "must be one of 'auto', 'imagenet', 'small'"),
    ("model.forward_chunks", 3, "must divide the batch size per device"),
    ("batch.batch_size", 100, "must equal classes_per_batch x samples_per_class"),
])
def test_bad_config_value_is_one_line_naming_key_value_and_what_is_allowed(key, value, allowed):
  config = config_with(key, value)
  if key == "batch.batch_size" and value == 100:
    config.batch.sampler = "balanced"
  with pytest.raises(errors.ConfigError) as error:
    checks.check_config(config)
  message = str(error.value)
  assert message.startswith(f"config.{key}={value!r}: "), message
  assert allowed in message and "\n" not in message
  assert isinstance(error.value, ValueError)  # What callers caught before.


@pytest.mark.parametrize("name", sorted(losses.MINED_LOSSES))
def test_every_loss_takes_every_mining_scope(name):
  for scope in ("global", "local", "replicated"):
    config = config_with("loss.mining_scope", scope)
    config.loss.name = name
    checks.check_config(config)


def test_the_losses_of_cosine_similarities_take_their_options_and_only_theirs():
  config = config_with("loss.name", "ntxent")
  config.loss.temperature = 0.2
  checks.check_config(config)
  options = {"loss.name": "multi_similarity", "loss.alpha": 1.0, "loss.epsilon": 0.2,
             "loss.mining": False}
  checks.check_config(runs.override(defaults.get_config(), options))
  config = config_with("loss.temperature", 0.2)  # The default loss is semi-hard.
  with pytest.raises(errors.ConfigError, match=r"^config\.loss\.temperature=0\.2: loss "
                     r"'semihard' has no such option"):
    checks.check_config(config)


def test_numpy_miner_in_the_direct_step_on_several_cpu_devices_is_an_error():
  # A host callback in a sharded program would deadlock XLA:CPU; "auto" (or "split") mines in
  # NumPy between two programs instead.
  config = config_with("loss.mining_backend", "numpy")
  config.train_step = "direct"
  with pytest.raises(errors.ConfigError, match=r"^config\.loss\.mining_backend='numpy': the "
                     r"direct train step over 2 CPU devices cannot call the NumPy miner"):
    checks.check_config(config, num_devices=2)
  checks.check_config(config, num_devices=1)
  config.train_step = "auto"
  checks.check_config(config, num_devices=2)


@pytest.mark.parametrize("step", ["split", "recompute"])
def test_a_split_step_cannot_mine_each_device_alone(step):
  config = config_with("loss.mining_scope", "local")
  config.train_step = step
  with pytest.raises(errors.ConfigError, match=rf"^config\.train_step='{step}': .*'local'"):
    checks.check_config(config, num_devices=2)
  config.train_step = "auto"  # Then the direct step, which mines each device's rows alone.
  checks.check_config(config, num_devices=2)


def test_misspelt_name_gets_a_did_you_mean_hint():
  with pytest.raises(errors.ConfigError) as error:
    checks.check_config(config_with("loss.name", "semihrad"))
  assert error.value.hint == "did you mean 'semihard'?"


def test_unknown_key_in_a_config_file_is_an_error():
  config = defaults.get_config()
  config.loss.margn = 0.2  # What a typo in a config file does: a new key, silently unused.
  with pytest.raises(errors.ConfigError, match=r"config\.loss\.margn is not a config key"):
    checks.check_config(config)


def test_unknown_model_option_is_an_error_and_a_flat_one_points_to_its_section():
  config = defaults.get_config()
  config.model.cnn.batchnorm = True
  with pytest.raises(errors.ConfigError, match=r"^config\.model\.cnn\.batchnorm is not a "
                     r"config key") as error:
    checks.check_config(config)
  assert error.value.hint == "did you mean config.model.cnn.batch_norm?"
  config = defaults.get_config()
  config.model.batch_norm = True  # Where the option was before it had a section.
  with pytest.raises(errors.ConfigError, match=r"^config\.model\.batch_norm is not a config "
                     r"key") as error:
    checks.check_config(config)
  assert error.value.hint == "did you mean config.model.cnn.batch_norm?"


def test_the_options_of_other_models_are_not_used():
  config = defaults.get_config()  # tfa_cnn, which takes dropout_rate alone.
  config.model.cnn.batch_norm = True
  config.model.resnet.width = 8
  config.model.resnet.freeze_before = "stage9"  # A part of no ResNet, unused by a CNN.
  checks.check_config(config)
  config.model.name = "resnet18"
  with pytest.raises(errors.ConfigError, match=r"^config\.model\.resnet\.freeze_before="
                     r"'stage9': must be one of"):
    checks.check_config(config)


SHIPPED_CONFIGS = sorted(name[:-3]
                         for name in os.listdir(os.path.join(subprocesses.REPO, "configs"))
                         if name.endswith(".py"))


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_pass(name):
  checks.check_config(runs.load_config_module(name).get_config())
  checks.check_config(defaults.get_config())


@pytest.mark.parametrize("key, value, message", [
    ("loss.name", "semi_hard", "loss.name"),
    ("model.name", "vgg", "model.name"),
    ("optimizer.name", "lamb", "optimizer.name"),
    ("batch.sampler", "random", "batch.sampler"),
    ("loss.margin", -0.1, "margin"),
    ("data.augment", "rotate", "data.augment"),
])
def test_bad_config_values_are_named(key, value, message):
  with pytest.raises(ValueError, match=message):
    checks.check_config(runs.tiny_config(**{key: value}))


def test_every_config_file_loads():
  assert {"cub200", "cars196", "sop", "inshop", "digits"} <= set(SHIPPED_CONFIGS)
  for name in SHIPPED_CONFIGS:
    module = runs.load_config_module(name)
    checks.check_config(module.get_config())
    assert module.__doc__ and "python -m tripletjax.main" in module.__doc__


# --- the protocol's keys: class splits, image files, evaluation, the monitor ------------------


@pytest.mark.parametrize("changes, key, allowed", [
    ({"data.class_split": "halves"}, "data.class_split", "must be one of none, half, "
     "<first>:<last>"),
    ({"data.class_split": "9:2"}, "data.class_split", "first class 9 is after last class 2"),
    ({"data.validation_fraction": 1.0}, "data.validation_fraction",
     "must be a number in [0, 1)"),
    ({"data.augment": "crop_flip"}, "data.augment",
     "must be one of 'flip', 'flip_shift', 'none', 'shift'"),
    ({"data.name": "folder:/data/cub", "data.augment": "shift"}, "data.augment",
     "must be one of 'crop', 'crop_flip', 'flip', 'none'"),
    ({"data.image_channels": 2}, "data.image_channels", "must be 1 (grey) or 3 (RGB)"),
    ({"data.eval_resize": 200}, "data.eval_resize", "must be an integer >= 224 or None"),
    ({"data.crop_scale": (0.5, 0.2)}, "data.crop_scale", "0 < low <= high <= 1"),
    ({"data.crop_ratio": (0.0, 1.0)}, "data.crop_ratio", "0 < low <= high"),
    ({"data.name": "pairs:/data/tll", "loss.name": "triplet", "data.validation_fraction": 0.2,
      "data.class_split": "half"}, "data.class_split", "must be 'none' for pairs"),
    ({"data.unreadable": "ignore"}, "data.unreadable", "must be one of 'error', 'skip'"),
    ({"data.decode_workers": -1}, "data.decode_workers", "must be an integer >= 0"),
    ({"data.prefetch_batches": 0}, "data.prefetch_batches", "must be an integer >= 1"),
    ({"eval.recall_ks": ()}, "eval.recall_ks", "must be a non-empty tuple of integers >= 1"),
    ({"eval.recall_ks": (0, 1)}, "eval.recall_ks", "must be a non-empty tuple"),
    ({"eval.backend": "annoy"}, "eval.backend", "must be one of 'auto', 'faiss', 'numpy'"),
    ({"eval.faiss_min_size": 0}, "eval.faiss_min_size", "must be an integer >= 1"),
    ({"monitor.patience_steps": 0}, "monitor.patience_steps", "must be an integer >= 1"),
    ({"data.validation_folds": 1}, "data.validation_folds", "must be 0 (no folds) or an "
     "integer >= 2"),
    ({"data.validation_folds": 4, "data.validation_fold": 4}, "data.validation_fold",
     "must be an integer in [0, 4)"),
    ({"data.validation_fold": 1}, "data.validation_fold", "must be 0 without "
     "config.data.validation_folds"),
    ({"data.validation_folds": 2, "data.validation_fraction": 0.2}, "data.validation_fraction",
     "must be 0 with config.data.validation_folds=2"),
    ({"data.name": "pairs:/data/tll", "loss.name": "triplet", "data.validation_fraction": 0.2,
      "data.validation_folds": 2}, "data.validation_folds", "must be 0 for pairs"),
    ({"data.max_validation": 0}, "data.max_validation", "must be an integer >= 1 or None"),
    ({"eval.select_by": "map_at_r"}, "eval.select_by", "must be one of 'last', "
     "'validation_map_at_r'"),
])
def test_bad_protocol_values_are_one_line_errors(changes, key, allowed):
  with pytest.raises(errors.ConfigError) as caught:
    checks.check_config(runs.override(defaults.get_config(), changes), num_devices=1)
  message = str(caught.value)
  assert message.startswith(f"config.{key}=") and allowed in message, message
  assert "\n" not in message


def test_good_protocol_values_pass():
  checks.check_config(runs.override(defaults.get_config(), {
      "data.class_split": "0:4", "data.validation_fraction": 0.2,
      "data.name": "folder:/data/cub", "data.augment": "crop_flip",
      "data.crop_scale": (0.08, 1.0), "eval.recall_ks": (1, 10), "eval.backend": "numpy"}),
      num_devices=1)
  checks.check_config(runs.override(defaults.get_config(), {
      "data.class_split": "half", "data.validation_folds": 4, "data.validation_fold": 3,
      "data.max_validation": 500, "eval.select_by": "validation_precision_at_1"}),
      num_devices=1)
