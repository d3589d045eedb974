"""The command line's user errors: each one line `error: ...` (and `hint: ...`), exit status 2.

Errors the user can fix (a flag, a config file or value, the data, the workdir) are
`errors.UserError`s; `python -m tripletjax.main` prints them with `exit_with_user_error`,
without a traceback. Anything else is a bug and keeps its traceback. absl would print its usage
text for a bad flag, and a missing config file or an override of a key the config lacks would
end in tracebacks from ml_collections: `parse_flags` turns those into user errors too.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
import traceback

import ml_collections
from absl import flags

from tripletjax.app import errors

EXIT_USER_ERROR = 2
FLAGS_HINT = "python -m tripletjax.main --helpshort lists the flags."


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


def _line_in(error: BaseException, filename: str) -> int | None:
  """The line of `filename` where `error` was raised (its innermost frame in that file)."""
  lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
           if os.path.abspath(frame.filename) == os.path.abspath(filename)]
  return lines[-1] if lines else None


def load_config_file(path: str):
  """The config of `path` ("file.py" or "file.py:argument"), loaded as ml_collections does.

  Raises:
    errors.ConfigError: a file that does not load (a syntax error, no `get_config`, an
      exception in it), naming the file and the line.
  """
  filename, *arguments = path.split(":", 1)
  spec = importlib.util.spec_from_file_location("tripletjax_config_to_check", filename)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
      raise errors.ConfigError(f"--config={path}: {filename} defines no get_config() function")
    return get_config(*arguments)
  except SyntaxError as error:
    raise errors.ConfigError(f"--config={path}: {error.filename}, line {error.lineno}: "
                             f"{error.msg}") from None
  except errors.UserError:
    raise
  except Exception as error:  # pylint: disable=broad-except  # Any error of the user's code.
    raise errors.ConfigError(f"--config={path}: {filename}, line {_line_in(error, filename)}: "
                             f"{type(error).__name__}: {error}") from None


def _unknown_override(argv: list[str]) -> errors.ConfigError | None:
  """The first `--config.a.b=...` of `argv` whose key the config file does not have."""
  path = _config_argument(argv)
  if path is None:
    return None
  config = load_config_file(path)  # Loaded again, as ml_collections does.
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


def parse_flags(argv: list[str], config_flag) -> list[str]:
  """absl's flag parsing, with every mistake reported as one line (`exit_with_user_error`).

  absl would print its usage text for a bad flag, and a missing config file or an override of
  a key the config lacks would end in tracebacks from ml_collections.

  Args:
    argv: the command line.
    config_flag: the `--config` flag's holder (`config_flags.DEFINE_config_file`).

  Returns:
    The arguments left after the flags (argv[0] first).
  """
  try:
    try:
      rest = flags.FLAGS(argv)
    except flags.Error as error:
      raise errors.ConfigError(str(error), FLAGS_HINT) from error
    except Exception as error:  # pylint: disable=broad-except
      # A config file that failed to load (OSError: missing; a syntax error, no get_config,
      # an exception in it), or an override of a missing key (ml_collections raises
      # KeyError/AttributeError).
      path = _config_argument(argv)
      if isinstance(error, OSError) and path is not None:
        raise _config_file_error(path, error) from error
      if path is not None:
        load_config_file(path)  # Names the file and line of a config that does not load.
      unknown = (_unknown_override(argv) if isinstance(error, (KeyError, AttributeError))
                 else None)
      if unknown is None:
        raise
      raise unknown from error
    config = config_flag.value
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
