"""A train step and a short training that need only jax, numpy, flax and optax.

The scaling benchmark times this step on 1, 2, 4, 8 devices, and the accelerator check trains
with it on machines that have JAX with CUDA, Flax and Optax but not the application's other
dependencies (ml_collections, tqdm, tensorboardX, scikit-learn). It is the application's step
(`tripletjax.app.step.train_step`) without its config, metrics and non-finite guard: the model of
`tripletjax.app.models`, the batch sharded over a mesh (`tripletjax.app.devices.mesh`), the loss
mined as `tripletjax.sharded` says, an Optax update; evaluation is leave-one-out precision@1
by cosine similarity, as in `tripletjax.app.evaluation.retrieval`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import tripletjax
from tripletjax.app import models
from tripletjax.app.devices import mesh as mesh_lib

AXIS = mesh_lib.DATA_AXIS


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_devices` devices, axis "data"."""
  devices = jax.devices()[:num_devices]
  if len(devices) < num_devices:
    raise ValueError(f"{num_devices} devices asked for, {len(devices)} present.")
  return jax.sharding.Mesh(np.array(devices), (AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def shard(mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
  """The arrays of a global batch, sharded over the mesh's "data" axis (one process)."""
  sharding = NamedSharding(mesh, P(AXIS))
  return tuple(jax.device_put(x, sharding) for x in arrays)


@dataclasses.dataclass
class Trainer:
  model: nnx.Module
  optimizer: nnx.Optimizer
  step: Callable  # (model, optimizer, images, labels) -> loss
  embed: Callable  # (model, images) -> embeddings


def build(mesh, *, input_shape, model_name: str = "hsu_cnn", embedding_dim: int = 64,
          loss_name: str = "semihard", margin: float = 0.2, scope: str = "global",
          learning_rate: float = 3e-3, seed: int = 0, model_options: dict | None = None,
          mining_backend: str = "auto") -> Trainer:
  """The model (replicated over `mesh`), Adam and the jitted train step."""
  options = dict(model_options or {})
  model = models.create_model(model_name, input_shape=tuple(input_shape),
                              embedding_dim=embedding_dim,
                              rngs=nnx.Rngs(params=seed, dropout=seed + 1), **options)
  optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)
  replicated = NamedSharding(mesh, P())
  state = nnx.state((model, optimizer))
  nnx.update((model, optimizer), jax.device_put(state, replicated))
  loss = tripletjax.MINED_LOSSES[loss_name]
  loss_options = {"margin": margin}
  if loss.sorts_rows:
    loss_options["mining_backend"] = mining_backend
  loss_fn = tripletjax.sharded_loss(functools.partial(loss.fn, **loss_options), mesh,
                                    scope=scope, axis_name=AXIS)

  @nnx.jit
  def step(model, optimizer, images, labels):
    def objective(model):
      return loss_fn(labels, model(images).embeddings)
    loss, grads = nnx.value_and_grad(objective)(model)
    optimizer.update(model, grads)
    return jax.lax.with_sharding_constraint(loss, replicated)

  @nnx.jit
  def embed(model, images):
    return jax.lax.with_sharding_constraint(model(images).embeddings, replicated)

  return Trainer(model, optimizer, step, embed)


def precision_at_1(embeddings: np.ndarray, labels: np.ndarray, chunk: int = 1024) -> float:
  """Leave-one-out precision@1 with cosine similarity (ties: the lowest index)."""
  x = jnp.asarray(embeddings, jnp.float32)
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  labels = np.asarray(labels)
  hits = 0
  for start in range(0, len(labels), chunk):
    rows = jnp.arange(start, min(start + chunk, len(labels)))
    similarity = x[rows] @ x.T
    similarity = similarity.at[jnp.arange(len(rows)), rows].set(-jnp.inf)
    nearest = np.asarray(jnp.argmax(similarity, axis=1))
    hits += int(np.sum(labels[nearest] == labels[np.asarray(rows)]))
  return hits / len(labels)


def embed_all(trainer: Trainer, mesh, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Embeddings of all images (eval mode), in batches sharded over the mesh (the last one
  padded)."""
  trainer.model.eval()
  parts = []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    padded = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:],
                                             batch.dtype)])
    (sharded,) = shard(mesh, padded)
    parts.append(np.asarray(trainer.embed(trainer.model, sharded))[:len(batch)])
  trainer.model.train()
  return np.concatenate(parts)


def train(dataset, mesh, *, epochs: int, batch_size: int, seed: int = 0,
          max_seconds: float | None = None, on_progress: Callable | None = None,
          **build_options) -> dict:
  """Trains on `dataset` (a `tripletjax.app.data.datasets.Dataset`) with shuffled batches.

  Args:
    on_progress: called with a dict after the first evaluation and after every epoch.

  Returns:
    precision@1 of the test embeddings before and after, steps, training seconds (steps only,
    the first step's compilation apart), images/s, the losses of the first and last steps.
  """
  from tripletjax.app.data import samplers  # NumPy only.

  report = on_progress or (lambda progress: None)
  trainer = build(mesh, input_shape=dataset.train.images.shape[1:], seed=seed, **build_options)
  before = precision_at_1(embed_all(trainer, mesh, dataset.test.images, batch_size),
                          dataset.test.labels)
  report({"stage": "initial evaluation", "precision_at_1_before": before})
  sampler = samplers.ShuffledBatches(dataset.train.labels, batch_size, seed=seed)
  losses, step_seconds, compile_seconds, stopped_early = [], 0.0, None, False
  for epoch in range(epochs):
    for indices in sampler.epoch(epoch):
      images, labels = shard(mesh, dataset.train.images[indices],
                             dataset.train.labels[indices].astype(np.int32))
      start = time.perf_counter()
      loss = float(trainer.step(trainer.model, trainer.optimizer, images, labels))
      elapsed = time.perf_counter() - start
      if compile_seconds is None:
        compile_seconds = elapsed
      else:
        step_seconds += elapsed
      losses.append(loss)
      if max_seconds is not None and step_seconds > max_seconds:
        stopped_early = True
        break
    report({"stage": f"epoch {epoch + 1}", "steps": len(losses), "train_seconds": step_seconds,
            "first_step_with_compile_s": compile_seconds, "last_loss": losses[-1]})
    if stopped_early:
      break
  after = precision_at_1(embed_all(trainer, mesh, dataset.test.images, batch_size),
                         dataset.test.labels)
  timed_steps = max(len(losses) - 1, 0)
  return {
      "precision_at_1_before": before, "precision_at_1": after, "steps": len(losses),
      "epochs_requested": epochs, "stopped_early_after_s": max_seconds if stopped_early else None,
      "first_step_with_compile_s": compile_seconds, "train_seconds": step_seconds,
      "images_per_s": timed_steps * batch_size / step_seconds if step_seconds else None,
      "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
      "finite_losses": bool(np.all(np.isfinite(losses))),
  }
