"""tripletjax.keras on each Keras backend that CI installs (jax, tensorflow, torch).

Keras chooses its backend once per process, so each backend's checks (`backend_checks.py`)
run in a pytest subprocess with KERAS_BACKEND set.
"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

from tests import conftest
from tests.subprocesses import run_python

# Keras backend -> the module it needs.
BACKENDS = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_keras_losses_on_each_backend(backend):
  if importlib.util.find_spec("keras") is None:
    conftest.skip_unless_ci("keras is not installed; pip install 'tripletjax[keras]'")
  if importlib.util.find_spec(BACKENDS[backend]) is None:
    conftest.skip_unless_ci(f"{BACKENDS[backend]} is not installed (the Keras {backend} "
                            "backend); pip install 'tripletjax[keras,tensorflow,torch]'")
  environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
  if backend == "torch":
    # PyTorch's spinning worker threads slow its small ops down many times on a busy machine
    # (benchmarks/RESULTS.md); the checks' arrays are tiny.
    environment.setdefault("OMP_NUM_THREADS", "1")
  result = run_python("-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-W",
                      "ignore::DeprecationWarning",
                      "tests/keras_losses/backend_checks.py", env=environment, timeout=900)
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
  summary = result.stdout.strip().splitlines()[-1]
  assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
