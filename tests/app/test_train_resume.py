"""Runs that are stopped and started again: preemption, kill -9, other device counts, checkpoints
that cannot be read, a changed config and steps that go non-finite.

The in-process tests stop a run at a chosen step (deterministic); the subprocess tests send real
signals to `python -m tripletjax.main` on several CPU devices.
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

from tripletjax.app.data import augmentations
from tripletjax.app import checkpointing
from tripletjax.app import preemption
from tripletjax.app import train
from tests.app.test_train import read_jsonl, tiny_config
from tripletjax.app import parallel
from tripletjax.app import train_step

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
  trainer = train_step.build_trainer(config, (8, 8, 1), 12, parallel.make_mesh())
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


@pytest.mark.slow
def test_nonfinite_step_stops_the_run_or_is_skipped(tmp_path, monkeypatch):
  # A NaN pixel in the batches of two chosen steps (global steps 4 and 8, 6 steps per epoch).
  bad_steps = {(0, 3), (1, 1)}
  augment = augmentations.augment

  def poisoned(images, kind, *, seed, epoch, step, **kwargs):
    images = augment(images, kind, seed=seed, epoch=epoch, step=step, **kwargs).copy()
    if (epoch, step) in bad_steps:
      images[0, 0, 0, 0] = np.nan
    return images
  monkeypatch.setattr(augmentations, "augment", poisoned)
  config = tiny_config(num_epochs=2, **{"export.pca_every_eval": False})
  with pytest.raises(train.NonFiniteStep, match="training step 4 .*non-finite"):
    train.train_and_evaluate(config, str(tmp_path / "stop"))
  assert not os.listdir(tmp_path / "stop" / "checkpoints")  # Nothing after a bad step.

  # With skip_nonfinite the run skips those two steps, counts them and stays finite.
  config.optimizer.skip_nonfinite = True
  final = train.train_and_evaluate(config, str(tmp_path / "skip"))
  assert final["skipped_steps"] == 2
  assert np.isfinite(final["precision_at_1"]) and final["precision_at_1"] > 0.3
  records = read_jsonl(tmp_path / "skip" / "metrics.jsonl")
  assert [r["skipped_steps"] for r in records] == [0, 1, 1, 2, 2, 2]  # Logged every 2 steps.


# ----------------------------------------------------------------------------------------------
# Real signals to `python -m tripletjax.main` on several CPU devices.

MAIN_ARGS = ["--config=configs/digits.py", "--config.data.max_train=512",
             "--config.data.max_test=200", "--config.batch.batch_size=64",
             "--config.num_epochs=12", "--config.eval_every_epochs=4",
             "--config.checkpoint_every_epochs=1", "--config.log_every_steps=3",
             "--config.quiet=True", "--config.export.pca_every_eval=False"]


def main_command(workdir, devices: int, *extra) -> list[str]:
  return [sys.executable, "-m", "tripletjax.main", *MAIN_ARGS, *extra,
          f"--cpu_devices={devices}", f"--workdir={workdir}"]


@pytest.fixture(scope="session")
def main_env(tmp_path_factory):
  """The environment of the main processes: a compilation cache shared by the test runs."""
  cache = tmp_path_factory.getbasetemp().parent / "jax-compilation-cache"
  return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def run_main(env, workdir, devices: int = 2, *extra) -> subprocess.CompletedProcess:
  return subprocess.run(main_command(workdir, devices, *extra), cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=env)


def start_and_signal(env, workdir, devices: int, signal_number: int, *, when) -> subprocess.Popen:
  """Starts main, sends `signal_number` as soon as `when(workdir)` holds, waits for the end."""
  process = subprocess.Popen(main_command(workdir, devices), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
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
  result = run_main(main_env, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_sigterm_checkpoints_the_exact_step_and_resumes_identically(tmp_path, main_env, uninterrupted_run):
  workdir = tmp_path / "run"
  process = start_and_signal(main_env, workdir, 2, signal.SIGTERM,
                             when=lambda w: logged_steps(w) >= 7)
  assert process.returncode == 128 + signal.SIGTERM, process.stderr_text[-3000:]
  assert "SIGTERM received: stopped after step" in process.stderr_text
  assert "Traceback" not in process.stderr_text
  step = int(process.stderr_text.split("stopped after step ")[1].split()[0])
  assert os.path.isdir(workdir / "checkpoints" / str(step))

  resumed = run_main(main_env, workdir)
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

  resumed = run_main(main_env, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert_same_run(uninterrupted_run, workdir)


@pytest.mark.slow
def test_resume_on_a_different_number_of_devices(tmp_path, main_env):
  workdir = tmp_path / "run"
  process = start_and_signal(main_env, workdir, 2, signal.SIGTERM,
                             when=lambda w: logged_steps(w) >= 5)
  assert process.returncode == 128 + signal.SIGTERM, process.stderr_text[-3000:]
  resumed = run_main(main_env, workdir, 1)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "on 1 cpu device(s)" in resumed.stdout and "Resuming from the checkpoint" in resumed.stdout
  with open(workdir / "eval.json") as f:
    final = json.load(f)
  assert final["steps"] == 12 * (512 // 64) and 0.5 < final["precision_at_1"] <= 1.0


def corrupt_checkpoint(path, how: str) -> None:
  files = sorted(os.path.join(root, name) for root, _, names in os.walk(os.path.join(path, "state"))
                 for name in names)
  assert files, path
  if how == "delete":
    for name in files:
      os.remove(name)
  else:  # Truncate every data file to half its size.
    for name in files:
      with open(name, "r+b") as f:
        f.truncate(os.path.getsize(name) // 2)


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, main_env):
  workdir = tmp_path / "run"
  first = run_main(main_env, workdir, 2, "--config.num_epochs=2")
  assert first.returncode == 0, first.stderr[-3000:]
  steps = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  assert steps == [8, 16]
  corrupt_checkpoint(workdir / "checkpoints" / "16", "truncate")

  resumed = run_main(main_env, workdir, 2, "--config.num_epochs=3")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "checkpoints/16 is unusable" in resumed.stdout
  assert "Resuming from the checkpoint of step 8" in resumed.stdout
  assert os.listdir(workdir / "checkpoints" / "unusable")  # Set aside, not deleted.
  with open(workdir / "eval.json") as f:
    assert json.load(f)["steps"] == 24

  # No usable checkpoint at all: one line, exit status 2, nothing deleted.
  for step in (16, 24):
    corrupt_checkpoint(workdir / "checkpoints" / str(step), "delete")
  failed = run_main(main_env, workdir, 2, "--config.num_epochs=3")
  assert failed.returncode == 2, failed.stderr[-3000:]
  assert "error: no usable checkpoint" in failed.stderr
  assert "Traceback" not in failed.stderr


@pytest.mark.slow
def test_resume_with_a_changed_config(tmp_path, main_env):
  workdir = tmp_path / "run"
  first = run_main(main_env, workdir, 2, "--config.num_epochs=1")
  assert first.returncode == 0, first.stderr[-3000:]

  changed = run_main(main_env, workdir, 2, "--config.num_epochs=1",
                     "--config.model.embedding_dim=32")
  assert changed.returncode == 2
  lines = [line for line in changed.stderr.splitlines() if line.strip()]
  assert lines[0].startswith("error: ") and "model.embedding_dim 64 -> 32" in lines[0]
  assert "--workdir" in changed.stderr
  for noise in ("Traceback", "Event loop is closed", "sys.meta_path"):
    assert noise not in changed.stderr

  extended = run_main(main_env, workdir, 2, "--config.num_epochs=2")
  assert extended.returncode == 0, extended.stderr[-3000:]
  assert "Config changes on resume: num_epochs 1 -> 2" in extended.stdout
  with open(workdir / "eval.json") as f:
    assert json.load(f)["steps"] == 16


@pytest.mark.slow
def test_diverging_run_stops_with_a_message_and_keeps_the_checkpoint(tmp_path, main_env):
  workdir = tmp_path / "run"
  first = run_main(main_env, workdir, 2, "--config.num_epochs=1")
  assert first.returncode == 0, first.stderr[-3000:]
  before = sorted(os.listdir(workdir / "checkpoints"))

  diverged = run_main(main_env, workdir, 2, "--config.num_epochs=2",
                      "--config.optimizer.learning_rate=1e30")
  assert diverged.returncode == 2, diverged.stderr[-3000:]
  assert "non-finite loss or gradient" in diverged.stderr
  assert "checkpoints/8 (step 8)" in diverged.stderr and "learning_rate" in diverged.stderr
  assert "Traceback" not in diverged.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == before
  # The checkpoint is intact: the run continues from it at a sane learning rate.
  again = run_main(main_env, workdir, 2, "--config.num_epochs=2")
  assert again.returncode == 0, again.stderr[-3000:]
