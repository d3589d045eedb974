"""Flax NNX embedding models: images `[B, H, W, C]` -> L2-normalised embeddings `[B, E]`.

Every model returns an `EmbeddingOutput(embeddings, norms)`: `embeddings` are unit rows and
`norms` are the L2 norms of the raw (pre-normalisation) embeddings, which show when a model
is collapsing. Dropout and BatchNorm follow NNX's modes: call `model.train()` before training
steps and `model.eval()` before evaluation.

Build a model by name with `create_model`:

  model = create_model("resnet18", input_shape=(28, 28, 1), embedding_dim=128,
                       rngs=nnx.Rngs(params=0, dropout=1), width=16)

A new model: a module in this folder whose constructor takes `input_shape`, `embedding_dim`
and `rngs` (plus its options) and returns an `EmbeddingOutput`, and an entry in `MODELS`.
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
  """
  build: Callable[..., nnx.Module]
  options: tuple[str, ...]


_RESNET_OPTIONS = ("bn_momentum", "freeze_before", "head", "pooling", "preprocess", "stem",
                   "style", "width", "zero_init_residual")

MODELS: dict[str, ModelSpec] = {
    "tfa_cnn": ModelSpec(TFACNN, ("dropout_rate",)),
    "hsu_cnn": ModelSpec(HsuCNN, ("batch_norm", "dropout_rate", "negative_slope")),
    "resnet18": ModelSpec(resnet18, _RESNET_OPTIONS),
    "resnet34": ModelSpec(resnet34, _RESNET_OPTIONS),
    "resnet50": ModelSpec(resnet50, _RESNET_OPTIONS),
}

# Every option of some model.
OPTION_NAMES = frozenset().union(*(spec.options for spec in MODELS.values()))


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
  """`config.model` (its `weights`: `weights.check_config`)."""
  model_name = check["model.name"]
  check.choice("model.name", MODELS)
  check.integer("model.embedding_dim", 1)
  check.integer("model.width", 1, optional=True)
  check.number("model.dropout_rate", minimum=0.0, below=1.0, optional=True)
  check.boolean("model.batch_norm", optional=True)
  for key, valid in (("model.stem", resnet.STEMS), ("model.style", resnet.STYLES),
                     ("model.preprocess", resnet.PREPROCESSING), ("model.head", resnet.HEADS),
                     ("model.pooling", resnet.POOLINGS)):
    if check[key] is not None:
      check.choice(key, valid)
  if check["model.freeze_before"] is not None and model_name in resnet.ARCHITECTURES:
    stage_sizes, _ = resnet.ARCHITECTURES[model_name]
    check.choice("model.freeze_before", resnet.part_names(stage_sizes)[1:])
  accepted = MODELS[model_name].options
  for option, value in check.config.model.items():
    if option in OPTION_NAMES and value is not None and option not in accepted:
      check.fail(f"model.{option}",
                 f"model {model_name!r} has no such option; leave it None (its options: "
                 f"{', '.join(sorted(accepted))})")


__all__ = [
    "EmbeddingOutput",
    "HsuCNN",
    "MODELS",
    "ModelSpec",
    "OPTION_NAMES",
    "ResNet",
    "check_config",
    "TFACNN",
    "create_model",
    "normalize_embeddings",
    "resnet18",
    "resnet34",
    "resnet50",
    "trainable_filter",
]
