"""Recipes that several configs start from (each config then states what differs)."""

from __future__ import annotations

import ml_collections

from tripletjax.app.config import defaults


def metric_learning_reality_check(data_name: str) -> ml_collections.ConfigDict:
  """The training recipe of "A Metric Learning Reality Check" (Musgrave, Belongie and Lim,
  ECCV 2020), shared by the benchmark configs (`configs/cub200.py`, `cars196.py`, `sop.py`,
  `inshop.py`).

  A quarter of the training classes held out for validation (one of the paper's four folds);
  224 x 224 random resized crops and flips for training, resize 256 + centre crop for
  evaluation; a ResNet-50 with 128-d embeddings (`--config.model.weights=FILE`: the
  ImageNet-pretrained backbone, docs/pretrained-backbones.md, whose preprocessing comes with
  it); the triplet loss over all triplets of the batch averaged over the active ones
  (batch_all: pytorch-metric-learning's TripletMarginLoss); class-balanced batches of 32;
  RMSprop at 1e-6 with weight decay 5e-5 and momentum 0.9.

  Args:
    data_name: `config.data.name` (a `folder:` dataset).
  """
  config = defaults.get_config()
  config.data.name = data_name
  config.data.validation_fraction = 0.25
  config.data.image_size = 224
  config.data.eval_resize = 256
  config.data.augment = "crop_flip"
  config.model.name = "resnet50"
  config.model.embedding_dim = 128
  config.loss.name = "batch_all"
  config.batch.sampler = "balanced"
  config.batch.batch_size = 32
  config.optimizer.name = "rmsprop"
  config.optimizer.learning_rate = 1e-6
  config.optimizer.weight_decay = 5e-5
  config.optimizer.momentum = 0.9
  return config
