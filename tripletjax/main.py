"""Trains and evaluates an embedding model: `python -m tripletjax.main --config=configs/X.py`.

  python -m tripletjax.main --config=configs/digits.py --workdir=runs/digits
  python -m tripletjax.main --config=configs/digits.py --config.loss.name=hard
  python -m tripletjax.main --config=configs/fashion_mnist.py --config.loss.margin=0.2

Everything the run produces goes to --workdir (default: runs/<dataset>-<loss>); an interrupted
run started again with the same --workdir resumes from its last checkpoint. Several hosts: start
one process per host with --coordinator_address, --num_processes and --process_id (or their
environment variables, or --distributed under Slurm, Open MPI, Kubernetes or on a TPU pod
slice); see `tripletjax.app.devices.processes`.

On a CPU-only machine the run splits every batch over one JAX device per core (--cpu_devices):
XLA:CPU runs each convolution on a single thread, so data parallelism over the cores is what
uses them all. The loss still mines over the whole batch.

Errors the user can fix (a flag, a config file or value, the data, the workdir) end the run
before any training with one line `error: ...` on stderr (and maybe a `hint: ...` line) and
exit status 2, without a traceback (`tripletjax.app.cli`); anything else is a bug and keeps its
traceback. The training itself is `tripletjax.app.loop.train`.
"""

from __future__ import annotations

import os
import sys

try:
  import jax
  from absl import app, flags, logging
  from ml_collections import config_flags

  from tripletjax.app import cli
  from tripletjax.app import errors
  from tripletjax.app.devices import processes
  from tripletjax.app.loop import preemption
except ImportError as missing:
  print(f"error: the training application needs {missing.name or missing}, which is not "
        "installed\nhint: pip install 'tripletjax[app]'", file=sys.stderr)
  sys.exit(2)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, plots and exports.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs (default: "
    f"${processes.ADDRESS_VARIABLE}).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in a multi-host run (default: "
    f"${processes.NUM_PROCESSES_VARIABLE}).", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, f"This process's index (default: ${processes.PROCESS_ID_VARIABLE}).",
    lower_bound=0)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Start jax.distributed from what the cluster tells JAX (Slurm, Open "
    "MPI, Kubernetes, TPU pod slices) for whatever the three flags above leave unset.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "JAX devices on the CPU backend (default: one per available core). "
    "Used only when there is no accelerator.", lower_bound=1)
flags.mark_flags_as_required(["config"])


def run(argv: list[str]) -> None:
  if len(argv) > 1:
    raise errors.ConfigError(f"unexpected arguments {argv[1:]}: every option is a --flag",
                             cli.FLAGS_HINT)
  launch = processes.launch_from(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                   _DISTRIBUTED.value)
  # Imported here: flag mistakes are reported before the trainer's imports (flax, orbax,
  # matplotlib: seconds) are made.
  from tripletjax.app.config import checks
  from tripletjax.app.loop import train

  # Orbax reports every step of every save at INFO level, JAX its backend search: keep the
  # console for the progress bar.
  logging.set_verbosity(logging.WARNING)
  # Must happen before JAX starts its backends (the first device query).
  cpu_devices = _CPU_DEVICES.value
  if cpu_devices is None:
    cpu_devices = len(os.sched_getaffinity(0))
  jax.config.update("jax_num_cpu_devices", cpu_devices)
  processes.initialize(launch)
  config = _CONFIG.value
  checks.check_config(config)  # Every value, before the workdir and the data are touched.
  workdir = _WORKDIR.value or os.path.join("runs", f"{config.data.name}-{config.loss.name}")
  cli.prepare_workdir(workdir)
  if jax.process_index() == 0:
    print(f"JAX {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"{jax.process_count()} process(es); writing to {workdir}")
  final = train.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    print(f"{train.summary_line(config, final)}  ({final['train_seconds']:.0f} s of training)")
    print(f"Results in {workdir}: eval.json, report.md, projector/, plots/")


def main(argv):
  try:
    run(argv)
  except errors.UserError as error:
    cli.exit_with_user_error(error)
  except preemption.Interrupted as interrupted:
    print(interrupted, file=sys.stderr, flush=True)
    sys.exit(interrupted.exit_status)


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, _CONFIG))
