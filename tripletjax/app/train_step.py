"""The model, its optimizer and the compiled train step: forward, mined loss, Optax update.

The train step is one jit-compiled function of (model, optimizer, images, labels). The state is
replicated and the batch sharded over every device (`parallel`). The loss mines the global
batch as `config.loss.mining_scope` says (`make_sharded_loss_fn`, `tripletjax.sharded`): by
default each device mines its own rows against the gathered embeddings of every device, so
negatives come from the whole global batch and the loss is that of one device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from tripletjax import losses
from tripletjax import sharded
from tripletjax.app import models
from tripletjax.app import optimizers
from tripletjax.app import parallel


def make_loss_fn(loss_config: ml_collections.ConfigDict) -> Callable:
  """(labels, embeddings) -> (loss, stats) for the configured loss (`losses.MINED_LOSSES`)."""
  loss = losses.MINED_LOSSES[loss_config.name]
  options = {name: loss_config[name] for name in loss.options}
  return functools.partial(loss.fn, return_stats=True, **options)


def make_sharded_loss_fn(loss_config: ml_collections.ConfigDict,
                         mesh: jax.sharding.Mesh) -> Callable:
  """(labels[B], embeddings[B, E]) sharded over the mesh's data axis -> (loss, stats) of the
  global batch, mined as `loss_config.mining_scope` says (`tripletjax.sharded`). Call under jit."""
  return sharded.sharded_loss(make_loss_fn(loss_config), mesh, scope=loss_config.mining_scope,
                              axis_name=parallel.DATA_AXIS)


def model_options(model_config: ml_collections.ConfigDict) -> dict:
  """The model options (`models.OPTION_NAMES`) set in `config.model`, as keyword arguments;
  None keeps the model's own default."""
  return {name: value for name, value in model_config.items()
          if name in models.OPTION_NAMES and value is not None}


@dataclasses.dataclass
class Trainer:
  """The model, its optimizer and the compiled functions that use them."""
  model: nnx.Module
  optimizer: nnx.Optimizer
  train_step: Callable
  embed_fn: Callable
  forward_chunks: int = 1


def build_trainer(config, input_shape, total_steps, mesh) -> Trainer:
  """The model and optimizer of `config`, replicated over `mesh`, and their jitted functions."""
  rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
  model = models.create_model(config.model.name, input_shape=input_shape,
                              embedding_dim=config.model.embedding_dim, rngs=rngs,
                              **model_options(config.model))
  tx, schedule = optimizers.make_optimizer(config.optimizer, total_steps)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  loss_fn = make_sharded_loss_fn(config.loss, mesh)
  replicated = parallel.replicated(mesh)
  # The state lives replicated on every device of the mesh, like a restored checkpoint.
  state = nnx.state((model, optimizer))
  nnx.update((model, optimizer), jax.device_put(state, replicated))
  num_chunks = config.model.forward_chunks

  @nnx.jit
  def train_step(model, optimizer, images, labels):
    # A copy of the values (nnx.state's Variables would follow the update).
    before = jax.tree.map(jnp.asarray, nnx.state((model, optimizer), nnx.Not(nnx.RngState)))

    def objective(model):
      output = parallel.apply_in_chunks(model, images, num_chunks)
      loss, stats = loss_fn(labels, output.embeddings)
      return loss, (stats, output.norms)
    (loss, (stats, norms)), grads = nnx.value_and_grad(objective, has_aux=True)(model)
    optimizer.update(model, grads)
    learning_rate = schedule(optimizer.step.value - 1)
    # A step with a non-finite loss or gradient leaves the state (BatchNorm statistics
    # included) as it was; the loop stops on it, or skips it with optimizer.skip_nonfinite.
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    after = nnx.state((model, optimizer), nnx.Not(nnx.RngState))
    nnx.update((model, optimizer),
               jax.tree.map(lambda new, old: jnp.where(finite, new, old), after, before))
    metrics = {"loss": loss, "embedding_norm": jnp.mean(norms), "learning_rate": learning_rate,
               "nonfinite": jnp.logical_not(finite).astype(jnp.int32), **stats}
    return jax.lax.with_sharding_constraint(metrics, replicated)

  @nnx.jit
  def embed_fn(model, images):
    embeddings = parallel.apply_in_chunks(model, images, num_chunks).embeddings
    return jax.lax.with_sharding_constraint(embeddings, replicated)

  return Trainer(model, optimizer, train_step, embed_fn, num_chunks)


def training_state(trainer: Trainer):
  """What a checkpoint holds: parameters, BatchNorm statistics, optimizer state (no RNGs)."""
  return nnx.to_pure_dict(nnx.state((trainer.model, trainer.optimizer), nnx.Not(nnx.RngState)))


def set_training_state(trainer: Trainer, pure_state) -> None:
  """Puts `training_state`'s result (e.g. restored from a checkpoint) back into `trainer`."""
  state = nnx.state((trainer.model, trainer.optimizer), nnx.Not(nnx.RngState))
  nnx.replace_by_pure_dict(state, pure_state)
  nnx.update((trainer.model, trainer.optimizer), state)


def rng_counts(model) -> dict:
  """The dropout streams' counters (JSON), so a mid-epoch resume draws the same masks."""
  return jax.tree.map(int, nnx.to_pure_dict(nnx.state(model, nnx.RngCount)))


def set_rng_counts(model, counts: dict) -> None:
  state = nnx.state(model, nnx.RngCount)
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda c: jnp.asarray(c, jnp.uint32), counts))
  nnx.update(model, state)
