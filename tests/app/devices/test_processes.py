"""Several processes (`tripletjax/app/devices/processes.py`): how they are launched, and a training
run of 2 processes on localhost (CPU, gloo collectives) against one process on as many devices.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.subprocesses import REPO
from tripletjax.app import errors
from tripletjax.app.config import defaults
from tripletjax.app.devices import mesh as mesh_lib
from tripletjax.app.devices import processes
from tripletjax.app.loop import checkpointing
from tripletjax.app.step import train_step



# ----------------------------------------------------------------------------------------------
# Launch options: flags first, then the environment, then the cluster (--distributed).


def test_single_process_without_flags_or_variables():
  assert processes.launch_from(environ={}) is None


def test_flags_come_before_the_environment():
  environ = {"JAX_COORDINATOR_ADDRESS": "env:1", "JAX_NUM_PROCESSES": "4",
             "JAX_PROCESS_ID": "3"}
  assert processes.launch_from("flag:2", 2, 1, environ=environ) == processes.Launch(
      "flag:2", 2, 1)
  assert processes.launch_from(environ=environ) == processes.Launch("env:1", 4, 3)
  assert processes.launch_from(process_id=0, environ=environ) == processes.Launch(
      "env:1", 4, 0)


def test_distributed_leaves_the_rest_to_the_cluster():
  assert processes.launch_from(distributed=True, environ={}) == processes.Launch(
      None, None, None)


@pytest.mark.parametrize("arguments, environ, message", [
    ({"num_processes": 2, "process_id": 0}, {},
     "--num_processes and --process_id need --coordinator_address"),
    ({}, {"JAX_PROCESS_ID": "1"}, "--num_processes and --process_id need --coordinator_address"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {},
     "--process_id=2 must be below --num_processes=2"),
    ({"coordinator_address": "h:1"}, {"JAX_NUM_PROCESSES": "two"},
     "environment variable JAX_NUM_PROCESSES='two': must be an integer"),
    ({"coordinator_address": "h:1"}, {"JAX_PROCESS_ID": "-1"},
     "environment variable JAX_PROCESS_ID='-1': must be >= 0"),
])
def test_bad_launch_options_are_one_line_errors(arguments, environ, message):
  with pytest.raises(errors.ConfigError) as error:
    processes.launch_from(**arguments, environ=environ)
  assert str(error.value) == message


# ----------------------------------------------------------------------------------------------
# 2 processes x 1 CPU device against 1 process x 2 CPU devices.

RUN_ARGS = ["--config=configs/digits.py", "--config.data.max_train=256",
            "--config.data.max_test=100", "--config.batch.batch_size=32",
            "--config.model.embedding_dim=16", "--config.log_every_steps=2",
            "--config.checkpoint_every_epochs=1", "--config.eval_every_epochs=1",
            "--config.quiet=True", "--config.export.pca_every_eval=False",
            "--config.export.projector_max_points=50"]
STEPS_PER_EPOCH = 256 // 32


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def start(workdir, epochs: int, devices: int, env, *process_flags) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "tripletjax.main", *RUN_ARGS, f"--config.num_epochs={epochs}",
       f"--cpu_devices={devices}", f"--workdir={workdir}", *process_flags],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
  stdout, stderr = process.communicate(timeout=240)
  assert process.returncode == 0, stderr[-3000:]
  return stdout


def run_two_processes(workdir, epochs: int, env) -> list[str]:
  """Runs 2 processes of 1 CPU device each on localhost; what they print (gloo's lines aside)."""
  port = free_port()
  processes = [start(workdir, epochs, 1, env, f"--coordinator_address=127.0.0.1:{port}",
                     "--num_processes=2", f"--process_id={index}") for index in range(2)]
  return ["".join(line for line in finish(process).splitlines(keepends=True)
                  if not line.startswith("[Gloo]")) for process in processes]


def keep_until_step(workdir, step: int) -> None:
  """Leaves `workdir` as a run stopped after `step` leaves it: the checkpoint of that step, the
  log records up to it, and none of the final outputs."""
  assert (workdir / "checkpoints" / str(step)).is_dir()
  for name in os.listdir(workdir / "checkpoints"):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(workdir / "checkpoints" / name)
  for name in ("metrics.jsonl", "eval.jsonl"):
    kept = [r for r in read_jsonl(workdir / name) if r["step"] <= step]
    (workdir / name).write_text("".join(json.dumps(r) + "\n" for r in kept))
  for name in ("eval.json", "report.md", "projector", "plots", "tensorboard"):
    path = workdir / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def final_state(workdir) -> dict[str, np.ndarray]:
  """The parameters, BatchNorm statistics and optimizer state of the run's last checkpoint."""
  config = defaults.get_config()
  config.model.embedding_dim = 16
  mesh = mesh_lib.make_mesh()
  trainer = train_step.build_trainer(config, (8, 8, 1), 10, mesh)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=mesh_lib.replicated(mesh)),
      train_step.training_state(trainer))
  checkpoints = checkpointing.StepCheckpoints(os.path.join(workdir, "checkpoints"))
  try:
    state, meta = checkpoints.restore(checkpoints.latest_step(), abstract)
  finally:
    checkpoints.close()
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {"step": np.array(meta["step"]),
          **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}}


def read_jsonl(path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def without_timings(records: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if k not in ("train_seconds", "epoch_seconds")}
          for r in records]


@pytest.mark.slow
def test_two_processes_resume_and_train_like_one_process_on_as_many_devices(tmp_path):
  env = {**os.environ}
  env.pop("XLA_FLAGS", None)
  single = finish(start(tmp_path / "one", 2, 2, env))
  assert "on 2 cpu device(s), 1 process(es)" in single
  # The second epoch again, on 2 processes: from the single process's checkpoint of the first
  # epoch, restored by both processes onto their devices; each feeds its rows of every batch;
  # both save their parts of the final checkpoint; process 0 writes the logs and exports.
  shutil.copytree(tmp_path / "one", tmp_path / "two")
  keep_until_step(tmp_path / "two", STEPS_PER_EPOCH)
  outputs = run_two_processes(tmp_path / "two", 2, env)
  assert "on 2 cpu device(s), 2 process(es)" in outputs[0]
  assert f"Resuming from the checkpoint of step {STEPS_PER_EPOCH}" in outputs[0]
  assert "precision@1" in outputs[0] and outputs[1] == ""  # Process 1 says nothing.

  # The same loss curve, mining statistics and evaluations, to the last bit.
  curve = read_jsonl(tmp_path / "two" / "metrics.jsonl")
  assert [r["step"] for r in curve] == list(range(2, 2 * STEPS_PER_EPOCH + 1, 2))
  assert curve == read_jsonl(tmp_path / "one" / "metrics.jsonl")
  assert without_timings(read_jsonl(tmp_path / "two" / "eval.jsonl")) == without_timings(
      read_jsonl(tmp_path / "one" / "eval.jsonl"))
  for name in ("eval.json", "report.md", "projector/vecs.tsv"):
    assert (tmp_path / "two" / name).exists(), name
  # The same final parameters and optimizer state.
  expected, got = final_state(tmp_path / "one"), final_state(tmp_path / "two")
  assert int(got["step"]) == 2 * STEPS_PER_EPOCH and set(got) == set(expected)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
