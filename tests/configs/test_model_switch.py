"""Every shipped config takes every model with one override (`--config.model.name=...`): each
model family reads its own section of `config.model` (`config.model.cnn`, `config.model.resnet`)
and the options of the others are not used. A check only: nothing is built or trained.
"""

from __future__ import annotations

import os

import pytest

from tests import subprocesses
from tests.app import runs
from tripletjax.app import errors
from tripletjax.app import models
from tripletjax.app.config import defaults
from tripletjax.app.loop import checks

CONFIG_FILES = sorted(name[:-3] for name in os.listdir(os.path.join(subprocesses.REPO, "configs"))
                      if name.endswith(".py"))
# Config files with presets (`--config=configs/<name>.py:<preset>`) beside their default.
PRESETS = {"siamese_pairs": ("resnet50",)}
CONFIGS = [(name, None) for name in CONFIG_FILES] + [
    (name, preset) for name, presets in sorted(PRESETS.items()) for preset in presets]


def load(name: str, preset: str | None):
  module = runs.load_config_module(name)
  return module.get_config() if preset is None else module.get_config(preset)


@pytest.mark.parametrize("model_name", sorted(models.MODELS))
@pytest.mark.parametrize("name, preset", CONFIGS,
                         ids=[name if preset is None else f"{name}:{preset}"
                              for name, preset in CONFIGS])
def test_every_config_takes_every_model_with_one_override(name, preset, model_name):
  config = load(name, preset)
  config.model.name = model_name
  checks.check_config(config)


def test_the_configs_of_model_options_set_them_in_their_family_section():
  fashion = load("fashion_mnist", None)
  assert (fashion.model.name, fashion.model.cnn.batch_norm, fashion.model.cnn.dropout_rate) == (
      "hsu_cnn", True, 0.0)
  pairs = load("siamese_pairs", None)
  assert (pairs.model.name, pairs.model.resnet.head, pairs.model.resnet.width) == (
      "resnet18", "mlp", 8)


def test_a_real_mistake_still_names_its_key_in_one_line():
  config = load("fashion_mnist", None)
  config.model.name = "resnet18"
  config.model.resnet.head = "conv"
  with pytest.raises(errors.ConfigError) as error:
    checks.check_config(config)
  message = str(error.value)
  assert message.startswith("config.model.resnet.head='conv': must be one of") and (
      "\n" not in message)


def test_each_family_section_of_the_defaults_holds_the_options_of_its_models():
  model = defaults.get_config().model
  for family, options in models.FAMILIES.items():
    assert sorted(model[family].keys()) == sorted(options), family
  for name, spec in models.MODELS.items():
    assert set(spec.options) <= set(models.FAMILIES[spec.family]), name
