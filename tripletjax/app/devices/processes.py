"""Several processes, one per host: how `main` starts `jax.distributed`.

Every process runs the same command; together they train one model on all their devices
(`parallel.make_mesh` spans every device of every process). Each process feeds only the rows
of the global batch its devices hold, mines the loss where the train step says
(`virtual_batch`), and saves and restores its part of every checkpoint; only process 0 writes
logs, plots and exports.

How the processes find each other, first match wins:

  * flags: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`;
  * environment variables: `JAX_COORDINATOR_ADDRESS` (read by JAX itself), `JAX_NUM_PROCESSES`
    and `JAX_PROCESS_ID` (read here), each used where its flag is not given;
  * `--distributed` alone: JAX detects all three from the cluster's environment (Slurm, Open
    MPI, Kubernetes, Cloud TPU pod slices; `jax.distributed.initialize()`).

Without any of these the run is a single process. On CPUs the processes exchange data with
gloo collectives over TCP (JAX's default `jax_cpu_collectives_implementation`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from tripletjax.app import errors

ADDRESS_VARIABLE = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_VARIABLE = "JAX_NUM_PROCESSES"
PROCESS_ID_VARIABLE = "JAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class Launch:
  """The arguments of `jax.distributed.initialize`; None leaves one to JAX's detection."""
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None


def _integer_variable(environ: Mapping[str, str], name: str) -> int | None:
  text = environ.get(name)
  if text is None or not text.strip():
    return None
  try:
    value = int(text)
  except ValueError:
    raise errors.ConfigError(f"environment variable {name}={text!r}: must be an integer") from None
  if value < 0:
    raise errors.ConfigError(f"environment variable {name}={text!r}: must be >= 0")
  return value


def launch_from(coordinator_address: str | None = None, num_processes: int | None = None,
                process_id: int | None = None, distributed: bool = False,
                environ: Mapping[str, str] | None = None) -> Launch | None:
  """How this process joins the others (see the module docstring); None for a single process.

  Args:
    coordinator_address, num_processes, process_id: the flags' values (None: not given).
    distributed: the `--distributed` flag.
    environ: the environment variables; default `os.environ`.

  Raises:
    errors.ConfigError: a process count or index without a coordinator (and without
      `--distributed`), an index not below the count, a variable that is not an integer.
  """
  environ = os.environ if environ is None else environ
  address = coordinator_address or environ.get(ADDRESS_VARIABLE) or None
  if num_processes is None:
    num_processes = _integer_variable(environ, NUM_PROCESSES_VARIABLE)
  if process_id is None:
    process_id = _integer_variable(environ, PROCESS_ID_VARIABLE)
  if address is None and not distributed:
    if num_processes is not None or process_id is not None:
      raise errors.ConfigError(
          "--num_processes and --process_id need --coordinator_address",
          hint=f"or set {ADDRESS_VARIABLE}, or pass --distributed where the cluster "
               "(Slurm, Open MPI, Kubernetes, a TPU pod slice) tells JAX")
    return None
  if num_processes is not None and num_processes < 1:
    raise errors.ConfigError(f"--num_processes={num_processes}: must be >= 1")
  if num_processes is not None and process_id is not None and process_id >= num_processes:
    raise errors.ConfigError(f"--process_id={process_id} must be below "
                             f"--num_processes={num_processes}")
  return Launch(address, num_processes, process_id)


def initialize(launch: Launch | None) -> None:
  """Starts `jax.distributed` for `launch` (nothing for a single process).

  Must run before JAX starts its backends (before the first device query). Waits until every
  process has joined.

  Raises:
    errors.ConfigError: JAX could not tell the coordinator, the process count or this
      process's index (neither given nor found in the cluster's environment).
  """
  if launch is None:
    return
  import jax

  try:
    jax.distributed.initialize(launch.coordinator_address, launch.num_processes,
                               launch.process_id)
  except ValueError as error:  # What jax.distributed says about missing arguments.
    raise errors.ConfigError(
        f"cannot start the processes: {error}",
        hint="give --coordinator_address, --num_processes and --process_id (or their "
             f"environment variables {ADDRESS_VARIABLE}, {NUM_PROCESSES_VARIABLE}, "
             f"{PROCESS_ID_VARIABLE}) where no cluster manager tells JAX") from error
