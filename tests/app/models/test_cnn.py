"""The CNNs (`tripletjax.app.models.cnn`): their layers and parameter counts, their input checks.

Their train and eval modes and gradients: test_models.py."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from flax import nnx

from tests.app.models.helpers import num_params, rngs
from tripletjax.app.models import MODELS, HsuCNN, TFACNN


@pytest.mark.parametrize("name, expected", [
    ("tfa_cnn", 410_208),   # 320 + 8,224 conv + 1568 * 256 + 256 dense.
    ("hsu_cnn", 731_528),   # 1,664 + 102,464 conv + 3136 * 200 + 200 dense.
])
def test_cnn_parameter_counts_at_default_settings(name, expected):
  model_class = MODELS[name].build
  model = nnx.eval_shape(lambda: model_class((28, 28, 1), rngs=rngs()))
  assert num_params(model) == expected


def test_hsu_cnn_batch_norm_replaces_the_conv_biases():
  # 1,600 + 102,400 conv (no biases) + 2 x 128 BatchNorm scale/bias + 627,400 dense.
  model = nnx.eval_shape(lambda: HsuCNN((28, 28, 1), batch_norm=True, rngs=rngs()))
  assert num_params(model) == 731_656
  assert model.conv1.bias is None and model.norm2.mean.shape == (64,)
  plain = nnx.eval_shape(lambda: HsuCNN((28, 28, 1), rngs=rngs()))
  assert plain.norm1 is None and plain.norm2 is None


def test_cnns_reject_images_of_another_shape():
  model = nnx.eval_shape(lambda: TFACNN((28, 28, 1), embedding_dim=8, rngs=rngs()))
  with pytest.raises(ValueError, match=r"built for images of shape \[B, 28, 28, 1\]"):
    model(jnp.zeros((2, 8, 8, 1)))
  model = nnx.eval_shape(lambda: HsuCNN((8, 8, 1), embedding_dim=8, rngs=rngs()))
  with pytest.raises(ValueError, match="got shape"):
    model(jnp.zeros((8, 8, 1)))


def test_tfa_cnn_rejects_inputs_too_small_to_pool_twice():
  with pytest.raises(ValueError, match="H, W >= 4"):
    TFACNN((3, 8, 1), rngs=rngs())
