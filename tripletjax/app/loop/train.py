"""The training loop: `train_and_evaluate(config, workdir)` trains, evaluates and exports.

A batch goes from the task (`tasks`: labelled images through `data.datasets`, `data.samplers`
and `data.augmentations`, or triplets of image files through `data.pairs` and `data.images`;
deterministic given seed, epoch and step; each process reads and augments only the rows its
devices hold) -> `mesh.shard_process_rows` (each process puts its rows on its devices) ->
`train_step` (forward, the task's loss over the global batch, Optax update). Around the
steps: the logs and the mining-health monitor (`outputs.run_logs`), the guard against
non-finite steps (`run_state`), evaluation (`evaluation`), checkpoints of the model and of
where the run is (`checkpointing`, `run_state.RunState`: resumed at the exact step), stop
signals (`preemption`) and, at the end, the exports (`outputs.reports`). How the run computes
is decided once, at start (`step.plan`).
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import ml_collections
from flax import nnx

from tripletjax.app import tasks
from tripletjax.app.config import resume
from tripletjax.app.devices import mesh as mesh_lib
from tripletjax.app.loop import checkpointing
from tripletjax.app.loop import checks
from tripletjax.app.loop import preemption
from tripletjax.app.loop import selection as selection_lib
from tripletjax.app.loop.run_state import NonFiniteGuard, NonFiniteStep, RunState
from tripletjax.app.outputs.run_logs import RunLogs
from tripletjax.app.step import train_step

__all__ = ["NonFiniteStep", "summary_line", "train_and_evaluate"]


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
  """The body of `train_and_evaluate`: the plan, the task, the trainer, then the loop."""
  is_main = jax.process_index() == 0
  mesh = mesh_lib.make_mesh()
  plan = tasks.make_plan(config)  # How the run computes, decided once.
  if is_main:
    print(plan.describe(), flush=True)
  task = tasks.make_task(config, plan)
  try:
    trainer = train_step.build_trainer(
        config, task.input_shape, task.steps_per_epoch * config.num_epochs, mesh, plan,
        loss_fn=task.loss_fn, single_device_loss_fn=task.single_device_loss_fn)
    state = RunState.from_meta(_restore(trainer, checkpoints, mesh))
    if is_main:
      if state.resumed:
        print(f"Resuming from the checkpoint of step {state.step} (epoch "
              f"{state.step / task.steps_per_epoch:.2f}) in {checkpoints.directory}.")
      if changes:
        print(f"Config changes on resume: {resume.describe_changes(changes)}.")
      resume.record(config, workdir, state.step, changes, plan.record())
    return _Loop(config, workdir, checkpoints, stop_signals, mesh, task, trainer, state).run()
  finally:
    task.close()


def _restore(trainer, checkpoints, mesh) -> dict | None:
  """Restores the newest usable checkpoint into `trainer`; its meta, or None for a fresh run."""
  abstract = train_step.abstract_training_state(trainer, mesh)
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


class _Loop:
  """The loop over the task's batches, its evaluations, checkpoints and final exports."""

  def __init__(self, config, workdir, checkpoints, stop_signals, mesh, task, trainer,
               state: RunState):
    self.config, self.workdir, self.checkpoints = config, workdir, checkpoints
    self.stop_signals, self.mesh, self.task, self.trainer = stop_signals, mesh, task, trainer
    self.state = state
    self.is_main = jax.process_index() == 0
    self.steps_per_epoch = task.steps_per_epoch
    self.total_steps = task.steps_per_epoch * config.num_epochs
    self.guard = NonFiniteGuard(config.optimizer, checkpoints, task.steps_per_epoch, state)
    self.logs = RunLogs(config, workdir, state.step, state.resumed, self.total_steps,
                        task.description)
    self.rows = mesh_lib.process_rows(task.global_batch_size)  # This process's rows.
    self.metrics, self.evaluated = None, None  # What the last evaluation returned.
    self.selection = selection_lib.ModelSelection(workdir, config.eval.select_by)
    self.selection.resume(state.selection, state.step)

  def run(self) -> dict:
    """Trains the epochs left, evaluating and checkpointing as configured; the final metrics."""
    config = self.config
    self.trainer.model.train()
    try:
      for epoch in range(self.state.step // self.steps_per_epoch, config.num_epochs):
        epoch_seconds = self._train_epoch(epoch)
        last_epoch = epoch + 1 == config.num_epochs
        if (epoch + 1) % config.eval_every_epochs == 0 or last_epoch:
          self._evaluate(epoch + 1, epoch_seconds, final=last_epoch)
        if (epoch + 1) % config.checkpoint_every_epochs == 0 or last_epoch:
          self._save(epoch + 1)
    finally:
      self.logs.close()
      self.selection.close()
    self.checkpoints.wait()
    return self._finish()

  def _train_epoch(self, epoch: int) -> float:
    """The steps of `epoch` left to do; their seconds."""
    state, trainer = self.state, self.trainer
    # Dropout masks depend only on (seed, epoch, step in epoch): a resumed run repeats them.
    nnx.reseed(trainer.model, dropout=jax.random.fold_in(
        jax.random.key(self.config.seed + 1), epoch))
    done_in_epoch = state.step - epoch * self.steps_per_epoch
    if done_in_epoch and state.resumed:
      train_step.set_rng_counts(trainer.model, state.rng_counts)
    start = time.time()
    for images, labels in self.task.batches(epoch, done_in_epoch, self.rows):
      if (signal_number := self.stop_signals.requested()) is not None:
        self._stop(signal_number, epoch)
      images, labels = mesh_lib.shard_process_rows(self.mesh, self.task.global_batch_size,
                                                   images, labels)
      metrics = trainer.train_step(trainer.model, trainer.optimizer, images, labels)
      state.step += 1
      self.guard.add(metrics["nonfinite"])
      state.window.append(metrics)
      if state.step % self.config.log_every_steps == 0 or state.step == self.total_steps:
        self.guard.check(state)
        self.logs.steps(state.step, epoch + 1, state.skipped_steps, state.take_window())
      self.logs.progress.update(1)
    self.guard.check(state)
    seconds = time.time() - start
    state.train_seconds += seconds  # Training steps only: no evaluation, no checkpointing.
    return seconds

  def _evaluate(self, epoch: int, epoch_seconds: float, final: bool) -> None:
    self.metrics, self.evaluated = self.task.evaluate(self.trainer, self.mesh, final=final)
    self.selection.update(epoch, self.state.step, self.metrics,
                          train_step.training_state(self.trainer))
    seconds = self.state.train_seconds
    self.logs.evaluation(
        self.state.step, {"epoch": epoch, "epoch_seconds": epoch_seconds,
                          "train_seconds": seconds, **self.metrics},
        f"epoch {epoch}: {self.task.eval_line(self.metrics)}  ({epoch_seconds:.0f} s, "
        f"{seconds:.0f} s of training so far)")
    if self.is_main:
      self.task.after_evaluation(self.workdir, epoch, self.evaluated)

  def _save(self, epochs_done: float) -> None:
    """A checkpoint of the model, the optimizer and the run's state at this step."""
    step = self.state.step
    if step in self.checkpoints.steps():
      return
    self.state.rng_counts = train_step.rng_counts(self.trainer.model)
    self.state.selection = self.selection.record()
    self.checkpoints.save(step, train_step.training_state(self.trainer),
                          self.state.meta(epochs_done))

  def _stop(self, signal_number: int, epoch: int) -> None:
    """Writes a checkpoint of the exact step (mid-epoch too) and raises `Interrupted`."""
    self.guard.check(self.state)  # Never checkpoint a state that went through a bad step.
    step = self.state.step
    self._save(step / self.steps_per_epoch)
    self.checkpoints.wait()
    self.logs.progress.close()
    name = signal.Signals(signal_number).name
    raise preemption.Interrupted(
        f"{name} received: stopped after step {step} (epoch {epoch + 1}), checkpoint written "
        f"to {self.checkpoints.path(step)}; run the same command again to resume from it",
        signal_number)

  def _finish(self) -> dict:
    """The final metrics: written to eval.json, with the exports."""
    if self.evaluated is None:  # Resumed after the last epoch: evaluate the restored model.
      self.metrics, self.evaluated = self.task.evaluate(self.trainer, self.mesh, final=True)
    config, state, monitor = self.config, self.state, self.logs.monitor
    last_metrics = self.metrics
    if self.selection.needs_restore(state.step):  # The selected epoch's evaluation and exports.
      self.selection.restore_into(self.trainer, self.mesh)
      self.metrics, self.evaluated = self.task.evaluate(self.trainer, self.mesh, final=True)
      self.selection.close()
    final = dict(self.metrics)
    final.update(self.selection.summary(last_metrics, config.num_epochs, state.step))
    final.update(loss=config.loss.name, dataset=config.data.name, epochs=config.num_epochs,
                 steps=state.step, train_seconds=state.train_seconds,
                 skipped_steps=state.skipped_steps,
                 health_warnings=[warning.record() for warning in monitor.warnings],
                 execution_plan=self.trainer.plan.record())
    if self.is_main:
      with open(os.path.join(self.workdir, "eval.json"), "w") as f:
        json.dump(final, f, indent=2)
      notes = monitor.summary()
      if final.get("unreadable_images"):
        notes += (f"\n\n{final['unreadable_images']} unreadable image files were skipped "
                  "(unreadable_files in eval.json, when the task lists them).")
      self.task.write_exports(self.workdir, final, self.evaluated, notes=notes)
    return final


def summary_line(config: ml_collections.ConfigDict, final: dict) -> str:
  """The final metrics of a run in one line (what `main` prints)."""
  return tasks.TASKS[tasks.task_for(config.data.name)].build.summary_line(final)
