"""Fixtures of the application's tests."""

import os

import pytest


@pytest.fixture(scope="session")
def main_env(tmp_path_factory):
  """The environment of the main processes: a compilation cache shared by the test runs."""
  cache = tmp_path_factory.getbasetemp().parent / "jax-compilation-cache"
  return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
