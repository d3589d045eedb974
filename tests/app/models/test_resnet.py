"""The ResNets (`tripletjax.app.models.resnet`): stems, stages, parameter counts, input checks.

Their train and eval modes and gradients: test_models.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from tests.app.models.helpers import num_params, rngs
from tripletjax.app.models import ResNet, create_model


def test_resnet_picks_the_stem_from_the_input_size():
  def stem(input_shape, **kwargs):
    model = nnx.eval_shape(lambda: ResNet(input_shape, stage_sizes=(1,), width=4,
                                          rngs=rngs(), **kwargs))
    assert model.stem_conv.kernel.shape[:2] == {"small": (3, 3), "imagenet": (7, 7)}[model.stem]
    return model.stem

  assert stem((28, 28, 1)) == "small"
  assert stem((63, 200, 1)) == "small"
  assert stem((64, 64, 3)) == "imagenet"
  assert stem((224, 224, 3)) == "imagenet"
  assert stem((28, 28, 1), stem="imagenet") == "imagenet"
  assert stem((224, 224, 3), stem="small") == "small"
  with pytest.raises(ValueError, match="Unknown stem"):
    stem((28, 28, 1), stem="cifar")


def test_resnet_stems_give_the_expected_feature_map_sizes():
  # Last-stage maps: small stem 28 -> 28, 14, 7, 4; ImageNet stem 64 -> 32 -> 16, 8, 4, 2.
  def last_stage_shape(input_shape):
    model = nnx.eval_shape(lambda: ResNet(input_shape, stage_sizes=(1, 1, 1, 1), width=4,
                                          rngs=rngs()))
    images = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)

    def features(model, images):
      x = nnx.relu(model.stem_norm(model.stem_conv(images)))
      if model.stem == "imagenet":
        x = nnx.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
      for residual_block in model.blocks:
        x = residual_block(x)
      return x

    model.eval()
    return nnx.eval_shape(features, model, images).shape

  assert last_stage_shape((28, 28, 1)) == (2, 4, 4, 32)
  assert last_stage_shape((64, 64, 3)) == (2, 2, 2, 32)


def test_resnet50_at_width_8_has_bottleneck_shapes_and_parameter_count():
  model = nnx.eval_shape(lambda: create_model("resnet50", input_shape=(28, 28, 1),
                                              embedding_dim=32, rngs=rngs(), width=8))
  # Bottleneck blocks end with 4x the stage width: 8 * 8 * 4 = 256 features before the head.
  assert model.dense.kernel.shape == (256, 32)
  assert len(model.blocks) == 3 + 4 + 6 + 3
  assert num_params(model) == 381_272


@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)])
def test_resnet_parameter_counts_match_torchvision(name, expected):
  # torchvision's ImageNet models: 224x224x3 input, width 64, 1000 outputs.
  model = nnx.eval_shape(lambda: create_model(name, input_shape=(224, 224, 3),
                                              embedding_dim=1000, rngs=rngs()))
  assert num_params(model) == expected


def test_resnet_rejects_images_with_other_channels():
  model = nnx.eval_shape(lambda: ResNet((28, 28, 1), stage_sizes=(1,), width=4, rngs=rngs()))
  with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
    model(jnp.zeros((2, 28, 28, 3)))
