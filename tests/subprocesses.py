"""Python subprocesses of the tests: the command line, and programs on several CPU devices.

Every subprocess starts in the repository root, so `python -m tripletjax.main` and
`import tests...` find this checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(*args: str, env: dict | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
  """`python ARGS` from the repository root, its output captured as text."""
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def run_main(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
  """`python -m tripletjax.main ARGS`."""
  return run_python("-m", "tripletjax.main", *args, timeout=timeout)


def user_error_lines(result: subprocess.CompletedProcess) -> tuple[str, str | None]:
  """The `error:` line and the `hint:` line (or None) of a run that failed as a user error."""
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  error_lines = [line for line in lines if line.startswith("error: ")]
  assert len(error_lines) == 1, result.stderr
  # The error is the last line, or the one before its hint.
  tail = lines[lines.index(error_lines[0]):]
  assert len(tail) == 1 or (len(tail) == 2 and tail[1].startswith("hint: ")), result.stderr
  return tail[0], tail[1] if len(tail) == 2 else None


def run_on_devices(num_devices: int, script: str, *args: str) -> str:
  """Runs `script` (python -c) on `num_devices` CPU devices; returns its standard output.

  The number of (fake CPU) devices is fixed when JAX starts, hence a subprocess
  (XLA_FLAGS=--xla_force_host_platform_device_count=N).
  """
  environment = dict(os.environ,
                     XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
  result = run_python("-c", textwrap.dedent(script), *args, env=environment, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout
