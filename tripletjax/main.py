"""Trains and evaluates an embedding model: `python -m tripletjax.main --config=configs/X.py`.

  python -m tripletjax.main --config=configs/digits.py --workdir=runs/digits
  python -m tripletjax.main --config=configs/digits.py --config.loss.name=hard
  python -m tripletjax.main --config=configs/fashion_mnist.py --config.loss.margin=0.2

Everything the run produces goes to --workdir (default: runs/<dataset>-<loss>); an interrupted
run started again with the same --workdir resumes from its last checkpoint. Multi-host: start
one process per host with --coordinator_address, --num_processes and --process_id.

On a CPU-only machine the run splits every batch over one JAX device per core (--cpu_devices):
XLA:CPU runs each convolution on a single thread, so data parallelism over the cores is what
uses them all (the seed-002 CNN's convolutions, forward+backward at batch 256: 274 -> 142 ms
on 2 cores). The loss still mines over the whole batch.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from tripletjax import errors
from tripletjax import preemption
from tripletjax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, plots and exports.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "JAX devices on the CPU backend (default: one per available core). "
    "Used only when there is no accelerator.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Must happen before JAX starts its backends (the first device query).
  cpu_devices = _CPU_DEVICES.value or len(os.sched_getaffinity(0))
  if cpu_devices < 1:
    raise app.UsageError(f"--cpu_devices must be >= 1, got {cpu_devices}.")
  jax.config.update("jax_num_cpu_devices", cpu_devices)
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("runs", f"{config.data.name}-{config.loss.name}")
  # Orbax reports every step of every save at INFO level: keep the console for the progress bar.
  logging.set_verbosity(logging.WARNING)
  if jax.process_index() == 0:
    print(f"JAX {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"{jax.process_count()} process(es); writing to {workdir}")
  try:
    final = train.train_and_evaluate(config, workdir)
  except preemption.Interrupted as interrupted:
    print(interrupted, file=sys.stderr, flush=True)
    sys.exit(interrupted.exit_status)
  except errors.UserError as error:
    print(f"error: {error}", file=sys.stderr)
    if error.hint:
      print(f"hint: {error.hint}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    print(f"precision@1 {final['precision_at_1']:.4f}  MAP@R {final['map_at_r']:.4f}  "
          f"R-precision {final['r_precision']:.4f}  NMI {final['nmi']:.4f}  "
          f"({final['train_seconds']:.0f} s of training)")
    print(f"Results in {workdir}: eval.json, report.md, projector/, plots/")


if __name__ == "__main__":
  app.run(main)
