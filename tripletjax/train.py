"""Training and evaluation of an embedding model with a mined triplet (or contrastive) loss.

The path of a batch: `datasets.load_dataset` (images on the host) -> `samplers` (indices of a
global batch, deterministic given seed and epoch) -> `augmentations` (optional flips and
shifts, deterministic too) -> `shard_batch` (each process puts its slice
on its devices; the global batch is one array sharded over the mesh's "data" axis) ->
`train_step` (model forward, loss mined over the *global* batch, Optax update) -> metrics,
evaluation, checkpoints and exports.

The train step is one jit-compiled pure function of (state, images, labels). The state is
replicated and the batch sharded over every device, so the same code runs on one CPU, on all
GPUs of a machine, and on several hosts after `jax.distributed.initialize()`: XLA gathers the
embeddings of all devices before the loss, so negatives come from the whole global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from tripletjax import augmentations
from tripletjax import checkpointing
from tripletjax import datasets
from tripletjax import errors
from tripletjax import exports
from tripletjax import losses
from tripletjax import metric_logging
from tripletjax import models
from tripletjax import preemption
from tripletjax import retrieval
from tripletjax import run_config
from tripletjax import samplers
from tripletjax import validation

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


# ----------------------------------------------------------------------------------------------
# Building blocks.


def check_config(config: ml_collections.ConfigDict) -> None:
  """Rejects every value that is not allowed, before any work, with one line naming it.

  Raises:
    errors.ConfigError (a ValueError): see `config_checks.check_config`.
  """
  from tripletjax import config_checks
  config_checks.check_config(config, optimizers=OPTIMIZERS, schedules=SCHEDULES,
                             num_devices=jax.device_count())


def make_loss_fn(loss_config: ml_collections.ConfigDict) -> Callable:
  """(labels, embeddings) -> (loss, stats) for the configured loss."""
  options = {"margin": loss_config.margin, "metric": loss_config.metric}
  if loss_config.name == "hard":
    options["soft"] = loss_config.soft
  if loss_config.name in losses.SORTING_LOSSES and jax.device_count() > 1:
    # The host (NumPy) miners run through a callback, which deadlocks XLA:CPU's collectives in a
    # program sharded over several CPU devices; mine with lax.sort there (and on accelerators).
    options["mining_backend"] = "xla"
  return functools.partial(losses.MINED_LOSSES[loss_config.name], return_stats=True, **options)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int):
  """The Optax optimizer and its learning-rate schedule."""
  opt = config.optimizer
  if opt.schedule == "constant":
    schedule = optax.constant_schedule(opt.learning_rate)
  elif opt.schedule == "cosine":
    schedule = optax.cosine_decay_schedule(opt.learning_rate, max(total_steps, 1))
  else:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, opt.learning_rate, min(opt.warmup_steps, max(total_steps - 1, 0)),
        max(total_steps, 1))
  if opt.name == "adam":
    tx = optax.adam(schedule)
  elif opt.name == "adamw":
    tx = optax.adamw(schedule, weight_decay=opt.weight_decay)
  else:
    tx = optax.sgd(schedule, momentum=opt.momentum)
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, schedule


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis "data"."""
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def shard_batch(mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
  """Places arrays of a global batch (identical on every process) sharded over the "data" axis.

  Each process contributes only the rows its devices hold, so no host ever sends data to
  another host's devices.

  Args:
    mesh: the mesh of `make_mesh`.
    *arrays: [B, ...] arrays with the same B (e.g. images and labels).

  Returns:
    The sharded arrays, in the same order.
  """
  sharding = NamedSharding(mesh, P("data"))
  global_batch = arrays[0].shape[0]
  if global_batch % jax.device_count():
    raise ValueError(f"The batch size {global_batch} must be divisible by the number of devices "
                     f"({jax.device_count()}).")
  per_process = global_batch // jax.process_count()
  rows = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
  put = lambda x: jax.make_array_from_process_local_data(sharding, x[rows], x.shape)
  return tuple(put(x) for x in arrays)


def model_options(model_config: ml_collections.ConfigDict) -> dict:
  """The model options that are set (not None) in the config, as keyword arguments."""
  options = {"width": model_config.width, "dropout_rate": model_config.dropout_rate,
             "batch_norm": model_config.batch_norm}
  return {name: value for name, value in options.items() if value is not None}


def apply_in_chunks(model, images: jax.Array, num_chunks: int):
  """`model(images)` computed on `num_chunks` chunks of every device's rows, one at a time.

  The batch is sharded over the mesh's devices, rows [d * B/D, (d + 1) * B/D) on device d; chunk
  c takes the c-th slice of every device's rows, so no row changes device. The outputs are put
  back in the original row order. Why: XLA:CPU runs a convolution over fewer images faster per
  image (they fit the caches): with 4 chunks the seed-002 CNN's train step at batch 256 takes
  147 ms instead of 202 ms on 2 cores. With BatchNorm, statistics become per chunk.

  Args:
    model: called on [N, H, W, C] images, returns a pytree of [N, ...] arrays.
    images: [B, H, W, C], B divisible by devices x `num_chunks`.
    num_chunks: K >= 1.
  """
  if num_chunks == 1:
    return model(images)
  num_devices = jax.device_count()
  batch = images.shape[0]
  rows = batch // (num_devices * num_chunks)
  grouped = images.reshape(num_devices, num_chunks, rows, *images.shape[1:])
  outputs = [model(grouped[:, chunk].reshape(num_devices * rows, *images.shape[1:]))
             for chunk in range(num_chunks)]
  return jax.tree.map(
      lambda *parts: jnp.stack([p.reshape(num_devices, rows, *p.shape[1:]) for p in parts],
                               axis=1).reshape(batch, *parts[0].shape[1:]),
      *outputs)


@dataclasses.dataclass
class Trainer:
  """The model, its optimizer and the compiled functions that use them."""
  model: nnx.Module
  optimizer: nnx.Optimizer
  train_step: Callable
  embed_fn: Callable
  forward_chunks: int = 1


def build_trainer(config, input_shape, total_steps, mesh) -> Trainer:
  rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
  model = models.create_model(config.model.name, input_shape=input_shape,
                              embedding_dim=config.model.embedding_dim, rngs=rngs,
                              **model_options(config.model))
  tx, schedule = make_optimizer(config, total_steps)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  loss_fn = make_loss_fn(config.loss)
  replicated = NamedSharding(mesh, P())
  # The state lives replicated on every device of the mesh, like a restored checkpoint.
  state = nnx.state((model, optimizer))
  nnx.update((model, optimizer), jax.device_put(state, replicated))
  num_chunks = config.model.forward_chunks

  @nnx.jit
  def train_step(model, optimizer, images, labels):
    # A copy of the values (nnx.state's Variables would follow the update).
    before = jax.tree.map(jnp.asarray, nnx.state((model, optimizer), nnx.Not(nnx.RngState)))

    def objective(model):
      output = apply_in_chunks(model, images, num_chunks)
      # Mining needs every embedding of the global batch: gather them (B x E, cheap) and mine
      # on every device, rather than leaving XLA to move [B, B] intermediates around.
      embeddings, all_labels = jax.lax.with_sharding_constraint(
          (output.embeddings, labels), replicated)
      loss, stats = loss_fn(all_labels, embeddings)
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
    embeddings = apply_in_chunks(model, images, num_chunks).embeddings
    return jax.lax.with_sharding_constraint(embeddings, replicated)

  return Trainer(model, optimizer, train_step, embed_fn, num_chunks)


def embed(trainer: Trainer, mesh, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
  """[N, E] embeddings of `images` in evaluation mode (dropout off, BatchNorm statistics).

  Every chunk is padded to `batch_size` (rounded up to a multiple of devices x forward chunks,
  so one compilation serves every chunk) and sharded over the mesh like a training batch.
  """
  multiple = jax.device_count() * trainer.forward_chunks
  batch_size = -(-batch_size // multiple) * multiple
  trainer.model.eval()
  outputs = []
  for start in range(0, images.shape[0], batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
    (sharded,) = shard_batch(mesh, padded)
    outputs.append(np.asarray(trainer.embed_fn(trainer.model, sharded))[:len(chunk)])
  trainer.model.train()
  return np.concatenate(outputs)


def checkpoint_state(trainer: Trainer):
  """What a checkpoint holds: parameters, BatchNorm statistics, optimizer state (no RNGs)."""
  return nnx.to_pure_dict(nnx.state((trainer.model, trainer.optimizer), nnx.Not(nnx.RngState)))


def restore_state(trainer: Trainer, pure_state) -> None:
  state = nnx.state((trainer.model, trainer.optimizer), nnx.Not(nnx.RngState))
  nnx.replace_by_pure_dict(state, pure_state)
  nnx.update((trainer.model, trainer.optimizer), state)


def _to_floats(record: dict) -> dict:
  return {key: float(np.asarray(value)) for key, value in record.items()}


def _mean_records(records: list[dict]) -> dict:
  """Means of a window of step metrics (in float64, so a resumed window adds up the same)."""
  return {k: float(np.mean(np.asarray([r[k] for r in records], np.float64))) for k in records[0]}


# ----------------------------------------------------------------------------------------------
# The training loop.


def evaluate(trainer, mesh, dataset, config, *, with_train: bool) -> tuple[dict, np.ndarray]:
  """Retrieval metrics of the test split (leave-one-out), plus test-vs-train k-NN accuracy.

  Returns:
    `(metrics, test_embeddings)`.
  """
  test_embeddings = embed(trainer, mesh, dataset.test.images)
  train_embeddings = train_labels = None
  if with_train:
    train_embeddings = embed(trainer, mesh, dataset.train.images)
    train_labels = dataset.train.labels
  metrics = retrieval.evaluate_embeddings(
      test_embeddings, dataset.test.labels, train_embeddings, train_labels, seed=config.seed)
  return metrics, test_embeddings


def _restore(trainer, checkpoints, mesh):
  """Restores the newest usable checkpoint into `trainer`; its meta, or None for a fresh run."""
  replicated = NamedSharding(mesh, P())
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      checkpoint_state(trainer))
  restored = checkpoints.restore_latest_usable(abstract, check=_check_meta)
  if restored is None:
    return None
  _, state, meta = restored
  restore_state(trainer, state)
  return meta


def _check_meta(state, meta) -> None:
  del state
  missing = {"step", "epoch"} - set(meta)
  if missing:
    raise ValueError(f"its record lacks {sorted(missing)}")


def _rng_counts(model) -> dict:
  """The dropout streams' counters (JSON), so a mid-epoch resume draws the same masks."""
  return jax.tree.map(int, nnx.to_pure_dict(nnx.state(model, nnx.RngCount)))


def _set_rng_counts(model, counts: dict) -> None:
  state = nnx.state(model, nnx.RngCount)
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda c: jnp.asarray(c, jnp.uint32), counts))
  nnx.update(model, state)


class NonFiniteStep(errors.UserError):
  """A training step gave a non-finite loss or gradient (and optimizer.skip_nonfinite is off)."""


def _first_nonfinite(flags: list, first_step: int) -> int | None:
  """The step number of the first set flag, flags[i] belonging to step first_step + i."""
  values = np.asarray(jax.device_get(flags)) if flags else np.zeros(0)
  hits = np.flatnonzero(values)
  return first_step + int(hits[0]) if hits.size else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates and exports into `workdir`; resumes from its last checkpoint.

  Returns:
    The final evaluation metrics (also written to `workdir/eval.json`).
  """
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  checkpoints = checkpointing.StepCheckpoints(os.path.join(workdir, "checkpoints"))
  try:
    # Before any work: a resume with a config that cannot continue this run is an error.
    changes = run_config.check_resume(config, workdir) if checkpoints.steps() else {}
    with preemption.StopSignals() as stop_signals:
      return _run(config, workdir, changes, checkpoints, stop_signals)
  finally:
    checkpoints.close()


def _run(config, workdir, changes, checkpoints, stop_signals) -> dict:
  """The body of `train_and_evaluate`: data, trainer, resume, the loop, evaluation, exports."""
  is_main = jax.process_index() == 0
  mesh = make_mesh()

  dataset = datasets.load_dataset(config.data.name, config.data.data_dir, seed=config.seed,
                                  max_train=config.data.max_train,
                                  max_test=config.data.max_test)
  sampler = samplers.make_sampler(
      config.batch.sampler, dataset.train.labels, batch_size=config.batch.batch_size,
      classes_per_batch=config.batch.classes_per_batch,
      samples_per_class=config.batch.samples_per_class, seed=config.seed)
  steps_per_epoch = sampler.steps_per_epoch
  total_steps = steps_per_epoch * config.num_epochs
  trainer = build_trainer(config, dataset.train.images.shape[1:], total_steps, mesh)
  meta = _restore(trainer, checkpoints, mesh)
  step = meta["step"] if meta else 0
  train_seconds = meta.get("train_seconds", 0.0) if meta else 0.0
  skipped_steps = meta.get("skipped_steps", 0) if meta else 0
  window = [dict(r) for r in meta.get("window", [])] if meta else []
  if is_main:
    if meta:
      print(f"Resuming from the checkpoint of step {step} (epoch {step / steps_per_epoch:.2f}) "
            f"in {checkpoints.directory}.")
    if changes:
      print(f"Config changes on resume: {run_config.describe_changes(changes)}.")
    run_config.record(config, workdir, step, changes)
  # On resume, log lines written after the checkpoint by the interrupted run are dropped.
  keep_until_step = step if meta else None
  train_log = metric_logging.MetricLog(workdir, "metrics", keep_until_step, enabled=is_main)
  eval_log = metric_logging.MetricLog(workdir, "eval", keep_until_step, enabled=is_main)

  def save(step, epoch_done):
    if step in checkpoints.steps():
      return
    checkpoints.save(step, checkpoint_state(trainer), {
        "step": step, "epoch": epoch_done, "train_seconds": train_seconds,
        "skipped_steps": skipped_steps, "rng_counts": _rng_counts(trainer.model),
        "window": [_to_floats(record) for record in jax.device_get(window)]})

  pending_flags, pending_from = [], step + 1  # Non-finite flags not yet looked at.

  def check_finite():
    """Stops at the first non-finite step (unless skipping); counts skipped steps."""
    nonlocal pending_flags, pending_from, skipped_steps
    bad = _first_nonfinite(pending_flags, pending_from)
    if bad is not None and not config.optimizer.skip_nonfinite:
      good = checkpoints.latest_step()
      where = (f"the last good checkpoint is {checkpoints.path(good)} (step {good})"
               if good is not None else "no checkpoint was written yet")
      raise NonFiniteStep(
          f"training step {bad} (epoch {(bad - 1) // steps_per_epoch + 1}) gave a non-finite "
          f"loss or gradient; stopped, {where}",
          hint=f"likely causes: a learning rate too high (config.optimizer.learning_rate="
               f"{config.optimizer.learning_rate}), non-finite values in the data; lower the "
               "learning rate or set config.optimizer.grad_clip_norm, or set "
               "config.optimizer.skip_nonfinite=True to skip such steps")
    skipped_steps += int(np.sum(jax.device_get(pending_flags))) if pending_flags else 0
    pending_flags, pending_from = [], step + 1

  progress = tqdm(total=total_steps, initial=step, desc=f"{config.loss.name} on "
                  f"{config.data.name}", unit="step", disable=not is_main or config.quiet,
                  dynamic_ncols=True)
  trainer.model.train()
  test_embeddings = None
  try:
    for epoch in range(step // steps_per_epoch, config.num_epochs):
      # Dropout masks depend only on (seed, epoch, step in epoch): a resumed run repeats them.
      nnx.reseed(trainer.model, dropout=jax.random.fold_in(
          jax.random.key(config.seed + 1), epoch))
      done_in_epoch = step - epoch * steps_per_epoch
      if done_in_epoch and meta:
        _set_rng_counts(trainer.model, meta["rng_counts"])
      epoch_start = time.time()
      for indices in itertools.islice(sampler.epoch(epoch), done_in_epoch, None):
        if (signal_number := stop_signals.requested()) is not None:
          _stop_on_signal(signal_number, step, epoch, steps_per_epoch, save, check_finite,
                          checkpoints, progress)
        images = augmentations.augment(dataset.train.images[indices], config.data.augment,
                                       seed=config.seed, epoch=epoch,
                                       step=step - epoch * steps_per_epoch,
                                       max_shift=config.data.max_shift)
        images, labels = shard_batch(mesh, images,
                                     dataset.train.labels[indices].astype(np.int32))
        metrics = trainer.train_step(trainer.model, trainer.optimizer, images, labels)
        step += 1
        pending_flags.append(metrics["nonfinite"])
        window.append(metrics)
        if step % config.log_every_steps == 0 or step == total_steps:
          check_finite()
          record = _mean_records(jax.device_get(window))
          window = []
          train_log.write(step, {"epoch": epoch + 1, "skipped_steps": skipped_steps, **record})
          progress.set_postfix(loss=f"{record['loss']:.4f}",
                               active=f"{record['fraction_active']:.3f}")
        progress.update(1)
      check_finite()
      epoch_seconds = time.time() - epoch_start
      train_seconds += epoch_seconds  # Training steps only: no evaluation, no checkpointing.

      last_epoch = epoch + 1 == config.num_epochs
      if (epoch + 1) % config.eval_every_epochs == 0 or last_epoch:
        metrics, test_embeddings = evaluate(trainer, mesh, dataset, config,
                                            with_train=last_epoch)
        eval_log.write(step, {"epoch": epoch + 1, "epoch_seconds": epoch_seconds,
                              "train_seconds": train_seconds, **metrics})
        progress.write(f"epoch {epoch + 1}: precision@1 {metrics['precision_at_1']:.4f}  "
                       f"MAP@R {metrics['map_at_r']:.4f}  ({epoch_seconds:.0f} s, "
                       f"{train_seconds:.0f} s of training so far)")
        if is_main and config.export.pca_every_eval:
          exports.plot_pca(test_embeddings, dataset.test.labels,
                           os.path.join(workdir, "plots", f"pca_2d_epoch{epoch + 1:03d}.png"),
                           os.path.join(workdir, "plots", f"pca_3d_epoch{epoch + 1:03d}.png"),
                           title=f"{config.loss.name}, epoch {epoch + 1}",
                           class_names=dataset.class_names)
      if (epoch + 1) % config.checkpoint_every_epochs == 0 or last_epoch:
        save(step, epoch + 1)
  finally:
    progress.close()
    train_log.close()
    eval_log.close()
  checkpoints.wait()

  if test_embeddings is None:  # Resumed after the last epoch: evaluate the restored model.
    metrics, test_embeddings = evaluate(trainer, mesh, dataset, config, with_train=True)
  final = dict(metrics)
  final.update(loss=config.loss.name, dataset=config.data.name, epochs=config.num_epochs,
               steps=step, train_seconds=train_seconds, skipped_steps=skipped_steps)
  if is_main:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(final, f, indent=2)
    write_exports(workdir, config, dataset, test_embeddings, final)
  return final


def _stop_on_signal(signal_number, step, epoch, steps_per_epoch, save, check_finite,
                    checkpoints, progress):
  """Writes a checkpoint of the exact `step` (mid-epoch too) and raises `Interrupted`."""
  check_finite()  # Never checkpoint a state that went through a non-finite step.
  save(step, step / steps_per_epoch)
  checkpoints.wait()
  progress.close()
  name = signal.Signals(signal_number).name
  raise preemption.Interrupted(
      f"{name} received: stopped after step {step} (epoch {epoch + 1}), checkpoint written to "
      f"{checkpoints.path(step)}; run the same command again to resume from it", signal_number)


def _same_dataset(run_dir: str, dataset_name: str) -> bool:
  """Whether the run in `run_dir` trained on `dataset_name` (per its config.json)."""
  try:
    with open(os.path.join(run_dir, "config.json")) as f:
      return json.load(f)["data"]["name"] == dataset_name
  except (OSError, ValueError, KeyError):
    return False


def write_exports(workdir, config, dataset, test_embeddings, final_metrics) -> None:
  """Projector files, plots and the report: everything a researcher looks at."""
  limit = config.export.projector_max_points
  exports.write_projector_files(
      os.path.join(workdir, "projector"), test_embeddings[:limit], dataset.test.labels[:limit],
      images=dataset.test.images[:limit], class_names=dataset.class_names)
  # Curves of this run and of its siblings (same parent directory): a semi-hard run and a
  # batch-hard run side by side is one override and one report away.
  runs = {}
  parent = os.path.dirname(os.path.abspath(workdir))
  for name in sorted(os.listdir(parent)):
    path = os.path.join(parent, name, "metrics.jsonl")
    if _same_dataset(os.path.join(parent, name), config.data.name) and os.path.exists(path):
      if records := exports.read_metrics_jsonl(path):
        runs[name] = records
  plots = os.path.abspath(os.path.join(workdir, "plots"))
  figures = [os.path.join(plots, "training_curves.png"), os.path.join(plots, "eval_history.png")]
  exports.plot_training_curves(runs, figures[0])
  exports.plot_eval_history(exports.read_metrics_jsonl(os.path.join(workdir, "eval.jsonl")),
                            figures[1])
  for prefix in ("pca_2d_", "pca_3d_"):  # The last evaluation's PCA plots.
    latest = sorted(f for f in os.listdir(plots) if f.startswith(prefix))[-1:]
    figures += [os.path.join(plots, f) for f in latest]
  exports.write_report(workdir, config_text=str(config), eval_metrics=final_metrics,
                       figures=figures, runs=list(runs))
