"""Small CNN embedding models reproducing two published Keras triplet-loss examples.

`TFACNN` is the network of the TensorFlow Addons triplet-loss tutorial ("TensorFlow Addons
Losses: TripletSemiHardLoss", tensorflow.org/addons/tutorials/losses_triplet); `HsuCNN` is the
strided LeakyReLU network of A. Hsu's "NeuralNetwork-02 Triplet Loss Example at MNIST"
(augustushsu.github.io/2020/06/10/NeuralNetwork-02/). Both flatten their last feature map, so the
size of their Dense layer depends on the input size: they take `input_shape` at
construction (NNX creates parameters eagerly) and reject images of any other shape.
Kernels use Keras' default Glorot-uniform initialisation, biases start at zero, as in the
Keras originals.
"""

from __future__ import annotations

import functools
import math

import jax
from flax import nnx

from tripletjax.app.models.embedding import EmbeddingOutput, normalize_embeddings

_KERAS_KERNEL_INIT = nnx.initializers.glorot_uniform()


def _check_images(images: jax.Array, input_shape: tuple[int, int, int], model_name: str) -> None:
  """Raises a ValueError naming the problem when `images` is not [B, *input_shape]."""
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape):
    raise ValueError(
        f"{model_name} was built for images of shape [B, {', '.join(map(str, input_shape))}] "
        f"(input_shape={tuple(input_shape)}), got shape {tuple(images.shape)}.")


def _check_input_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
  input_shape = tuple(int(size) for size in input_shape)
  if len(input_shape) != 3 or min(input_shape) < 1:
    raise ValueError(f"input_shape must be (H, W, C) with positive sizes, got {input_shape}.")
  return input_shape


class TFACNN(nnx.Module):
  """The CNN of the TensorFlow Addons triplet-loss tutorial.

  Conv 64 2x2 'SAME' relu -> MaxPool 2 -> Dropout 0.3 -> Conv 32 2x2 'SAME' relu ->
  MaxPool 2 -> Dropout 0.3 -> Flatten -> Dense(embedding_dim) -> L2 normalise.

  Pooling is 'VALID' like Keras' MaxPooling2D default: 28x28 -> 14 -> 7, 8x8 -> 4 -> 2 (an
  odd size drops its last row/column, as in Keras).
  """

  def __init__(self, input_shape: tuple[int, int, int], *, embedding_dim: int = 256,
               dropout_rate: float = 0.3, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      input_shape: (H, W, C) of one input image; H and W must be at least 4.
      embedding_dim: E, the size of the embeddings.
      dropout_rate: probability of dropping an activation after each pooling layer.
      rngs: `nnx.Rngs` with `params` and `dropout` streams.
    """
    self.input_shape = _check_input_shape(input_shape)
    height, width, in_channels = self.input_shape
    if min(height, width) < 4:
      raise ValueError(f"TFACNN pools twice by 2, so it needs H, W >= 4; got {self.input_shape}.")
    self.conv1 = nnx.Conv(in_channels, 64, (2, 2), padding="SAME",
                          kernel_init=_KERAS_KERNEL_INIT, rngs=rngs)
    self.dropout1 = nnx.Dropout(dropout_rate, rngs=rngs)
    self.conv2 = nnx.Conv(64, 32, (2, 2), padding="SAME", kernel_init=_KERAS_KERNEL_INIT,
                          rngs=rngs)
    self.dropout2 = nnx.Dropout(dropout_rate, rngs=rngs)
    pooled_height, pooled_width = height // 2 // 2, width // 2 // 2
    self.dense = nnx.Linear(pooled_height * pooled_width * 32, embedding_dim,
                            kernel_init=_KERAS_KERNEL_INIT, rngs=rngs)

  def __call__(self, images: jax.Array) -> EmbeddingOutput:
    """Embeds a batch of images.

    Args:
      images: [B, H, W, C] float32, with (H, W, C) == `input_shape`.

    Returns:
      `EmbeddingOutput` with `embeddings` [B, E] (unit rows) and `norms` [B].
    """
    _check_images(images, self.input_shape, "TFACNN")
    x = nnx.relu(self.conv1(images))
    x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
    x = self.dropout1(x)
    x = nnx.relu(self.conv2(x))
    x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
    x = self.dropout2(x)
    x = x.reshape(x.shape[0], -1)  # row-major NHWC flatten, the same order as Keras' Flatten.
    return normalize_embeddings(self.dense(x))


class HsuCNN(nnx.Module):
  """The strided LeakyReLU CNN of Hsu's MNIST triplet-loss example.

  Conv 64 5x5 stride 2 'SAME' -> LeakyReLU(0.3) -> Dropout 0.3 -> Conv 64 5x5 stride 2
  'SAME' -> LeakyReLU(0.3) -> Dropout 0.3 -> Flatten -> Dense(embedding_dim) -> L2 normalise.

  The slope 0.3 is Keras' LeakyReLU default (Flax's default is 0.01). 'SAME' stride-2
  convolutions give ceil(H / 4) x ceil(W / 4) maps: 28x28 -> 7x7, 8x8 -> 2x2.

  `batch_norm=True` (not in the original) puts a BatchNorm between each convolution (then
  without bias) and its activation. It adds 128 parameters and lets a higher learning rate
  train well (configs/fashion_mnist.py uses it).
  """

  def __init__(self, input_shape: tuple[int, int, int], *, embedding_dim: int = 200,
               dropout_rate: float = 0.3, negative_slope: float = 0.3,
               batch_norm: bool = False, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      input_shape: (H, W, C) of one input image.
      embedding_dim: E, the size of the embeddings.
      dropout_rate: probability of dropping an activation after each convolution.
      negative_slope: LeakyReLU slope for negative inputs.
      batch_norm: BatchNorm (momentum 0.9) after each convolution, before the activation.
      rngs: `nnx.Rngs` with `params` and `dropout` streams.
    """
    self.input_shape = _check_input_shape(input_shape)
    height, width, in_channels = self.input_shape
    self.negative_slope = negative_slope
    conv = functools.partial(nnx.Conv, kernel_size=(5, 5), strides=(2, 2), padding="SAME",
                             use_bias=not batch_norm, kernel_init=_KERAS_KERNEL_INIT, rngs=rngs)
    norm = lambda features: (nnx.BatchNorm(features, momentum=0.9, rngs=rngs) if batch_norm
                             else None)
    self.conv1 = conv(in_channels, 64)
    self.norm1 = norm(64)
    self.dropout1 = nnx.Dropout(dropout_rate, rngs=rngs)
    self.conv2 = conv(64, 64)
    self.norm2 = norm(64)
    self.dropout2 = nnx.Dropout(dropout_rate, rngs=rngs)
    # Each 'SAME' stride-2 convolution maps a size n to ceil(n / 2).
    conv_height = math.ceil(math.ceil(height / 2) / 2)
    conv_width = math.ceil(math.ceil(width / 2) / 2)
    self.dense = nnx.Linear(conv_height * conv_width * 64, embedding_dim,
                            kernel_init=_KERAS_KERNEL_INIT, rngs=rngs)

  def __call__(self, images: jax.Array) -> EmbeddingOutput:
    """Embeds a batch of images.

    Args:
      images: [B, H, W, C] float32, with (H, W, C) == `input_shape`.

    Returns:
      `EmbeddingOutput` with `embeddings` [B, E] (unit rows) and `norms` [B].
    """
    _check_images(images, self.input_shape, "HsuCNN")
    x = images
    for conv, norm, dropout in ((self.conv1, self.norm1, self.dropout1),
                                (self.conv2, self.norm2, self.dropout2)):
      x = conv(x)
      if norm is not None:
        x = norm(x)
      x = dropout(nnx.leaky_relu(x, negative_slope=self.negative_slope))
    x = x.reshape(x.shape[0], -1)
    return normalize_embeddings(self.dense(x))
