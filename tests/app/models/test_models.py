"""The embedding models of `tripletjax.app.models`: what every model returns, its train and eval
modes, its gradients; the registry and `create_model`.

What a model is built of: test_cnn.py, test_resnet.py; the normalisation: test_embedding.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.app.models import helpers
from tripletjax.app.models import (MODELS, EmbeddingOutput, HsuCNN, ResNet, TFACNN,
                                   create_model)

BATCH_SIZE = 4  # one batch size everywhere, so each jitted function compiles once per model.


def _images(input_shape, seed: int = 0, mean: float = 0.0, std: float = 1.0) -> jax.Array:
  # NumPy, not jax.numpy: on CPU every new shape of an eager JAX op costs an XLA compile.
  images = np.random.default_rng(seed).normal(mean, std, (BATCH_SIZE, *input_shape))
  return jnp.asarray(images, jnp.float32)


@nnx.jit
def _forward(model, images):
  return model(images)


# name -> (input_shape, embedding_dim, builder(rngs)); each small enough to compile fast.
CASES = {
    "tfa_cnn_8x8": ((8, 8, 1), 16, lambda rngs: TFACNN((8, 8, 1), embedding_dim=16, rngs=rngs)),
    "tfa_cnn_28x28": ((28, 28, 1), 16,
                      lambda rngs: TFACNN((28, 28, 1), embedding_dim=16, rngs=rngs)),
    "hsu_cnn_8x8": ((8, 8, 1), 12, lambda rngs: HsuCNN((8, 8, 1), embedding_dim=12, rngs=rngs)),
    "hsu_cnn_28x28": ((28, 28, 1), 12,
                      lambda rngs: HsuCNN((28, 28, 1), embedding_dim=12, rngs=rngs)),
    # Without dropout, so that train mode is deterministic for the BatchNorm test.
    "hsu_batchnorm_28x28": ((28, 28, 1), 12, lambda rngs: HsuCNN(
        (28, 28, 1), embedding_dim=12, dropout_rate=0.0, batch_norm=True, rngs=rngs)),
    # Two stages of one block: every code path of ResNet-18/50 (stem, identity and projection
    # shortcuts, stride 2) at a fraction of the compile time, with shared parameter shapes
    # because initialisers compile once per shape. Full depths are checked by shape only.
    "resnet_small_stem_28x28": ((28, 28, 1), 8, lambda rngs: ResNet(
        (28, 28, 1), stage_sizes=(1, 1), width=8, embedding_dim=8, rngs=rngs)),
    "resnet_imagenet_stem_64x64": ((64, 64, 1), 8, lambda rngs: ResNet(
        (64, 64, 1), stage_sizes=(1, 1), width=8, embedding_dim=8, rngs=rngs)),
    "resnet_bottleneck_28x28": ((28, 28, 1), 8, lambda rngs: ResNet(
        (28, 28, 1), stage_sizes=(1, 1), block="bottleneck", width=8, embedding_dim=8,
        rngs=rngs)),
}
CNN_CASES = [case for case in CASES if "cnn" in case]
# Each test runs on the fewest cases that cover its code paths; every compile costs ~1 s.
BATCHNORM_CASES = ["resnet_small_stem_28x28", "resnet_imagenet_stem_64x64",
                   "hsu_batchnorm_28x28"]
GRADIENT_CASES = ["tfa_cnn_28x28", "hsu_cnn_28x28", "resnet_small_stem_28x28",
                  "resnet_bottleneck_28x28"]


def _build(case: str, seed: int = 0) -> tuple[nnx.Module, tuple[int, int, int], int]:
  input_shape, embedding_dim, builder = CASES[case]
  return builder(helpers.rngs(seed)), input_shape, embedding_dim


def _assert_valid_output(output, batch_size: int, embedding_dim: int) -> None:
  assert isinstance(output, EmbeddingOutput)
  assert output.embeddings.shape == (batch_size, embedding_dim)
  assert output.norms.shape == (batch_size,)
  assert output.embeddings.dtype == jnp.float32 and output.norms.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(output.embeddings, axis=-1), 1.0, atol=1e-5)
  assert np.all(np.asarray(output.norms) > 0)


def test_jit_matches_eager_in_eval_mode():
  # One model only: eager calls compile op by op, which costs more time than other models
  # would add coverage (every other test runs the models under nnx.jit).
  model, input_shape, embedding_dim = _build("tfa_cnn_28x28")
  model.eval()
  images = _images(input_shape)
  eager, jitted = model(images), _forward(model, images)
  _assert_valid_output(jitted, BATCH_SIZE, embedding_dim)
  np.testing.assert_allclose(jitted.embeddings, eager.embeddings, atol=1e-5)
  np.testing.assert_allclose(jitted.norms, eager.norms, rtol=1e-5)


@pytest.mark.parametrize("case", CNN_CASES)
def test_dropout_is_random_in_train_mode_and_off_in_eval_mode(case):
  model, input_shape, embedding_dim = _build(case)
  images = _images(input_shape)
  # Each train-mode call draws a fresh dropout mask from the model's `dropout` stream.
  first, second = _forward(model, images), _forward(model, images)
  _assert_valid_output(first, BATCH_SIZE, embedding_dim)
  assert not np.allclose(first.embeddings, second.embeddings)
  model.eval()
  first, second = _forward(model, images), _forward(model, images)
  _assert_valid_output(first, BATCH_SIZE, embedding_dim)
  np.testing.assert_array_equal(first.embeddings, second.embeddings)
  np.testing.assert_array_equal(first.norms, second.norms)


@pytest.mark.parametrize("case", CNN_CASES)
def test_same_seed_gives_same_model_and_train_outputs(case):
  (model_a, input_shape, _), (model_b, _, _) = _build(case, seed=3), _build(case, seed=3)
  images = _images(input_shape)
  np.testing.assert_array_equal(_forward(model_a, images).embeddings,
                                _forward(model_b, images).embeddings)
  model_c, _, _ = _build(case, seed=4)
  assert not np.allclose(model_a.dense.kernel[...], model_c.dense.kernel[...])


@pytest.mark.parametrize("case", BATCHNORM_CASES)
def test_batchnorm_uses_batch_statistics_only_in_train_mode(case):
  model, input_shape, embedding_dim = _build(case)
  images = _images(input_shape, mean=3.0, std=2.0)  # far from the initial running stats 0, 1.
  first_norm = model.stem_norm if isinstance(model, ResNet) else model.norm1
  running_mean = lambda: np.asarray(first_norm.mean[...]).copy()
  initial_mean = running_mean()

  model.eval()
  eval_output = _forward(model, images)
  _assert_valid_output(eval_output, BATCH_SIZE, embedding_dim)
  np.testing.assert_array_equal(running_mean(), initial_mean)

  model.train()
  train_output = _forward(model, images)
  _assert_valid_output(train_output, BATCH_SIZE, embedding_dim)
  assert not np.allclose(running_mean(), initial_mean)
  assert not np.allclose(train_output.embeddings, eval_output.embeddings, atol=1e-3)
  # No dropout in these models: train mode is deterministic for a fixed batch...
  np.testing.assert_allclose(_forward(model, images).embeddings, train_output.embeddings,
                             atol=1e-5)
  # ...and eval mode now uses the updated running statistics.
  model.eval()
  assert not np.allclose(_forward(model, images).embeddings, eval_output.embeddings, atol=1e-4)


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_gradients_are_finite_and_nonzero_in_train_mode(case):
  model, input_shape, embedding_dim = _build(case)
  images = _images(input_shape)
  direction = jnp.asarray(np.random.default_rng(7).standard_normal(embedding_dim), jnp.float32)

  @nnx.jit
  def loss_and_grads(model, images):
    def loss_fn(model):
      output = model(images)
      return jnp.sum(output.embeddings @ direction) + 0.1 * jnp.sum(output.norms), output
    return nnx.value_and_grad(loss_fn, has_aux=True)(model)

  batch_stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  (loss, output), grads = loss_and_grads(model, images)
  _assert_valid_output(output, BATCH_SIZE, embedding_dim)
  # A training step must also update BatchNorm's running statistics.
  batch_stats_after = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  for before, after in zip(jax.tree.leaves(batch_stats_before),
                           jax.tree.leaves(batch_stats_after)):
    assert not np.allclose(before, after)
  assert np.isfinite(loss)
  grad_leaves = jax.tree.leaves(grads)
  assert len(grad_leaves) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
  for leaf in grad_leaves:
    assert np.all(np.isfinite(leaf))
  assert any(np.any(leaf != 0) for leaf in grad_leaves)


def test_create_model_rejects_unknown_names_and_lists_the_valid_ones():
  with pytest.raises(ValueError, match="Unknown model 'vgg16'.*'hsu_cnn'.*'resnet18'.*'tfa_cnn'"):
    create_model("vgg16", input_shape=(28, 28, 1), embedding_dim=8, rngs=helpers.rngs())


def test_create_model_rejects_unknown_kwargs_and_lists_the_accepted_ones():
  with pytest.raises(ValueError, match=r"\['widht'\].*'stem', 'style', 'width'"):
    create_model("resnet18", input_shape=(28, 28, 1), embedding_dim=8, rngs=helpers.rngs(), widht=8)
  with pytest.raises(ValueError, match=r"\['width'\].*\['dropout_rate'\]"):
    create_model("tfa_cnn", input_shape=(28, 28, 1), embedding_dim=8, rngs=helpers.rngs(), width=8)
  # A named ResNet fixes its depth and block type.
  with pytest.raises(ValueError, match="stage_sizes"):
    create_model("resnet50", input_shape=(28, 28, 1), embedding_dim=8, rngs=helpers.rngs(),
                 stage_sizes=(1, 1))


def test_models_registry_names():
  # Every entry is also built by the parameter-count tests above.
  assert set(MODELS) == {"tfa_cnn", "hsu_cnn", "resnet18", "resnet34", "resnet50"}
