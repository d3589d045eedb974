"""Running a test's program on several (virtual CPU) devices.

The number of CPU devices is fixed when JAX starts, and the test session has one, so a
multi-device program runs in a subprocess started with
XLA_FLAGS=--xla_force_host_platform_device_count=N; it writes what it computed to a file that
the test, in this process, checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_on_devices(num_devices: int, script: str, *args: str, timeout_s: float = 600) -> str:
  """Runs `script` (python -c, from the repository root, `tests/` importable) on
  `num_devices` CPU devices and returns its standard output; fails with its stderr's tail."""
  environment = dict(os.environ,
                     XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
                     PYTHONPATH=os.pathsep.join(
                         filter(None, [os.path.join(REPO, "tests"),
                                       os.environ.get("PYTHONPATH")])))
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=timeout_s)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout
