"""Flax NNX embedding models: images `[B, H, W, C]` -> L2-normalised embeddings `[B, E]`.

Every model returns an `EmbeddingOutput(embeddings, norms)`: `embeddings` are unit rows and
`norms` are the L2 norms of the raw (pre-normalisation) embeddings, which show when a model
is collapsing. Dropout and BatchNorm follow NNX's modes: call `model.train()` before training
steps and `model.eval()` before evaluation.

Build a model by name with `create_model`:

  model = create_model("resnet18", input_shape=(28, 28, 1), embedding_dim=128,
                       rngs=nnx.Rngs(params=0, dropout=1), width=16)
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class EmbeddingOutput(NamedTuple):
  """What every embedding model returns.

  Attributes:
    embeddings: [B, E] float32, L2-normalised rows (an all-zero row stays zero).
    norms: [B] float32, L2 norm of each embedding before normalisation.
  """
  embeddings: jax.Array
  norms: jax.Array


def normalize_embeddings(raw_embeddings: jax.Array, eps: float = 1e-12) -> EmbeddingOutput:
  """L2-normalises rows the way `tf.math.l2_normalize` does and keeps their norms.

  Args:
    raw_embeddings: [B, E] output of the model's last Dense layer.
    eps: floor on the squared norm, so all-zero rows give zeros instead of NaNs.

  Returns:
    `EmbeddingOutput` with `embeddings` [B, E] = x / sqrt(max(|x|^2, eps)) and `norms` [B].
  """
  squared_norms = jnp.sum(raw_embeddings * raw_embeddings, axis=-1)
  inverse_norms = jax.lax.rsqrt(jnp.maximum(squared_norms, eps))
  # The gradient of sqrt is infinite at 0, and a NaN in the unused branch of a `where`
  # still poisons the gradient, so zero rows take the square root of a harmless 1.
  is_nonzero = squared_norms > 0
  norms = jnp.where(is_nonzero, jnp.sqrt(jnp.where(is_nonzero, squared_norms, 1.0)), 0.0)
  return EmbeddingOutput(raw_embeddings * inverse_norms[:, None], norms)


# The submodules import `EmbeddingOutput` and `normalize_embeddings` from this package, so
# they are imported only once both are defined.
from tripletjax.models.cnn import HsuCNN, TFACNN  # noqa: E402  isort: skip
from tripletjax.models.resnet import (  # noqa: E402  isort: skip
    ResNet, resnet18, resnet34, resnet50)

MODELS: dict[str, Callable[..., nnx.Module]] = {
    "tfa_cnn": TFACNN,
    "hsu_cnn": HsuCNN,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
}

# Arguments that `create_model` always passes itself, and those fixed by a named ResNet.
_COMMON_ARGUMENTS = frozenset({"input_shape", "embedding_dim", "rngs"})
_FIXED_BY_NAME = frozenset({"stage_sizes", "block"})


def _model_kwargs(name: str) -> list[str]:
  """Names of the model-specific keyword arguments `create_model(name, ...)` accepts."""
  # The resnetXX constructors take **kwargs and forward them to ResNet, whose signature is
  # the one that says what is accepted.
  constructor = ResNet if name.startswith("resnet") else MODELS[name]
  # The signature of __init__, not of the class: NNX's Module metaclass hides it behind
  # (*args, **kwargs).
  parameters = inspect.signature(constructor.__init__).parameters
  return sorted(set(parameters) - {"self"} - _COMMON_ARGUMENTS - _FIXED_BY_NAME)


def create_model(name: str, *, input_shape: tuple[int, int, int], embedding_dim: int,
                 rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
  """Builds the embedding model registered under `name` in `MODELS`.

  Args:
    name: one of `MODELS`: "tfa_cnn", "hsu_cnn", "resnet18", "resnet34", "resnet50".
    input_shape: (H, W, C) of one input image.
    embedding_dim: E, the size of the embeddings.
    rngs: `nnx.Rngs` with a `params` stream (and `dropout` for the CNNs).
    **kwargs: model-specific options, e.g. `width` or `stem` for the ResNets.

  Returns:
    The model, in training mode (NNX's default); it maps [B, H, W, C] to `EmbeddingOutput`.

  Raises:
    ValueError: for an unknown name, or a keyword argument the model does not take.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; expected one of {sorted(MODELS)}.")
  accepted = _model_kwargs(name)
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise ValueError(
        f"Model {name!r} does not take the keyword argument(s) {unknown}; "
        f"it accepts {accepted}.")
  return MODELS[name](input_shape=tuple(input_shape), embedding_dim=embedding_dim,
                      rngs=rngs, **kwargs)


__all__ = [
    "EmbeddingOutput",
    "HsuCNN",
    "MODELS",
    "ResNet",
    "TFACNN",
    "create_model",
    "normalize_embeddings",
    "resnet18",
    "resnet34",
    "resnet50",
]
