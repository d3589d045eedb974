"""The training loop: `train_and_evaluate(config, workdir)` trains, evaluates and exports.

A batch goes from the task (`tasks`: labelled images through `data.datasets`, `data.samplers`
and `data.augmentations`, or triplets of image files through `data.pairs` and `data.images`;
deterministic given seed, epoch and step; each process reads and augments only the rows its
devices hold) -> `mesh.shard_process_rows` (each process puts its rows on its devices) ->
`train_step` (forward, the task's loss over the global batch, Optax update). Around the
steps: metrics (`metric_logging`), the mining-health monitor (`monitor`), evaluation
(`evaluation`), checkpoints (`checkpointing`, resumed at the exact step), stop signals
(`preemption`) and, at the end, the exports (`reports`).
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from tripletjax.app import errors
from tripletjax.app import tasks
from tripletjax.app.config import checks
from tripletjax.app.config import resume
from tripletjax.app.devices import mesh as mesh_lib
from tripletjax.app.loop import checkpointing
from tripletjax.app.loop import preemption
from tripletjax.app.loop import selection as selection_lib
from tripletjax.app.outputs import metric_logging
from tripletjax.app.outputs import monitor as monitor_lib
from tripletjax.app.step import train_step


def _to_floats(record: dict) -> dict:
  return {key: float(np.asarray(value)) for key, value in record.items()}


def _mean_records(records: list[dict]) -> dict:
  """Means of a window of step metrics (in float64, so a resumed window adds up the same)."""
  return {k: float(np.mean(np.asarray([r[k] for r in records], np.float64))) for k in records[0]}


# ----------------------------------------------------------------------------------------------
# The training loop.


def _restore(trainer, checkpoints, mesh):
  """Restores the newest usable checkpoint into `trainer`; its meta, or None for a fresh run."""
  replicated = mesh_lib.replicated(mesh)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      train_step.training_state(trainer))
  restored = checkpoints.restore_latest_usable(abstract, check=_check_meta)
  if restored is None:
    return None
  _, state, meta = restored
  train_step.set_training_state(trainer, state)
  return meta


def _check_meta(state, meta) -> None:
  del state
  missing = {"step", "epoch"} - set(meta)
  if missing:
    raise ValueError(f"its record lacks {sorted(missing)}")


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
  checks.check_config(config)
  os.makedirs(workdir, exist_ok=True)
  checkpoints = checkpointing.StepCheckpoints(os.path.join(workdir, "checkpoints"))
  try:
    # Before any work: a resume with a config that cannot continue this run is an error.
    changes = resume.check_resume(config, workdir) if checkpoints.steps() else {}
    with preemption.StopSignals() as stop_signals:
      return _run(config, workdir, changes, checkpoints, stop_signals)
  finally:
    checkpoints.close()


def _run(config, workdir, changes, checkpoints, stop_signals) -> dict:
  """The body of `train_and_evaluate`: the task (data, loss, evaluation), then `_train`."""
  mesh = mesh_lib.make_mesh()

  task = tasks.make_task(config)
  try:
    return _train(config, workdir, changes, checkpoints, stop_signals, mesh, task)
  finally:
    task.close()


def _train(config, workdir, changes, checkpoints, stop_signals, mesh, task) -> dict:
  """The loop over the task's batches, its evaluations, and the final exports."""
  is_main = jax.process_index() == 0
  steps_per_epoch = task.steps_per_epoch
  total_steps = steps_per_epoch * config.num_epochs
  trainer = train_step.build_trainer(config, task.input_shape, total_steps, mesh,
                                     loss_fn=task.loss_fn, mining_scope=task.mining_scope,
                                     single_device_loss_fn=task.single_device_loss_fn)
  meta = _restore(trainer, checkpoints, mesh)
  step = meta["step"] if meta else 0
  train_seconds = meta.get("train_seconds", 0.0) if meta else 0.0
  skipped_steps = meta.get("skipped_steps", 0) if meta else 0
  window = [dict(r) for r in meta.get("window", [])] if meta else []
  selection = selection_lib.ModelSelection(workdir, config.eval.select_by)
  selection.resume(meta.get("selection") if meta else None, step)
  if is_main:
    if meta:
      print(f"Resuming from the checkpoint of step {step} (epoch {step / steps_per_epoch:.2f}) "
            f"in {checkpoints.directory}.")
    if changes:
      print(f"Config changes on resume: {resume.describe_changes(changes)}.")
    resume.record(config, workdir, step, changes)
  # On resume, log lines written after the checkpoint by the interrupted run are dropped.
  keep_until_step = step if meta else None
  train_log = metric_logging.MetricLog(workdir, "metrics", keep_until_step, enabled=is_main)
  eval_log = metric_logging.MetricLog(workdir, "eval", keep_until_step, enabled=is_main)
  health_log = metric_logging.MetricLog(workdir, "health", keep_until_step, tensorboard=False,
                                        enabled=is_main)
  monitor = monitor_lib.MiningMonitor(config)
  if meta and os.path.exists(train_log.path):  # The monitor's state at the checkpoint.
    monitor.replay(metric_logging.read_metrics_jsonl(train_log.path))

  def save(step, epoch_done):
    if step in checkpoints.steps():
      return
    checkpoints.save(step, train_step.training_state(trainer), {
        "step": step, "epoch": epoch_done, "train_seconds": train_seconds,
        "skipped_steps": skipped_steps, "rng_counts": train_step.rng_counts(trainer.model),
        "window": [_to_floats(record) for record in jax.device_get(window)],
        "selection": selection.record()})

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

  progress = tqdm(total=total_steps, initial=step, desc=task.description, unit="step",
                  disable=not is_main or config.quiet, dynamic_ncols=True)
  trainer.model.train()
  evaluated = None  # What the last evaluation returned for the exports.
  rows = mesh_lib.process_rows(task.global_batch_size)  # This process's rows of each batch.
  try:
    for epoch in range(step // steps_per_epoch, config.num_epochs):
      # Dropout masks depend only on (seed, epoch, step in epoch): a resumed run repeats them.
      nnx.reseed(trainer.model, dropout=jax.random.fold_in(
          jax.random.key(config.seed + 1), epoch))
      done_in_epoch = step - epoch * steps_per_epoch
      if done_in_epoch and meta:
        train_step.set_rng_counts(trainer.model, meta["rng_counts"])
      epoch_start = time.time()
      for images, labels in task.batches(epoch, done_in_epoch, rows):
        if (signal_number := stop_signals.requested()) is not None:
          _stop_on_signal(signal_number, step, epoch, steps_per_epoch, save, check_finite,
                          checkpoints, progress)
        images, labels = mesh_lib.shard_process_rows(mesh, task.global_batch_size, images,
                                                     labels)
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
          for warning in monitor.update(step, record):
            if is_main:
              progress.write(f"warning: {warning}")
            health_log.write(step, warning.record())
        progress.update(1)
      check_finite()
      epoch_seconds = time.time() - epoch_start
      train_seconds += epoch_seconds  # Training steps only: no evaluation, no checkpointing.

      last_epoch = epoch + 1 == config.num_epochs
      if (epoch + 1) % config.eval_every_epochs == 0 or last_epoch:
        metrics, evaluated = task.evaluate(trainer, mesh, final=last_epoch)
        selection.update(epoch + 1, step, metrics, train_step.training_state(trainer))
        eval_log.write(step, {"epoch": epoch + 1, "epoch_seconds": epoch_seconds,
                              "train_seconds": train_seconds, **metrics})
        if is_main:
          progress.write(f"epoch {epoch + 1}: {task.eval_line(metrics)}  "
                         f"({epoch_seconds:.0f} s, {train_seconds:.0f} s of training so far)")
          task.after_evaluation(workdir, epoch + 1, evaluated)
      if (epoch + 1) % config.checkpoint_every_epochs == 0 or last_epoch:
        save(step, epoch + 1)
  finally:
    progress.close()
    train_log.close()
    eval_log.close()
    health_log.close()
    selection.close()
  checkpoints.wait()

  if evaluated is None:  # Resumed after the last epoch: evaluate the restored model.
    metrics, evaluated = task.evaluate(trainer, mesh, final=True)
  last_metrics = metrics
  if selection.needs_restore(step):  # The final evaluation and exports: the selected epoch's.
    selection.restore_into(trainer, mesh)
    metrics, evaluated = task.evaluate(trainer, mesh, final=True)
    selection.close()
  final = dict(metrics)
  final.update(selection.summary(last_metrics, config.num_epochs, step))
  final.update(loss=config.loss.name, dataset=config.data.name, epochs=config.num_epochs,
               steps=step, train_seconds=train_seconds, skipped_steps=skipped_steps,
               health_warnings=[warning.record() for warning in monitor.warnings])
  if is_main:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(final, f, indent=2)
    notes = monitor.summary()
    if final.get("unreadable_images"):
      notes += (f"\n\n{final['unreadable_images']} unreadable image files were skipped "
                "(unreadable_files in eval.json, when the task lists them).")
    task.write_exports(workdir, final, evaluated, notes=notes)
  return final


def summary_line(config: ml_collections.ConfigDict, final: dict) -> str:
  """The final metrics of a run in one line (what `main` prints)."""
  return tasks.TASKS[tasks.task_for(config.data.name)].build.summary_line(final)


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
