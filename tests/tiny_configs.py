"""Small training configs for end-to-end tests: seconds on a CPU, every part of the loop."""

from __future__ import annotations

import ml_collections

from tripletjax.app.config import defaults


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """400 training and 200 test digits, a 16-d TFA CNN, 2 epochs of batches of 64; overrides
  by dotted key, e.g. `tiny_config(**{"loss.name": "hard"})`."""
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
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    target = config
    for part in filter(None, section.split(".")):
      target = target[part]
    target[name] = value
  return config
