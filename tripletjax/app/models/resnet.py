"""ResNet embedding models (He et al., 2016) for 28x28 up to 224x224 inputs.

The default architecture follows torchvision's ResNet v1.5 (in a bottleneck block the stride
sits on the 3x3 convolution; projection shortcuts only where the shape changes), so at
`width=64`, ImageNet stem, 3 channels and `embedding_dim=1000` the parameter counts are
torchvision's: 11,689,512 (ResNet-18), 21,797,672 (ResNet-34), 25,557,032 (ResNet-50), and a
torchvision `state_dict` loads into it (`weights.py`). `style="keras"` builds Keras'
`keras.applications.ResNet50` instead (v1: the stride on the first 1x1 convolution, biases on
every convolution, BatchNorm epsilon 1.001e-5), so its weight files load too.

Two stems:
  * "small" (CIFAR style): 3x3 conv stride 1, no max-pool. A 28x28 image keeps 28x28 maps
    in the first stage and 4x4 in the last.
  * "imagenet": 7x7 conv stride 2 + 3x3 max-pool stride 2. On 28x28 it would leave 1x1 maps
    in the last stage, hence "auto" picks "small" below 64 pixels.

Heads on the backbone's last feature map (global-average-pooled, or flattened):
  * "linear": Dense(embedding_dim).
  * "mlp": the Keras Siamese-network example's Dense 512 - ReLU - BatchNorm - Dense 256 - ReLU -
    BatchNorm - Dense(embedding_dim).

Parts and freezing: the backbone is "stem", then "stage1" ... "stage4" (torchvision's layer1 ...
layer4, Keras' conv2 ... conv5), each of blocks "stageS.blockB" (numbered from 1, as Keras'
conv5_block1); the head comes last. `freeze_before="stage4.block2"` freezes every part before
that block (what the Keras example does by training from `conv5_block1_out` on): the trainer
leaves frozen parameters out of the optimizer (`trainable_filter`) and their BatchNorm layers
always normalise with their running statistics, which therefore never change.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from tripletjax.app.models.embedding import EmbeddingOutput, normalize_embeddings

# Under stem="auto", images at least this large (in height and width) get the ImageNet stem.
IMAGENET_STEM_MIN_SIZE = 64
STEMS = ("auto", "small", "imagenet")
BLOCKS = ("basic", "bottleneck")
HEADS = ("linear", "mlp")
POOLINGS = ("avg", "flatten")
# The Keras example's head: Dense 512 and Dense 256, each with ReLU then BatchNorm.
MLP_HEAD_WIDTHS = (512, 256)
MLP_HEAD_BN_EPSILON = 1e-3  # Keras' BatchNormalization default.


# How images in [0, 1] (RGB) are fed to the network, by name. Pretrained weights expect their
# own: torchvision's ImageNet mean and standard deviation, or Keras' "caffe" mode (BGR, 0..255,
# mean-subtracted: `keras.applications.resnet.preprocess_input`).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def _imagenet_normalize(images: jax.Array) -> jax.Array:
  return (images - jnp.asarray(_IMAGENET_MEAN)) / jnp.asarray(_IMAGENET_STD)


def _caffe_normalize(images: jax.Array) -> jax.Array:
  return images[..., ::-1] * 255.0 - jnp.asarray(_CAFFE_BGR_MEAN)


PREPROCESSING = {
    "none": lambda images: images,
    "imagenet": _imagenet_normalize,
    "caffe": _caffe_normalize,
}


# The two layouts of pretrained ResNets, by name: where a bottleneck block strides, whether
# convolutions have biases, BatchNorm's epsilon.
STYLES = {
    "torchvision": {"stride_on_1x1": False, "conv_bias": False, "bn_epsilon": 1e-5},
    "keras": {"stride_on_1x1": True, "conv_bias": True, "bn_epsilon": 1.001e-5},
}

# He-normal on fan-out, as torchvision initialises ResNet convolutions for ReLU networks.
_CONV_KERNEL_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` that can be frozen: then it always uses (and keeps) its running statistics.

  `model.train()` switches every BatchNorm to batch statistics; a frozen one ignores that, as a
  Keras layer with `trainable = False` runs in inference mode.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.frozen = False

  def __call__(self, x, use_running_average=None, *, mask=None):
    if self.frozen:
      use_running_average = True
    return super().__call__(x, use_running_average, mask=mask)


def _conv(in_channels: int, out_channels: int, kernel_size: int, strides: int,
          rngs: nnx.Rngs, use_bias: bool = False) -> nnx.Conv:
  # Explicit symmetric padding (torch style): with stride 2 on even sizes, 'SAME' would pad
  # only the bottom/right. No bias in torchvision's layout: the BatchNorm that follows has its
  # own (Keras' layout has both).
  pad = (kernel_size - 1) // 2
  return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size),
                  strides=(strides, strides), padding=((pad, pad), (pad, pad)),
                  use_bias=use_bias, kernel_init=_CONV_KERNEL_INIT, rngs=rngs)


def _batch_norm(num_features: int, momentum: float, rngs: nnx.Rngs, zero_scale: bool = False,
                epsilon: float = 1e-5) -> BatchNorm:
  scale_init = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
  return BatchNorm(num_features, momentum=momentum, epsilon=epsilon, scale_init=scale_init,
                   rngs=rngs)


class _Projection(nnx.Module):
  """1x1 conv + BatchNorm shortcut, used where a block changes resolution or channels."""

  def __init__(self, in_channels: int, out_channels: int, strides: int, *, bn_momentum: float,
               style: dict, rngs: nnx.Rngs):
    self.conv = _conv(in_channels, out_channels, 1, strides, rngs, style["conv_bias"])
    self.norm = _batch_norm(out_channels, bn_momentum, rngs, epsilon=style["bn_epsilon"])

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x))


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34).

  Maps [B, H, W, in_channels] to [B, H / strides, W / strides, channels].
  """
  expansion = 1

  def __init__(self, in_channels: int, channels: int, strides: int, *, bn_momentum: float,
               zero_init_residual: bool, style: dict, rngs: nnx.Rngs):
    out_channels = channels * self.expansion
    bias, epsilon = style["conv_bias"], style["bn_epsilon"]
    self.conv1 = _conv(in_channels, channels, 3, strides, rngs, bias)
    self.norm1 = _batch_norm(channels, bn_momentum, rngs, epsilon=epsilon)
    self.conv2 = _conv(channels, out_channels, 3, 1, rngs, bias)
    self.norm2 = _batch_norm(out_channels, bn_momentum, rngs, zero_scale=zero_init_residual,
                             epsilon=epsilon)
    self.projection = (
        _Projection(in_channels, out_channels, strides, bn_momentum=bn_momentum, style=style,
                    rngs=rngs)
        if strides != 1 or in_channels != out_channels else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x if self.projection is None else self.projection(x)
    y = nnx.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    return nnx.relu(y + shortcut)


class BottleneckBlock(nnx.Module):
  """1x1 reduce -> 3x3 -> 1x1 expand by 4, with a residual connection (ResNet-50).

  The stride sits on the 3x3 convolution (torchvision, "v1.5"), or on the first 1x1 one with
  `style["stride_on_1x1"]` (Keras, the original "v1").
  Maps [B, H, W, in_channels] to [B, H / strides, W / strides, 4 * channels].
  """
  expansion = 4

  def __init__(self, in_channels: int, channels: int, strides: int, *, bn_momentum: float,
               zero_init_residual: bool, style: dict, rngs: nnx.Rngs):
    out_channels = channels * self.expansion
    bias, epsilon = style["conv_bias"], style["bn_epsilon"]
    strides_1x1, strides_3x3 = (strides, 1) if style["stride_on_1x1"] else (1, strides)
    self.conv1 = _conv(in_channels, channels, 1, strides_1x1, rngs, bias)
    self.norm1 = _batch_norm(channels, bn_momentum, rngs, epsilon=epsilon)
    self.conv2 = _conv(channels, channels, 3, strides_3x3, rngs, bias)
    self.norm2 = _batch_norm(channels, bn_momentum, rngs, epsilon=epsilon)
    self.conv3 = _conv(channels, out_channels, 1, 1, rngs, bias)
    self.norm3 = _batch_norm(out_channels, bn_momentum, rngs, zero_scale=zero_init_residual,
                             epsilon=epsilon)
    self.projection = (
        _Projection(in_channels, out_channels, strides, bn_momentum=bn_momentum, style=style,
                    rngs=rngs)
        if strides != 1 or in_channels != out_channels else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x if self.projection is None else self.projection(x)
    y = nnx.relu(self.norm1(self.conv1(x)))
    y = nnx.relu(self.norm2(self.conv2(y)))
    y = self.norm3(self.conv3(y))
    return nnx.relu(y + shortcut)


class _MLPHead(nnx.Module):
  """Dense - ReLU - BatchNorm for each hidden width, then Dense(embedding_dim) (Keras example)."""

  def __init__(self, in_features: int, embedding_dim: int, *, bn_momentum: float,
               rngs: nnx.Rngs):
    layers, norms = [], []
    for width in MLP_HEAD_WIDTHS:
      layers.append(nnx.Linear(in_features, width, rngs=rngs))
      norms.append(BatchNorm(width, momentum=bn_momentum, epsilon=MLP_HEAD_BN_EPSILON, rngs=rngs))
      in_features = width
    self.hidden = nnx.List(layers)
    self.norms = nnx.List(norms)
    self.out = nnx.Linear(in_features, embedding_dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for dense, norm in zip(self.hidden, self.norms):
      x = norm(nnx.relu(dense(x)))
    return self.out(x)


def resolve_stem(stem: str, input_shape: tuple[int, int, int]) -> str:
  """Returns "small" or "imagenet": `stem` itself, or for "auto" the one suiting the input."""
  if stem not in STEMS:
    raise ValueError(f"Unknown stem {stem!r}; expected one of {STEMS}.")
  if stem != "auto":
    return stem
  height, width, _ = input_shape
  return "imagenet" if min(height, width) >= IMAGENET_STEM_MIN_SIZE else "small"


def part_names(stage_sizes: Sequence[int]) -> list[str]:
  """The backbone's parts in order: "stem", then "stage1", "stage1.block1", ..., then "head"."""
  names = ["stem"]
  for stage, num_blocks in enumerate(stage_sizes, start=1):
    names.append(f"stage{stage}")
    names += [f"stage{stage}.block{block}" for block in range(1, num_blocks + 1)]
  return names + ["head"]


def _part_position(name: str, stage_sizes: Sequence[int]) -> tuple[int, int]:
  """(stage, block) where a part starts: stem (0, 0), stageS (S, 1), stageS.blockB (S, B),
  head (len(stages) + 1, 0). Raises ValueError listing the valid names."""
  if name == "stem":
    return (0, 0)
  if name == "head":
    return (len(stage_sizes) + 1, 0)
  match = re.fullmatch(r"stage(\d+)(?:\.block(\d+))?", str(name))
  if match:
    stage, block = int(match.group(1)), int(match.group(2) or 1)
    if 1 <= stage <= len(stage_sizes) and 1 <= block <= stage_sizes[stage - 1]:
      return (stage, block)
  names = part_names(stage_sizes)
  raise ValueError(f"Unknown ResNet part {name!r}; expected one of {', '.join(names)}.")


def _feature_map_size(size: int, stem: str, num_stages: int) -> int:
  """The side of the last stage's feature map for an input side `size` (torch's rounding)."""
  halve = lambda n: (n - 1) // 2 + 1  # A stride-2 conv or pool with "same"-style padding.
  if stem == "imagenet":
    size = halve(halve(size))
  for _ in range(num_stages - 1):
    size = halve(size)
  return size


def _check_options(input_shape: tuple[int, ...], stage_sizes: Sequence[int], **choices) -> None:
  """Raises ValueError for a bad input shape, stage sizes or choice (block, style, ...)."""
  if len(input_shape) != 3 or min(input_shape) < 1:
    raise ValueError(f"input_shape must be (H, W, C) with positive sizes, got {input_shape}.")
  valid = {"block": BLOCKS, "style": STYLES, "preprocess": PREPROCESSING, "head": HEADS,
           "pooling": POOLINGS}
  for what, value in choices.items():
    if value not in valid[what]:
      raise ValueError(f"Unknown {what} {value!r}; expected one of {tuple(valid[what])}.")
  if not stage_sizes or min(stage_sizes) < 1:
    raise ValueError(f"stage_sizes must be non-empty positive counts, got {stage_sizes}.")


def _residual_blocks(stage_sizes: Sequence[int], block: str, width: int, *, bn_momentum: float,
                     zero_init_residual: bool, layout: dict, rngs: nnx.Rngs):
  """The residual blocks of every stage, in order, and the channels of the last one's output.
  Stage i has `stage_sizes[i]` blocks of `width * 2**i` channels; stages after the first halve
  the resolution in their first block."""
  block_class = BasicBlock if block == "basic" else BottleneckBlock
  blocks = []
  channels_in = width
  for stage_index, num_blocks in enumerate(stage_sizes):
    stage_channels = width * 2**stage_index
    for block_index in range(num_blocks):
      strides = 2 if stage_index > 0 and block_index == 0 else 1
      blocks.append(block_class(channels_in, stage_channels, strides, bn_momentum=bn_momentum,
                                zero_init_residual=zero_init_residual, style=layout, rngs=rngs))
      channels_in = stage_channels * block_class.expansion
  return blocks, channels_in


class ResNet(nnx.Module):
  """ResNet embedding model for 28x28 up to 224x224 images.

  Preprocessing -> stem -> stages of residual blocks -> global average pool (or flatten) ->
  head -> L2 normalise.

  Stage i has `stage_sizes[i]` blocks of `width * 2**i` channels (times 4 at the output of
  bottleneck blocks); stages after the first halve the resolution in their first block.
  BatchNorm uses batch statistics in `model.train()` mode (updating the running averages
  with momentum `bn_momentum`) and the running averages in `model.eval()` mode; frozen parts
  (`freeze_before`) use their running averages in both.
  """

  def __init__(self, input_shape: tuple[int, int, int], *, stage_sizes: Sequence[int],
               block: str = "basic", embedding_dim: int = 128, width: int = 64,
               stem: str = "auto", bn_momentum: float = 0.9, zero_init_residual: bool = False,
               style: str = "torchvision", preprocess: str = "none", head: str = "linear",
               pooling: str = "avg", freeze_before: str | None = None, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      input_shape: (H, W, C) of the images the model is built for. C is fixed; H and W choose
        the stem under stem="auto" and the head's input size under pooling="flatten" (any size
        is accepted at call time with pooling="avg").
      stage_sizes: number of blocks in each stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block: "basic" (two 3x3 convs) or "bottleneck" (1x1-3x3-1x1, 4x expansion).
      embedding_dim: E, the size of the embeddings.
      width: channels of the stem and first stage (64 in the paper); later stages double it.
      stem: "small" (3x3 stride 1, no pool), "imagenet" (7x7 stride 2 + max-pool) or "auto"
        ("small" when H or W is below 64).
      bn_momentum: decay of BatchNorm's running averages.
      zero_init_residual: start each block's last BatchNorm scale at zero so every block is
        the identity at initialisation (Goyal et al., 2017).
      style: "torchvision" or "keras", the layout of pretrained weights (`STYLES`).
      preprocess: how images in [0, 1] are normalised first, a name of `PREPROCESSING`:
        "none", "imagenet" (torchvision's weights) or "caffe" (Keras' weights).
      head: "linear" or "mlp" (see the module docstring).
      pooling: "avg" (global average) or "flatten" (the Keras example's Flatten).
      freeze_before: None, or a part name (`part_names`): every part before it is frozen.
      rngs: `nnx.Rngs` with a `params` stream.
    """
    input_shape = tuple(int(size) for size in input_shape)
    _check_options(input_shape, stage_sizes, block=block, style=style, preprocess=preprocess,
                   head=head, pooling=pooling)
    self.input_shape = input_shape
    self.in_channels = input_shape[-1]
    self.stem = resolve_stem(stem, input_shape)
    self.stage_sizes = tuple(int(n) for n in stage_sizes)
    self.style = style
    self.preprocess = preprocess
    self.pooling = pooling
    layout = STYLES[style]

    kernel, stride = (3, 1) if self.stem == "small" else (7, 2)
    self.stem_conv = _conv(self.in_channels, width, kernel, stride, rngs, layout["conv_bias"])
    self.stem_norm = _batch_norm(width, bn_momentum, rngs, epsilon=layout["bn_epsilon"])

    blocks, channels_in = _residual_blocks(
        stage_sizes, block, width, bn_momentum=bn_momentum,
        zero_init_residual=zero_init_residual, layout=layout, rngs=rngs)
    self.blocks = nnx.List(blocks)
    self.num_features = channels_in
    if pooling == "flatten":
      height, width_ = (_feature_map_size(size, self.stem, len(stage_sizes))
                        for size in input_shape[:2])
      self.num_features = channels_in * height * width_
    if head == "linear":
      self.dense = nnx.Linear(self.num_features, embedding_dim, rngs=rngs)
    else:
      self.head = _MLPHead(self.num_features, embedding_dim, bn_momentum=bn_momentum, rngs=rngs)
    self._freeze(freeze_before)

  def _freeze(self, freeze_before: str | None) -> None:
    """Freezes every part before `freeze_before` (None: nothing); their BatchNorms then use
    their running averages in both modes."""
    self.freeze_before = freeze_before
    self._frozen_until = (0, 0)  # (stage, block) of the first trainable part.
    if freeze_before is not None:
      self._frozen_until = _part_position(freeze_before, self.stage_sizes)
      for path, module in nnx.iter_modules(self):
        if isinstance(module, BatchNorm) and self.is_frozen(path):
          module.frozen = True

  def _block_position(self, index: int) -> tuple[int, int]:
    """(stage, block), both from 1, of `self.blocks[index]`."""
    for stage, num_blocks in enumerate(self.stage_sizes, start=1):
      if index < num_blocks:
        return (stage, index + 1)
      index -= num_blocks
    raise IndexError(index)

  def is_frozen(self, path: Sequence) -> bool:
    """Whether the parameter or module at `path` (as `nnx.state` spells it) is frozen."""
    if not path or self._frozen_until == (0, 0):
      return False
    if path[0] in ("stem_conv", "stem_norm"):
      position = (0, 0)
    elif path[0] == "blocks" and len(path) > 1:
      position = self._block_position(int(path[1]))
    else:
      return False  # The head.
    return position < self._frozen_until

  def features(self, images: jax.Array) -> jax.Array:
    """The backbone's features: [B, H, W, C] images -> [B, num_features] (before the head).

    With pooling="avg" these are what torchvision's ResNet gives before its `fc` layer (and
    Keras' ResNet50 with `pooling="avg"`).
    """
    if images.ndim != 4 or images.shape[-1] != self.in_channels:
      raise ValueError(
          f"ResNet was built for images of shape [B, H, W, {self.in_channels}], "
          f"got shape {tuple(images.shape)}.")
    x = PREPROCESSING[self.preprocess](images)
    x = nnx.relu(self.stem_norm(self.stem_conv(x)))
    if self.stem == "imagenet":
      # Padding with -inf (torch) or 0 (Keras) is the same here: the input is >= 0 after ReLU.
      x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for residual_block in self.blocks:
      x = residual_block(x)
    if self.pooling == "flatten":
      return x.reshape(x.shape[0], -1)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, images: jax.Array) -> EmbeddingOutput:
    """Embeds a batch of images.

    Args:
      images: [B, H, W, C] float32 with C == input_shape[-1].

    Returns:
      `EmbeddingOutput` with `embeddings` [B, E] (unit rows) and `norms` [B].
    """
    x = self.features(images)
    x = self.dense(x) if hasattr(self, "dense") else self.head(x)
    return normalize_embeddings(x)


# The named ResNets: (stage sizes, block).
ARCHITECTURES = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
}


def resnet18(**kwargs) -> ResNet:
  """ResNet-18: basic blocks, stages (2, 2, 2, 2). Takes `ResNet`'s other arguments."""
  stage_sizes, block = ARCHITECTURES["resnet18"]
  return ResNet(stage_sizes=stage_sizes, block=block, **kwargs)


def resnet34(**kwargs) -> ResNet:
  """ResNet-34: basic blocks, stages (3, 4, 6, 3). Takes `ResNet`'s other arguments."""
  stage_sizes, block = ARCHITECTURES["resnet34"]
  return ResNet(stage_sizes=stage_sizes, block=block, **kwargs)


def resnet50(**kwargs) -> ResNet:
  """ResNet-50: bottleneck blocks, stages (3, 4, 6, 3). Takes `ResNet`'s other arguments."""
  stage_sizes, block = ARCHITECTURES["resnet50"]
  return ResNet(stage_sizes=stage_sizes, block=block, **kwargs)
