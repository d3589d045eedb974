"""The library imports with JAX and NumPy alone; the application's dependencies stay out of it.

A subprocess blocks every package of the `app` and `test` extras (flax, optax, orbax, ...)
before it imports `tripletjax`, so the test sees what an environment with only jax and numpy
installed would see (`.ci/run` also checks a real minimal virtual environment).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Top-level modules of the app, test, keras, tensorflow and torch extras' packages.
APP_MODULES = ("flax", "optax", "orbax", "ml_collections", "sklearn", "matplotlib", "tqdm",
               "tensorboardX", "absl", "PIL", "chex", "tensorflow_datasets", "keras",
               "tensorflow", "torch")

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {APP_MODULES!r}

    class Blocker(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
          raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None

    sys.meta_path.insert(0, Blocker())
""")


def run_blocked(code: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args],
                        capture_output=True, text=True, timeout=120)


def test_the_losses_need_only_jax_and_numpy():
  result = run_blocked("""
      import numpy as np
      import tripletjax
      from tripletjax import mining, reference
      labels = np.array([0, 0, 1, 1, 2, 2])
      embeddings = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
      for name in tripletjax.__all__:
        getattr(tripletjax, name)
      for name, loss in tripletjax.MINED_LOSSES.items():
        value = float(loss(labels, embeddings))
        expected = reference.MINED_LOSSES[name](labels, embeddings)
        assert abs(value - expected) < 1e-4, (name, value, expected)
      assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), sorted(sys.modules)
      assert "tripletjax.app" not in sys.modules
      print("OK")
  """)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")


def test_the_blocker_blocks():
  # The test above would prove nothing if the blocker let the packages through.
  result = run_blocked("import optax")
  assert result.returncode != 0 and "blocked" in result.stderr


@pytest.mark.parametrize("module", ["tripletjax.main"])
def test_the_application_without_its_extra_is_one_line_and_exit_2(module):
  result = run_blocked(f"""
      import runpy
      sys.argv = ["{module}", "--config=configs/digits.py"]
      runpy.run_module("{module}", run_name="__main__")
  """)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[0].startswith("error: the training application needs "), lines
  assert lines[1] == "hint: pip install 'tripletjax[app]'", lines
