"""Runs that are stopped and started again: preemption, kill -9, other device counts, a changed
checkpoint, a run that diverged.

The in-process tests stop a run at a chosen step (deterministic); the subprocess tests send real
signals to `python -m tripletjax.main` on several CPU devices. Unreadable checkpoints:
`tests/app/loop/test_checkpointing.py`; a changed config: `tests/app/config/test_resume.py`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.app.runs import main_args, read_jsonl, run_digits, tiny_config
from tests.subprocesses import REPO
from tripletjax.app.devices import mesh as mesh_lib
from tripletjax.app.loop import checkpointing
from tripletjax.app.loop import preemption
from tripletjax.app.loop import train
from tripletjax.app.step import train_step


TIMING_KEYS = {"train_seconds", "epoch_seconds"}


def without_timings(record: dict) -> dict:
  return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def assert_same_run(expected_dir, got_dir) -> None:
  """Same curve, same evaluations, same final embeddings (bit for bit)."""
  expected_dir, got_dir = str(expected_dir), str(got_dir)
  assert read_jsonl(os.path.join(got_dir, "metrics.jsonl")) == read_jsonl(
      os.path.join(expected_dir, "metrics.jsonl"))
  assert [without_timings(r) for r in read_jsonl(os.path.join(got_dir, "eval.jsonl"))] == [
      without_timings(r) for r in read_jsonl(os.path.join(expected_dir, "eval.jsonl"))]
  with open(os.path.join(expected_dir, "eval.json")) as f:
    expected = without_timings(json.load(f))
  with open(os.path.join(got_dir, "eval.json")) as f:
    assert without_timings(json.load(f)) == expected
  with open(os.path.join(expected_dir, "projector", "vecs.tsv")) as f:
    expected_vectors = f.read()
  with open(os.path.join(got_dir, "projector", "vecs.tsv")) as f:
    assert f.read() == expected_vectors


def count_train_steps(monkeypatch) -> list:
  """Patches the trainer so that every executed train step appends to the returned list."""
  executed = []
  build = train_step.build_trainer

  def counting_build_trainer(*args, **kwargs):
    trainer = build(*args, **kwargs)
    step_fn = trainer.train_step

    def counted(*step_args):
      executed.append(1)
      return step_fn(*step_args)
    trainer.train_step = counted
    return trainer
  monkeypatch.setattr(train_step, "build_trainer", counting_build_trainer)
  return executed


def stop_after(monkeypatch, num_checks: int, signal_number=signal.SIGTERM) -> None:
  """Makes the run see a stop signal at its `num_checks`-th check (one check per step)."""
  calls = []

  def requested(self):
    calls.append(1)
    return signal_number if len(calls) > num_checks else None
  monkeypatch.setattr(preemption.StopSignals, "requested", requested)


# A config whose epochs end between the logging points, with dropout and a class-balanced
# sampler: a resume must restore the dropout streams, the sampler's position inside the epoch
# and the pending metric window to give the same curve.
def balanced_config(**overrides):
  return tiny_config(num_epochs=3, log_every_steps=4, **{
      "batch.sampler": "balanced", "batch.classes_per_batch": 8, "batch.samples_per_class": 8,
      "export.pca_every_eval": False, **overrides})


@pytest.mark.slow
def test_resume_continues_the_same_curve(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Relative workdirs, as on the command line.
  tmp_path = tmp_path.relative_to(tmp_path)
  config = tiny_config(num_epochs=3)
  full = tmp_path / "full"
  train.train_and_evaluate(config, str(full))

  # Interrupted after one epoch: same config with one epoch, then the full run in the same
  # workdir resumes from its checkpoint. A crashed run also leaves log lines past the last
  # checkpoint (and maybe a truncated one): they must be dropped on resume.
  partial = tmp_path / "partial"
  train.train_and_evaluate(tiny_config(num_epochs=1), str(partial))
  with open(partial / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 999, "loss": 123.0}) + "\n" + '{"step": 1000, "lo')
  resumed = train.train_and_evaluate(config, str(partial))

  expected = read_jsonl(full / "metrics.jsonl")
  got = read_jsonl(partial / "metrics.jsonl")
  assert [r["step"] for r in got] == [r["step"] for r in expected]
  np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in expected],
                             rtol=1e-5)
  final = json.loads((full / "eval.json").read_text())
  assert resumed["precision_at_1"] == pytest.approx(final["precision_at_1"], abs=1e-6)


@pytest.mark.slow
def test_preempted_mid_epoch_resumes_with_the_same_curve(tmp_path, monkeypatch):
  config = balanced_config()
  steps_per_epoch = 400 // 64
  total = steps_per_epoch * config.num_epochs
  train.train_and_evaluate(config, str(tmp_path / "full"))

  stop_after(monkeypatch, 13)  # Step 13 of 18: inside the third epoch, between log points.
  with pytest.raises(preemption.Interrupted, match="SIGTERM.*after step 13") as stopped:
    train.train_and_evaluate(config, str(tmp_path / "preempted"))
  assert stopped.value.exit_status == 128 + signal.SIGTERM
  assert os.path.isdir(tmp_path / "preempted" / "checkpoints" / "13")
  monkeypatch.undo()

  executed = count_train_steps(monkeypatch)
  train.train_and_evaluate(config, str(tmp_path / "preempted"))
  # Only the remaining steps ran: the checkpoint, not a fresh start, gave the same curve.
  assert len(executed) == total - 13
  assert_same_run(tmp_path / "full", tmp_path / "preempted")


@pytest.mark.slow
def test_a_changed_checkpoint_changes_the_resumed_run(tmp_path, monkeypatch):
  # The resumed run must start from what the checkpoint holds: zeroing its parameters must
  # change the result (a run that ignored its checkpoint would not notice).
  config = tiny_config(num_epochs=2, **{"export.pca_every_eval": False})
  train.train_and_evaluate(config, str(tmp_path / "full"))
  stop_after(monkeypatch, 7)
  with pytest.raises(preemption.Interrupted):
    train.train_and_evaluate(config, str(tmp_path / "zeroed"))
  monkeypatch.undo()

  directory = str(tmp_path / "zeroed" / "checkpoints")
  trainer = train_step.build_trainer(config, (8, 8, 1), 12, mesh_lib.make_mesh())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          train_step.training_state(trainer))
  checkpoints = checkpointing.StepCheckpoints(directory)
  state, meta = checkpoints.restore(7, abstract)
  checkpoints.close()
  shutil.rmtree(os.path.join(directory, "7"))
  checkpoints = checkpointing.StepCheckpoints(directory)
  checkpoints.save(7, jax.tree.map(np.zeros_like, state), meta)
  checkpoints.close()

  resumed = train.train_and_evaluate(config, str(tmp_path / "zeroed"))
  with open(tmp_path / "full" / "eval.json") as f:
    full = json.load(f)
  assert resumed["map_at_r"] != full["map_at_r"]


# ----------------------------------------------------------------------------------------------
# Real signals to `python -m tripletjax.main` on several CPU devices.


def start_and_signal(env, workdir, devices: int, signal_number: int, *, when) -> subprocess.Popen:
  """Starts main, sends `signal_number` as soon as `when(workdir)` holds, waits for the end."""
  process = subprocess.Popen([sys.executable, *main_args(workdir, devices)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  deadline = time.time() + 240
  while not when(str(workdir)) and process.poll() is None and time.time() < deadline:
    time.sleep(0.002)
  process.send_signal(signal_number)
  process.stdout_text, process.stderr_text = process.communicate(timeout=240)
  return process


def logged_steps(workdir: str) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  return len(read_jsonl(path)) if os.path.exists(path) else 0


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, main_env):
  workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
  result = run_digits(main_env, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_sigterm_checkpoints_the_exact_step_and_resumes_identically(tmp_path, main_env,
                                                                     uninterrupted_run):
  workdir = tmp_path / "run"
  process = start_and_signal(main_env, workdir, 2, signal.SIGTERM,
                             when=lambda w: logged_steps(w) >= 7)
  assert process.returncode == 128 + signal.SIGTERM, process.stderr_text[-3000:]
  assert "SIGTERM received: stopped after step" in process.stderr_text
  assert "Traceback" not in process.stderr_text
  step = int(process.stderr_text.split("stopped after step ")[1].split()[0])
  assert os.path.isdir(workdir / "checkpoints" / str(step))

  resumed = run_digits(main_env, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resuming from the checkpoint of step {step}" in resumed.stdout
  assert_same_run(uninterrupted_run, workdir)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["random", "checkpoint_write"])
def test_kill_9_resumes_identically(tmp_path, main_env, uninterrupted_run, moment):
  workdir = tmp_path / "run"
  if moment == "random":
    delay = random.Random(os.getpid()).uniform(0.0, 1.0)
    started = []

    def when(w):  # Some time after training started.
      if not started and logged_steps(w):
        started.append(time.time())
      return bool(started) and time.time() - started[0] > delay
  else:
    def when(w):  # As soon as orbax has a checkpoint directory in the making.
      checkpoints = os.path.join(w, "checkpoints")
      return os.path.isdir(checkpoints) and any(
          "tmp" in name for name in os.listdir(checkpoints))
  process = start_and_signal(main_env, workdir, 2, signal.SIGKILL, when=when)
  assert process.returncode == -signal.SIGKILL

  resumed = run_digits(main_env, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert_same_run(uninterrupted_run, workdir)


@pytest.mark.slow
def test_resume_on_a_different_number_of_devices(tmp_path, main_env):
  workdir = tmp_path / "run"
  process = start_and_signal(main_env, workdir, 2, signal.SIGTERM,
                             when=lambda w: logged_steps(w) >= 5)
  assert process.returncode == 128 + signal.SIGTERM, process.stderr_text[-3000:]
  resumed = run_digits(main_env, workdir, 1)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "on 1 cpu device(s)" in resumed.stdout and "Resuming from the checkpoint" in resumed.stdout
  with open(workdir / "eval.json") as f:
    final = json.load(f)
  assert final["steps"] == 12 * (512 // 64) and 0.5 < final["precision_at_1"] <= 1.0


@pytest.mark.slow
def test_diverging_run_stops_with_a_message_and_keeps_the_checkpoint(tmp_path, main_env):
  workdir = tmp_path / "run"
  first = run_digits(main_env, workdir, 2, "--config.num_epochs=1")
  assert first.returncode == 0, first.stderr[-3000:]
  before = sorted(os.listdir(workdir / "checkpoints"))

  diverged = run_digits(main_env, workdir, 2, "--config.num_epochs=2",
                      "--config.optimizer.learning_rate=1e30")
  assert diverged.returncode == 2, diverged.stderr[-3000:]
  assert "non-finite loss or gradient" in diverged.stderr
  assert "checkpoints/8 (step 8)" in diverged.stderr and "learning_rate" in diverged.stderr
  assert "Traceback" not in diverged.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == before
  # The checkpoint is intact: the run continues from it at a sane learning rate.
  again = run_digits(main_env, workdir, 2, "--config.num_epochs=2")
  assert again.returncode == 0, again.stderr[-3000:]
