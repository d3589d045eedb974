"""The model, its optimizer and the compiled train step: forward, mined loss, Optax update.

The direct train step is one jit-compiled function of (model, optimizer, images, labels). The
state is replicated and the batch sharded over every device (`parallel`). The loss mines the
global batch as `config.loss.mining_scope` says (`tripletjax.sharded`): by default each device
mines its own rows against the gathered embeddings of every device, so negatives come from the
whole global batch and the loss is that of one device. `virtual_batch` splits the same step at
the embeddings ("split", "recompute") and mines the global batch between two programs;
`resolve_train_step` decides which step a run uses.
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
from tripletjax import mining
from tripletjax import sharded
from tripletjax.app import models
from tripletjax.app.devices import mesh as mesh_lib
from tripletjax.app.models import weights
from tripletjax.app.step import optimizers
from tripletjax.app.step import virtual_batch

# How a train step computes its gradient (`config.train_step`): "direct" in one program,
# "split" / "recompute" in two programs with the loss between them (`virtual_batch`).
TRAIN_STEPS = ("auto", "direct", *virtual_batch.SPLIT_STEPS)


def make_loss_fn(loss_config: ml_collections.ConfigDict, *,
                 single_device: bool = False) -> Callable:
  """(labels, embeddings) -> (loss, stats) for the configured loss (`losses.MINED_LOSSES`).

  With `single_device`, for a program known to run on one device (the split step's loss): a
  sorting miner's "auto" backend is resolved for one device (`mining.resolve_backend`), NumPy
  on the host on a CPU, XLA elsewhere, rather than for every device of the run.
  """
  loss = losses.MINED_LOSSES[loss_config.name]
  options = {name: loss_config[name] for name in loss.options}
  if not (single_device and loss.sorts_rows):
    return functools.partial(loss.fn, return_stats=True, **options)

  def loss_on_one_device(labels, embeddings):
    backend = mining.resolve_backend(options["mining_backend"], num_columns=labels.shape[0],
                                     num_devices=1)
    return loss.fn(labels, embeddings, return_stats=True, **{**options,
                                                             "mining_backend": backend})
  return loss_on_one_device


def resolve_train_step(requested: str, loss_config: ml_collections.ConfigDict, *,
                       platform: str | None = None, num_devices: int | None = None) -> str:
  """The train step a run uses: "direct", "split" or "recompute"; the one place that decides.

  "auto" is "split" where that lets a sorting miner run in NumPy instead of inside XLA: on the
  CPU, with several devices, for a loss that sorts rows (semi-hard, batch-all) with the
  "auto" or "numpy" mining backend, mined over the global batch. There the direct step must
  sort inside XLA (a host callback in a program sharded over several CPU devices deadlocks),
  which is several times slower than NumPy (benchmarks/RESULTS.md, "Split and virtual-batch
  steps"). Everywhere else "auto" is "direct": one program, nothing copied to the host. The
  split steps mine the whole global batch at once: they compute the "global" (or
  "replicated") mining scope, never "local" (a config error, `config.checks`).

  Args:
    requested: one of `TRAIN_STEPS`.
    loss_config: `config.loss`.
    platform: where the model runs; default `jax.default_backend()`.
    num_devices: the devices the batch is split over; default `jax.device_count()`.
  """
  if requested not in TRAIN_STEPS:
    raise ValueError(f"Unknown train step {requested!r}; expected one of {TRAIN_STEPS}.")
  if requested != "auto":
    return requested
  platform = jax.default_backend() if platform is None else platform
  num_devices = jax.device_count() if num_devices is None else num_devices
  loss = losses.MINED_LOSSES.get(loss_config.name)  # None: the pairs task's explicit loss.
  sorts_in_numpy = (loss is not None and loss.sorts_rows
                    and loss_config.mining_backend in ("auto", "numpy")
                    and loss_config.mining_scope != "local")
  return "split" if platform == "cpu" and num_devices > 1 and sorts_in_numpy else "direct"


def model_options(model_config: ml_collections.ConfigDict) -> dict:
  """The model options (`models.OPTION_NAMES`) set in `config.model`, as keyword arguments;
  None keeps the model's own default."""
  return {name: value for name, value in model_config.items()
          if name in models.OPTION_NAMES and value is not None}


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
  forward_chunks: int = 1
  step_kind: str = "direct"  # What `resolve_train_step` chose.


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


def build_trainer(config, input_shape, total_steps, mesh, loss_fn: Callable | None = None,
                  mining_scope: str | None = None,
                  single_device_loss_fn: Callable | None = None) -> Trainer:
  """The model and optimizer of `config`, replicated over `mesh`, and their jitted functions.

  `loss_fn(labels, embeddings) -> (loss, stats)` defaults to the mined loss of `config.loss`.
  `mining_scope` says how the loss of the batch sharded over the mesh is computed
  (`tripletjax.sharded.MINING_SCOPES`): for the default loss, `config.loss.mining_scope`; a
  given `loss_fn` need not know about devices, and by default ("replicated") every device
  computes it on the gathered batch. `single_device_loss_fn`, the same loss for a program on
  one device, is what the split steps (`virtual_batch`) compute between their two programs;
  by default `loss_fn`, or the mined loss resolved for one device (`make_loss_fn`).
  Frozen parameters (`config.model.freeze_before`) are left out of the optimizer: they get no
  gradient, no optimizer state and no update.
  """
  model = build_model(config, input_shape)
  tx, schedule = optimizers.make_optimizer(config.optimizer, total_steps)
  trainable = models.trainable_filter(model)
  optimizer = nnx.Optimizer(model, tx, wrt=trainable)
  step_kind = resolve_train_step(config.train_step, config.loss)
  if loss_fn is None:
    loss_fn, mining_scope = make_loss_fn(config.loss), config.loss.mining_scope
    single_device_loss_fn = make_loss_fn(config.loss, single_device=True)
  single_device_loss_fn = single_device_loss_fn or loss_fn
  loss_fn = sharded.sharded_loss(loss_fn, mesh, scope=mining_scope or "replicated",
                                 axis_name=mesh_lib.DATA_AXIS)
  replicated = mesh_lib.replicated(mesh)
  # The state lives replicated on every device of the mesh, like a restored checkpoint.
  state = nnx.state((model, optimizer))
  nnx.update((model, optimizer), mesh_lib.put_replicated(mesh, state))
  num_chunks = config.model.forward_chunks

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
    learning_rate = schedule(optimizer.step.value)  # This step's.
    finite = optimizers.update_if_finite(model, optimizer, grads, loss, before)
    metrics = {"loss": loss, "embedding_norm": jnp.mean(norms), "embedding_spread": spread,
               "learning_rate": learning_rate,
               "nonfinite": jnp.logical_not(finite).astype(jnp.int32), **stats}
    return jax.lax.with_sharding_constraint(metrics, replicated)

  @nnx.jit
  def embed_fn(model, images):
    embeddings = mesh_lib.apply_in_chunks(model, images, num_chunks).embeddings
    return jax.lax.with_sharding_constraint(embeddings, replicated)

  train_step = direct_train_step
  if step_kind in virtual_batch.SPLIT_STEPS:
    if mining_scope == "local":
      raise ValueError(f"The {step_kind!r} train step mines the whole global batch; it cannot "
                       "mine each device's rows alone (mining scope 'local').")

    def loss_and_spread(labels, embeddings):
      loss, stats = single_device_loss_fn(labels, embeddings)
      return loss, {**stats, "embedding_spread": embedding_spread(embeddings)}
    train_step = virtual_batch.SplitTrainStep(loss_and_spread, schedule, mesh, num_chunks,
                                              trainable, recompute=step_kind == "recompute")
  return Trainer(model, optimizer, train_step, embed_fn, num_chunks, step_kind)


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
