"""ResNet embedding models (He et al., 2016) for 28x28 up to 224x224 inputs.

The architecture follows torchvision's ResNet v1.5 (in a bottleneck block the stride sits on
the 3x3 convolution; projection shortcuts only where the shape changes), so at
`width=64`, ImageNet stem, 3 channels and `embedding_dim=1000` the parameter counts are
torchvision's: 11,689,512 (ResNet-18), 21,797,672 (ResNet-34), 25,557,032 (ResNet-50).

Two stems:
  * "small" (CIFAR style): 3x3 conv stride 1, no max-pool. A 28x28 image keeps 28x28 maps
    in the first stage and 4x4 in the last.
  * "imagenet": 7x7 conv stride 2 + 3x3 max-pool stride 2. On 28x28 it would leave 1x1 maps
    in the last stage, hence "auto" picks "small" below 64 pixels.
The last stage is global-average-pooled, so any spatial size works once built.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from tripletjax.app.models.embedding import EmbeddingOutput, normalize_embeddings

# Under stem="auto", images at least this large (in height and width) get the ImageNet stem.
IMAGENET_STEM_MIN_SIZE = 64
STEMS = ("auto", "small", "imagenet")
BLOCKS = ("basic", "bottleneck")

# He-normal on fan-out, as torchvision initialises ResNet convolutions for ReLU networks.
_CONV_KERNEL_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(in_channels: int, out_channels: int, kernel_size: int, strides: int,
          rngs: nnx.Rngs) -> nnx.Conv:
  # Explicit symmetric padding (torch style): with stride 2 on even sizes, 'SAME' would pad
  # only the bottom/right. No bias: the BatchNorm that follows has its own.
  pad = (kernel_size - 1) // 2
  return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size),
                  strides=(strides, strides), padding=((pad, pad), (pad, pad)),
                  use_bias=False, kernel_init=_CONV_KERNEL_INIT, rngs=rngs)


def _batch_norm(num_features: int, momentum: float, rngs: nnx.Rngs,
                zero_scale: bool = False) -> nnx.BatchNorm:
  scale_init = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
  return nnx.BatchNorm(num_features, momentum=momentum, epsilon=1e-5, scale_init=scale_init,
                       rngs=rngs)


class _Projection(nnx.Module):
  """1x1 conv + BatchNorm shortcut, used where a block changes resolution or channels."""

  def __init__(self, in_channels: int, out_channels: int, strides: int, *, bn_momentum: float,
               rngs: nnx.Rngs):
    self.conv = _conv(in_channels, out_channels, 1, strides, rngs)
    self.norm = _batch_norm(out_channels, bn_momentum, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x))


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34).

  Maps [B, H, W, in_channels] to [B, H / strides, W / strides, channels].
  """
  expansion = 1

  def __init__(self, in_channels: int, channels: int, strides: int, *, bn_momentum: float,
               zero_init_residual: bool, rngs: nnx.Rngs):
    out_channels = channels * self.expansion
    self.conv1 = _conv(in_channels, channels, 3, strides, rngs)
    self.norm1 = _batch_norm(channels, bn_momentum, rngs)
    self.conv2 = _conv(channels, out_channels, 3, 1, rngs)
    self.norm2 = _batch_norm(out_channels, bn_momentum, rngs, zero_scale=zero_init_residual)
    self.projection = (
        _Projection(in_channels, out_channels, strides, bn_momentum=bn_momentum, rngs=rngs)
        if strides != 1 or in_channels != out_channels else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x if self.projection is None else self.projection(x)
    y = nnx.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    return nnx.relu(y + shortcut)


class BottleneckBlock(nnx.Module):
  """1x1 reduce -> 3x3 (strided) -> 1x1 expand by 4, with a residual connection (ResNet-50).

  Maps [B, H, W, in_channels] to [B, H / strides, W / strides, 4 * channels].
  """
  expansion = 4

  def __init__(self, in_channels: int, channels: int, strides: int, *, bn_momentum: float,
               zero_init_residual: bool, rngs: nnx.Rngs):
    out_channels = channels * self.expansion
    self.conv1 = _conv(in_channels, channels, 1, 1, rngs)
    self.norm1 = _batch_norm(channels, bn_momentum, rngs)
    self.conv2 = _conv(channels, channels, 3, strides, rngs)
    self.norm2 = _batch_norm(channels, bn_momentum, rngs)
    self.conv3 = _conv(channels, out_channels, 1, 1, rngs)
    self.norm3 = _batch_norm(out_channels, bn_momentum, rngs, zero_scale=zero_init_residual)
    self.projection = (
        _Projection(in_channels, out_channels, strides, bn_momentum=bn_momentum, rngs=rngs)
        if strides != 1 or in_channels != out_channels else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x if self.projection is None else self.projection(x)
    y = nnx.relu(self.norm1(self.conv1(x)))
    y = nnx.relu(self.norm2(self.conv2(y)))
    y = self.norm3(self.conv3(y))
    return nnx.relu(y + shortcut)


def resolve_stem(stem: str, input_shape: tuple[int, int, int]) -> str:
  """Returns "small" or "imagenet": `stem` itself, or for "auto" the one suiting the input."""
  if stem not in STEMS:
    raise ValueError(f"Unknown stem {stem!r}; expected one of {STEMS}.")
  if stem != "auto":
    return stem
  height, width, _ = input_shape
  return "imagenet" if min(height, width) >= IMAGENET_STEM_MIN_SIZE else "small"


class ResNet(nnx.Module):
  """ResNet embedding model for 28x28 up to 224x224 images.

  Stem -> stages of residual blocks -> global average pool -> Dense(embedding_dim) -> L2
  normalise.

  Stage i has `stage_sizes[i]` blocks of `width * 2**i` channels (times 4 at the output of
  bottleneck blocks); stages after the first halve the resolution in their first block.
  BatchNorm uses batch statistics in `model.train()` mode (updating the running averages
  with momentum `bn_momentum`) and the running averages in `model.eval()` mode.
  """

  def __init__(self, input_shape: tuple[int, int, int], *, stage_sizes: Sequence[int],
               block: str = "basic", embedding_dim: int = 128, width: int = 64,
               stem: str = "auto", bn_momentum: float = 0.9, zero_init_residual: bool = False,
               rngs: nnx.Rngs):
    """Builds the model.

    Args:
      input_shape: (H, W, C) of the images the model is built for. C is fixed; H and W only
        choose the stem under stem="auto" (any size is accepted at call time).
      stage_sizes: number of blocks in each stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block: "basic" (two 3x3 convs) or "bottleneck" (1x1-3x3-1x1, 4x expansion).
      embedding_dim: E, the size of the embeddings.
      width: channels of the stem and first stage (64 in the paper); later stages double it.
      stem: "small" (3x3 stride 1, no pool), "imagenet" (7x7 stride 2 + max-pool) or "auto"
        ("small" when H or W is below 64).
      bn_momentum: decay of BatchNorm's running averages.
      zero_init_residual: start each block's last BatchNorm scale at zero so every block is
        the identity at initialisation (Goyal et al., 2017).
      rngs: `nnx.Rngs` with a `params` stream.
    """
    input_shape = tuple(int(size) for size in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
      raise ValueError(f"input_shape must be (H, W, C) with positive sizes, got {input_shape}.")
    if block not in BLOCKS:
      raise ValueError(f"Unknown block {block!r}; expected one of {BLOCKS}.")
    if not stage_sizes or min(stage_sizes) < 1:
      raise ValueError(f"stage_sizes must be non-empty positive counts, got {stage_sizes}.")
    self.input_shape = input_shape
    self.in_channels = input_shape[-1]
    self.stem = resolve_stem(stem, input_shape)

    if self.stem == "small":
      self.stem_conv = _conv(self.in_channels, width, 3, 1, rngs)
    else:
      self.stem_conv = _conv(self.in_channels, width, 7, 2, rngs)
    self.stem_norm = _batch_norm(width, bn_momentum, rngs)

    block_class = BasicBlock if block == "basic" else BottleneckBlock
    blocks = []
    channels_in = width
    for stage_index, num_blocks in enumerate(stage_sizes):
      stage_channels = width * 2**stage_index
      for block_index in range(num_blocks):
        strides = 2 if stage_index > 0 and block_index == 0 else 1
        blocks.append(block_class(channels_in, stage_channels, strides, bn_momentum=bn_momentum,
                                  zero_init_residual=zero_init_residual, rngs=rngs))
        channels_in = stage_channels * block_class.expansion
    self.blocks = nnx.List(blocks)
    self.dense = nnx.Linear(channels_in, embedding_dim, rngs=rngs)

  def __call__(self, images: jax.Array) -> EmbeddingOutput:
    """Embeds a batch of images.

    Args:
      images: [B, H, W, C] float32 with C == input_shape[-1].

    Returns:
      `EmbeddingOutput` with `embeddings` [B, E] (unit rows) and `norms` [B].
    """
    if images.ndim != 4 or images.shape[-1] != self.in_channels:
      raise ValueError(
          f"ResNet was built for images of shape [B, H, W, {self.in_channels}], "
          f"got shape {tuple(images.shape)}.")
    x = nnx.relu(self.stem_norm(self.stem_conv(images)))
    if self.stem == "imagenet":
      x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for residual_block in self.blocks:
      x = residual_block(x)
    x = jnp.mean(x, axis=(1, 2))
    return normalize_embeddings(self.dense(x))


def resnet18(**kwargs) -> ResNet:
  """ResNet-18: basic blocks, stages (2, 2, 2, 2). Takes `ResNet`'s other arguments."""
  return ResNet(stage_sizes=(2, 2, 2, 2), block="basic", **kwargs)


def resnet34(**kwargs) -> ResNet:
  """ResNet-34: basic blocks, stages (3, 4, 6, 3). Takes `ResNet`'s other arguments."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block="basic", **kwargs)


def resnet50(**kwargs) -> ResNet:
  """ResNet-50: bottleneck blocks, stages (3, 4, 6, 3). Takes `ResNet`'s other arguments."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck", **kwargs)
