"""Flax NNX embedding models: images `[B, H, W, C]` -> L2-normalised embeddings `[B, E]`.

Every model returns an `EmbeddingOutput(embeddings, norms)`: `embeddings` are unit rows and
`norms` are the L2 norms of the raw (pre-normalisation) embeddings, which show when a model
is collapsing. Dropout and BatchNorm follow NNX's modes: call `model.train()` before training
steps and `model.eval()` before evaluation.

Build a model by name with `create_model`:

  model = create_model("resnet18", input_shape=(28, 28, 1), embedding_dim=128,
                       rngs=nnx.Rngs(params=0, dropout=1), width=16)

A training config sets a model's options in its family's section: `config.model.cnn.*` for
the CNNs, `config.model.resnet.*` for the ResNets (`FAMILIES`). The chosen model reads the
options of its family that it takes (`config_options`) and no other, so switching a config's
model is one override (`--config.model.name=resnet18`).

A new model: a module in this folder whose constructor takes `input_shape`, `embedding_dim`
and `rngs` (plus its options) and returns an `EmbeddingOutput`, and an entry in `MODELS`
(with its family: a section of `config.model` in `config/defaults.py` holding its options).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx

from tripletjax.app.config import checker
from tripletjax.app.models import resnet
from tripletjax.app.models.cnn import HsuCNN, TFACNN
from tripletjax.app.models.embedding import EmbeddingOutput, normalize_embeddings
from tripletjax.app.models.resnet import ResNet, resnet18, resnet34, resnet50


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered model.

  Attributes:
    build: constructor called as `build(input_shape=..., embedding_dim=..., rngs=..., **options)`.
    options: the keyword options it accepts besides those three.
    family: the section of `config.model` its options are set in (`FAMILIES`).
  """
  build: Callable[..., nnx.Module]
  options: tuple[str, ...]
  family: str


_RESNET_OPTIONS = ("bn_momentum", "freeze_before", "head", "pooling", "preprocess", "stem",
                   "style", "width", "zero_init_residual")

MODELS: dict[str, ModelSpec] = {
    "tfa_cnn": ModelSpec(TFACNN, ("dropout_rate",), "cnn"),
    "hsu_cnn": ModelSpec(HsuCNN, ("batch_norm", "dropout_rate", "negative_slope"), "cnn"),
    "resnet18": ModelSpec(resnet18, _RESNET_OPTIONS, "resnet"),
    "resnet34": ModelSpec(resnet34, _RESNET_OPTIONS, "resnet"),
    "resnet50": ModelSpec(resnet50, _RESNET_OPTIONS, "resnet"),
}

# The options of each family's section of `config.model` (`config.model.<family>.<option>`):
# every option of its models.
FAMILIES: dict[str, tuple[str, ...]] = {
    "cnn": ("batch_norm", "dropout_rate", "negative_slope"),
    "resnet": _RESNET_OPTIONS,
}

# Every option of some model.
OPTION_NAMES = frozenset().union(*(spec.options for spec in MODELS.values()))


def config_options(model_config) -> dict[str, Any]:
  """The options of `config.model.name` set in its family's section of `model_config`
  (`config.model`), as keyword arguments for `create_model`: those the model takes, whose
  value is not None (None keeps the model's own default). Other families' sections and the
  options of the family that this model does not take are not used."""
  spec = MODELS[model_config.name]
  section = model_config[spec.family]
  return {option: section[option] for option in spec.options
          if option in section and section[option] is not None}


def trainable_filter(model: nnx.Module):
  """The NNX filter of `model`'s trainable parameters: every `nnx.Param` but the frozen ones.

  A model with frozen parts (a `ResNet` with `freeze_before`) says which through its
  `is_frozen(path)`; for any other model this is `nnx.Param` itself.
  """
  if getattr(model, "freeze_before", None) is None:
    return nnx.Param
  return nnx.All(nnx.Param, lambda path, value: not model.is_frozen(path))


def create_model(name: str, *, input_shape: tuple[int, int, int], embedding_dim: int,
                 rngs: nnx.Rngs, **options: Any) -> nnx.Module:
  """Builds the embedding model registered under `name` in `MODELS`.

  Args:
    name: one of `MODELS`: "tfa_cnn", "hsu_cnn", "resnet18", "resnet34", "resnet50".
    input_shape: (H, W, C) of one input image.
    embedding_dim: E, the size of the embeddings.
    rngs: `nnx.Rngs` with a `params` stream (and `dropout` for the CNNs).
    **options: model-specific options (`ModelSpec.options`), e.g. `width` or `stem` for the
      ResNets.

  Returns:
    The model, in training mode (NNX's default); it maps [B, H, W, C] to `EmbeddingOutput`.

  Raises:
    ValueError: for an unknown name, or an option the model does not take.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; expected one of {sorted(MODELS)}.")
  spec = MODELS[name]
  unknown = sorted(set(options) - set(spec.options))
  if unknown:
    raise ValueError(f"Model {name!r} does not take the keyword argument(s) {unknown}; "
                     f"it accepts {sorted(spec.options)}.")
  return spec.build(input_shape=tuple(input_shape), embedding_dim=embedding_dim, rngs=rngs,
                    **options)


def check_config(check: checker.Checker) -> None:
  """`config.model` (its `weights`: `weights.check_config`).

  Every family's options are checked, whichever model is chosen: a bad value is a mistake
  even where it is not used. `freeze_before` names a part of the chosen ResNet.
  """
  model_name = check["model.name"]
  check.choice("model.name", MODELS)
  check.integer("model.embedding_dim", 1)
  check.number("model.cnn.dropout_rate", minimum=0.0, below=1.0, optional=True)
  check.boolean("model.cnn.batch_norm", optional=True)
  check.number("model.cnn.negative_slope", minimum=0.0, optional=True)
  check.integer("model.resnet.width", 1, optional=True)
  check.number("model.resnet.bn_momentum", minimum=0.0, below=1.0, optional=True)
  check.boolean("model.resnet.zero_init_residual", optional=True)
  for key, valid in (("model.resnet.stem", resnet.STEMS),
                     ("model.resnet.style", resnet.STYLES),
                     ("model.resnet.preprocess", resnet.PREPROCESSING),
                     ("model.resnet.head", resnet.HEADS),
                     ("model.resnet.pooling", resnet.POOLINGS)):
    if check[key] is not None:
      check.choice(key, valid)
  freeze_before = check["model.resnet.freeze_before"]
  if freeze_before is not None:
    if not isinstance(freeze_before, str):
      check.fail("model.resnet.freeze_before", "must be a part name (a string) or None")
    if model_name in resnet.ARCHITECTURES:
      stage_sizes, _ = resnet.ARCHITECTURES[model_name]
      check.choice("model.resnet.freeze_before", resnet.part_names(stage_sizes)[1:])


__all__ = [
    "EmbeddingOutput",
    "HsuCNN",
    "MODELS",
    "ModelSpec",
    "OPTION_NAMES",
    "ResNet",
    "FAMILIES",
    "check_config",
    "config_options",
    "TFACNN",
    "create_model",
    "normalize_embeddings",
    "resnet18",
    "resnet34",
    "resnet50",
    "trainable_filter",
]
