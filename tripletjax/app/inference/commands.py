"""The command lines `python -m tripletjax.{embed,search,export}`: flags, devices, user errors.

Each entry point parses its flags with `parser(...)` (a mistake is a `errors.ConfigError`, not
argparse's usage text), then calls `main_guard(run, argv)`, which prints a user error as one
`error: ...` line (and `hint: ...`) and exits with status 2, like `python -m tripletjax.main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from tripletjax.app import errors


class _Parser(argparse.ArgumentParser):
  """argparse, with a bad flag raised as `errors.ConfigError` (one line, exit status 2)."""

  def error(self, message):
    raise errors.ConfigError(message, f"python -m {self.prog} --help lists the flags")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
  """A parser with the flags every command shares: --workdir, --step, --batch_size,
  --cpu_devices."""
  result = _Parser(prog=prog, description=description)
  result.add_argument("--workdir", required=True, help="The training run (its folder).")
  result.add_argument("--step", type=int, default=None,
                      help="The checkpoint of this training step (default: the model the "
                           "run's eval.json reports: the selected epoch's, else the latest).")
  result.add_argument("--batch_size", type=int, default=1024,
                      help="Images per compiled call (default: the evaluation's 1024).")
  result.add_argument("--cpu_devices", type=int, default=None,
                      help="JAX devices on a CPU-only machine (default: one per core, as "
                           "training).")
  return result


def parse(arg_parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
  args = arg_parser.parse_args(argv)
  if args.batch_size < 1:
    raise errors.ConfigError(f"--batch_size={args.batch_size}: must be >= 1")
  if args.cpu_devices is not None and args.cpu_devices < 1:
    raise errors.ConfigError(f"--cpu_devices={args.cpu_devices}: must be >= 1")
  return args


def set_cpu_devices(count: int | None) -> None:
  """One JAX device per core on a CPU-only machine, as `python -m tripletjax.main` uses: the
  embeddings are then those of the run's evaluation, bit for bit. Where JAX has started
  already (the command called from a program), its devices stay as they are."""
  import jax  # pylint: disable=import-outside-toplevel
  try:
    jax.config.update("jax_num_cpu_devices", count or len(os.sched_getaffinity(0)))
  except RuntimeError:  # "should be updated before backends are initialized".
    if count is not None:
      raise errors.ConfigError(f"--cpu_devices={count}: JAX has started already in this "
                               "process; its devices cannot change") from None


def main_guard(run: Callable[[Sequence[str] | None], None],
               argv: Sequence[str] | None = None) -> None:
  """`run(argv)`; a user error becomes one `error:` line and exit status 2."""
  try:
    run(argv)
  except errors.UserError as error:
    from tripletjax.app import cli  # pylint: disable=import-outside-toplevel
    cli.exit_with_user_error(error)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
