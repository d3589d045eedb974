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

Errors the user can fix (a flag, a config file or value, the data, the workdir) end the run
before any training with one line `error: ...` on stderr (and maybe a `hint: ...` line) and
exit status 2, without a traceback (`tripletjax.errors`); anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from tripletjax import errors
from tripletjax import preemption

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, plots and exports.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.",
                                      lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).",
                                   lower_bound=0)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "JAX devices on the CPU backend (default: one per available core). "
    "Used only when there is no accelerator.", lower_bound=1)
flags.mark_flags_as_required(["config"])

EXIT_USER_ERROR = 2
_FLAGS_HINT = "python -m tripletjax.main --helpshort lists the flags."


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def exit_with_user_error(error: errors.UserError) -> None:
  """Prints `error: ...` (and `hint: ...`) to stderr and exits with status 2.

  Whatever is printed after the line while the process shuts down (a checkpointer's
  background threads, asyncio, XLA's C++ logging) is dropped, so the line stays the last one.
  """
  sys.stdout.flush()
  print(f"error: {_one_line(error)}", file=sys.stderr)
  if error.hint:
    print(f"hint: {_one_line(error.hint)}", file=sys.stderr)
  sys.stderr.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  sys.stderr = open(devnull, "w", closefd=False)
  sys.exit(EXIT_USER_ERROR)


# ----------------------------------------------------------------------------------------------
# Flags.


def _config_argument(argv: list[str]) -> str | None:
  """The value of --config in `argv`, if any."""
  for index, arg in enumerate(argv):
    if match := re.fullmatch(r"--?config=(.*)", arg):
      return match.group(1)
    if arg in ("--config", "-config") and index + 1 < len(argv):
      return argv[index + 1]
  return None


def _config_file_error(path: str, error: Exception) -> errors.ConfigError:
  """A config file that could not be loaded: missing, a folder, unreadable."""
  filename = path.split(":", 1)[0]
  if not os.path.isfile(filename):
    folder = os.path.dirname(filename) or "."
    hint = None
    if os.path.isdir(folder):
      files = sorted(f for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py")
      if files:
        hint = f"the config files in {folder}/: {', '.join(files)}"
    return errors.ConfigError(f"--config={path}: no such config file", hint)
  reason = str(error).strip().splitlines()[-1].strip()
  return errors.ConfigError(f"--config={path}: cannot load it ({reason})")


def _unknown_override(argv: list[str]) -> errors.ConfigError | None:
  """The first `--config.a.b=...` of `argv` whose key the config file does not have."""
  path = _config_argument(argv)
  if path is None:
    return None
  # Loaded again, as ml_collections does: `path` is "file.py" or "file.py:argument".
  filename, *arguments = path.split(":", 1)
  spec = importlib.util.spec_from_file_location("tripletjax_config_to_check", filename)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(*arguments)
  for arg in argv[1:]:
    match = re.match(r"--?(?:no)?config\.([^=]+)", arg)
    if not match:
      continue
    parts = match.group(1).split(".")
    node, walked = config, "config"
    for index, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict):
        return errors.ConfigError(f"{arg}: {walked} is a value, not a group of keys")
      if part not in node:
        keys = sorted(node.keys())
        close = difflib.get_close_matches(part, keys, n=1)
        hint = None
        if close:
          fixed = ".".join(parts[:index] + close + parts[index + 1:])
          hint = f"did you mean {arg.replace(match.group(1), fixed, 1)}?"
        return errors.ConfigError(
            f"{arg}: {walked} has no key {part!r} (its keys: {', '.join(keys)})", hint)
      node, walked = node[part], f"{walked}.{part}"
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every mistake reported as one line (`exit_with_user_error`).

  absl would print its usage text for a bad flag, and a missing config file or an override of
  a key the config lacks would end in tracebacks from ml_collections.

  Returns:
    The arguments left after the flags (argv[0] first).
  """
  try:
    try:
      rest = flags.FLAGS(argv)
    except flags.Error as error:
      raise errors.ConfigError(str(error), _FLAGS_HINT) from error
    except (KeyError, AttributeError, OSError) as error:
      # An override of a missing key (ml_collections raises KeyError/AttributeError), or one
      # of a config file that failed to load (OSError).
      path = _config_argument(argv)
      if isinstance(error, OSError) and path is not None:
        raise _config_file_error(path, error) from error
      unknown = _unknown_override(argv)
      if unknown is None:
        raise
      raise unknown from error
    config = _CONFIG.value
    try:
      config.keys()  # A config file that failed to load raises OSError on any access.
    except OSError as error:
      raise _config_file_error(_config_argument(argv), error) from error
    except AttributeError as error:
      raise errors.ConfigError(f"--config={_config_argument(argv)}: its get_config() returned "
                               f"{config!r}, not a ConfigDict") from error
  except errors.UserError as error:
    exit_with_user_error(error)
  return rest


# ----------------------------------------------------------------------------------------------
# The run.


def _check_processes() -> None:
  if _COORDINATOR.value is None and (_NUM_PROCESSES.value is not None
                                     or _PROCESS_ID.value is not None):
    raise errors.ConfigError("--num_processes and --process_id need --coordinator_address")
  if (_NUM_PROCESSES.value is not None and _PROCESS_ID.value is not None
      and _PROCESS_ID.value >= _NUM_PROCESSES.value):
    raise errors.ConfigError(f"--process_id={_PROCESS_ID.value} must be below "
                             f"--num_processes={_NUM_PROCESSES.value}")


def prepare_workdir(workdir: str) -> None:
  """Creates `workdir` if needed; a `WorkdirError` if it cannot be created or written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.WorkdirError(f"--workdir={workdir}: exists and is not a folder")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise errors.WorkdirError(
        f"--workdir={workdir}: cannot create it ({error.strerror or error})") from error
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise errors.WorkdirError(f"--workdir={workdir}: not writable")


def run(argv: list[str]) -> None:
  if len(argv) > 1:
    raise errors.ConfigError(f"unexpected arguments {argv[1:]}: every option is a --flag",
                             _FLAGS_HINT)
  _check_processes()
  # Imported here: flag mistakes are reported before the trainer's imports (flax, orbax,
  # matplotlib: seconds) are made.
  from tripletjax import train

  # Orbax reports every step of every save at INFO level, JAX its backend search: keep the
  # console for the progress bar.
  logging.set_verbosity(logging.WARNING)
  # Must happen before JAX starts its backends (the first device query).
  cpu_devices = _CPU_DEVICES.value
  if cpu_devices is None:
    cpu_devices = len(os.sched_getaffinity(0))
  jax.config.update("jax_num_cpu_devices", cpu_devices)
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  train.check_config(config)  # Every value, before the workdir and the data are touched.
  workdir = _WORKDIR.value or os.path.join("runs", f"{config.data.name}-{config.loss.name}")
  prepare_workdir(workdir)
  if jax.process_index() == 0:
    print(f"JAX {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"{jax.process_count()} process(es); writing to {workdir}")
  final = train.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    print(f"precision@1 {final['precision_at_1']:.4f}  MAP@R {final['map_at_r']:.4f}  "
          f"R-precision {final['r_precision']:.4f}  NMI {final['nmi']:.4f}  "
          f"({final['train_seconds']:.0f} s of training)")
    print(f"Results in {workdir}: eval.json, report.md, projector/, plots/")


def main(argv):
  try:
    run(argv)
  except errors.UserError as error:
    exit_with_user_error(error)
  except preemption.Interrupted as interrupted:
    print(interrupted, file=sys.stderr, flush=True)
    sys.exit(interrupted.exit_status)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
