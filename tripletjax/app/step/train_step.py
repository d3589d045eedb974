"""The model, its optimizer and the compiled train step: forward, mined loss, Optax update.

The direct train step is one jit-compiled function of (model, optimizer, images, labels). The
state is replicated and the batch sharded over every device (`devices.mesh`). The loss mines the
global batch as `config.loss.mining_scope` says (`tripletjax.sharded`): by default each device
mines its own rows against the gathered embeddings of every device, so negatives come from the
whole global batch and the loss is that of one device. `virtual_batch` splits the same step at
the embeddings ("split", "recompute") and mines the global batch between two programs;
the execution plan (`plan`) decides which step a run uses.
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
from tripletjax.app.devices import mesh as mesh_lib
from tripletjax.app.models import weights
from tripletjax.app.step import optimizers
from tripletjax.app.step import plan as plan_lib
from tripletjax.app.step import virtual_batch

def make_loss_fn(loss_config: ml_collections.ConfigDict,
                 mining_backend: str | None = None) -> Callable:
  """(labels, embeddings) -> (loss, stats) for the configured loss (`losses.MINED_LOSSES`).

  Args:
    loss_config: `config.loss`.
    mining_backend: for a loss whose miner sorts rows, where it runs: the execution plan's
      resolved backend for the program the loss runs in (`plan.ExecutionPlan.mining_backend`,
      or `single_device_mining_backend` for the split steps' loss on one device). None keeps
      `loss_config.mining_backend`.
  """
  loss = losses.MINED_LOSSES[loss_config.name]
  # None (the temperature's default): the loss's own default.
  options = {name: loss_config[name] for name in loss.options if loss_config[name] is not None}
  if loss.sorts_rows and mining_backend is not None:
    options["mining_backend"] = mining_backend
  return functools.partial(loss.fn, return_stats=True, **options)


def model_options(model_config: ml_collections.ConfigDict) -> dict:
  """The options of `config.model.name` set in its family's section of `config.model`
  (`config.model.cnn`, `config.model.resnet`: `models.config_options`), as keyword arguments;
  None keeps the model's own default, other models' options are not used."""
  return models.config_options(model_config)


def embedding_spread(embeddings: jax.Array) -> jax.Array:
  """Mean squared distance of the [B, E] embeddings to their mean: half the mean squared
  distance between two of them. 0 when every embedding is the same point (collapse); for
  unit embeddings 1 - |mean|^2, about 1 when they spread over the sphere."""
  embeddings = jax.lax.stop_gradient(embeddings).astype(jnp.float32)
  centred = embeddings - jnp.mean(embeddings, axis=0)
  return jnp.mean(jnp.sum(centred * centred, axis=-1))


@dataclasses.dataclass
class Trainer:
  """The model, its optimizer and the compiled functions that use them."""
  model: nnx.Module
  optimizer: nnx.Optimizer
  train_step: Callable
  embed_fn: Callable
  plan: plan_lib.ExecutionPlan

  @property
  def step_kind(self) -> str:
    return self.plan.step_kind


def build_model(config, input_shape) -> nnx.Module:
  """The model of `config.model`, with the backbone of `config.model.weights` if set."""
  rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
  options = model_options(config.model)
  if config.model.weights is not None:
    options = weights.model_options(config.model.weights, options)
  model = models.create_model(config.model.name, input_shape=input_shape,
                              embedding_dim=config.model.embedding_dim, rngs=rngs, **options)
  if config.model.weights is not None:
    weights.load_backbone(model, config.model.weights)
  return model


def _direct_train_step(loss_fn, schedule, trainable, num_chunks: int, replicated) -> Callable:
  """The direct step: forward, `loss_fn` of the sharded batch, backward and update, one program.
  """

  @nnx.jit
  def direct_train_step(model, optimizer, images, labels):
    before = optimizers.state_before_update(model, optimizer)

    def objective(model):
      output = mesh_lib.apply_in_chunks(model, images, num_chunks)
      loss, stats = loss_fn(labels, output.embeddings)
      return loss, (stats, output.norms, embedding_spread(output.embeddings))
    (loss, (stats, norms, spread)), grads = nnx.value_and_grad(
        objective, argnums=nnx.DiffState(0, trainable), has_aux=True)(model)
    # A step with a non-finite loss or gradient leaves the state (BatchNorm statistics
    # included) as it was; the loop stops on it, or skips it with optimizer.skip_nonfinite.
    learning_rate = schedule(optimizer.step[...])  # This step's.
    finite = optimizers.update_if_finite(model, optimizer, grads, loss, before)
    metrics = {"loss": loss, "embedding_norm": jnp.mean(norms), "embedding_spread": spread,
               "learning_rate": learning_rate,
               "nonfinite": jnp.logical_not(finite).astype(jnp.int32), **stats}
    return jax.lax.with_sharding_constraint(metrics, replicated)
  return direct_train_step


def _split_train_step(single_device_loss_fn, schedule, mesh, trainable,
                      plan: plan_lib.ExecutionPlan) -> virtual_batch.SplitTrainStep:
  """The split step (`virtual_batch`): the loss on one device between two programs."""

  def loss_and_spread(labels, embeddings):
    loss, stats = single_device_loss_fn(labels, embeddings)
    return loss, {**stats, "embedding_spread": embedding_spread(embeddings)}
  return virtual_batch.SplitTrainStep(loss_and_spread, schedule, mesh, plan.forward_chunks,
                                      trainable, recompute=plan.step_kind == "recompute")


def build_trainer(config, input_shape, total_steps, mesh,
                  plan: plan_lib.ExecutionPlan | None = None, loss_fn: Callable | None = None,
                  single_device_loss_fn: Callable | None = None) -> Trainer:
  """The model and optimizer of `config`, replicated over `mesh`, and their jitted functions.

  The step is the one `plan` says (default: `plan.make_plan(config)`, with the "replicated"
  mining scope for a given `loss_fn`). `loss_fn(labels, embeddings) -> (loss, stats)` defaults
  to the mined loss of `config.loss` with the plan's mining backend; the plan's mining scope
  says how the loss of the batch sharded over the mesh is computed
  (`tripletjax.sharded.MINING_SCOPES`): a given `loss_fn` need not know about devices.
  `single_device_loss_fn`, the same loss for a program on one device, is what the split steps
  (`virtual_batch`) compute between their two programs; by default `loss_fn`, or the mined
  loss with the plan's single-device mining backend.
  Frozen parameters (`config.model.resnet.freeze_before`) are left out of the optimizer: they get no
  gradient, no optimizer state and no update.
  """
  if plan is None:
    plan = plan_lib.make_plan(config, mining_scope=None if loss_fn is None else "replicated")
  model = build_model(config, input_shape)
  tx, schedule = optimizers.make_optimizer(config.optimizer, total_steps)
  trainable = models.trainable_filter(model)
  optimizer = nnx.Optimizer(model, tx, wrt=trainable)
  if loss_fn is None:
    loss_fn = make_loss_fn(config.loss, plan.mining_backend)
    single_device_loss_fn = make_loss_fn(config.loss, plan.single_device_mining_backend)
  single_device_loss_fn = single_device_loss_fn or loss_fn
  loss_fn = sharded.sharded_loss(loss_fn, mesh, scope=plan.mining_scope,
                                 axis_name=mesh_lib.DATA_AXIS)
  replicated = mesh_lib.replicated(mesh)
  # The state lives replicated on every device of the mesh, like a restored checkpoint.
  state = nnx.state((model, optimizer))
  nnx.update((model, optimizer), mesh_lib.put_replicated(mesh, state))
  num_chunks = plan.forward_chunks

  @nnx.jit
  def embed_fn(model, images):
    embeddings = mesh_lib.apply_in_chunks(model, images, num_chunks).embeddings
    return jax.lax.with_sharding_constraint(embeddings, replicated)

  if plan.is_split:
    train_step = _split_train_step(single_device_loss_fn, schedule, mesh, trainable, plan)
  else:
    train_step = _direct_train_step(loss_fn, schedule, trainable, num_chunks, replicated)
  return Trainer(model, optimizer, train_step, embed_fn, plan)


def training_state(trainer: Trainer):
  """What a checkpoint holds: parameters, BatchNorm statistics, optimizer state (no RNGs)."""
  return nnx.to_pure_dict(nnx.state((trainer.model, trainer.optimizer), nnx.Not(nnx.RngState)))


def abstract_training_state(trainer: Trainer, mesh: jax.sharding.Mesh):
  """`training_state`'s structure as abstract arrays replicated over `mesh`: the target an
  Orbax restore fills onto the current devices, whatever devices wrote the checkpoint."""
  replicated = mesh_lib.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      training_state(trainer))


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
