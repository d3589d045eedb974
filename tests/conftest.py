"""Test-session settings and the fixtures of tests that need something optional."""

import os

import jax
import pytest

from tripletjax.app.data import datasets

# With partitionable threefry (JAX's default) XLA:CPU compiles every random draw of a model's
# initialisation separately, 2-5 s each; the classic threefry compiles ~10x faster. It only
# changes which random numbers are drawn, and the tests of sharded execution do not depend on it.
jax.config.update("jax_threefry_partitionable", False)


def in_ci() -> bool:
  """Whether the environment variable CI is set (`.ci/run` sets CI=true), and not to false/0."""
  return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_unless_ci(reason: str):
  """Skips the test with `reason`; under CI fails instead, as CI installs what tests need."""
  if in_ci():
    pytest.fail(f"{reason}, and CI={os.environ['CI']} is set: CI must run this test.",
                pytrace=False)
  pytest.skip(reason)


@pytest.fixture
def fashion_mnist_dir() -> str:
  """Debian's Fashion-MNIST directory (dataset-fashion-mnist); skips where it is absent."""
  if not os.path.isdir(datasets.FASHION_MNIST_DEBIAN_DIR):
    skip_unless_ci(f"{datasets.FASHION_MNIST_DEBIAN_DIR} is absent "
                   "(apt-get install dataset-fashion-mnist)")
  return datasets.FASHION_MNIST_DEBIAN_DIR


@pytest.fixture
def tfds():
  """The tensorflow_datasets module (pip install tensorflow-datasets, in the test extra)."""
  try:
    import tensorflow_datasets  # pylint: disable=import-outside-toplevel
  except ImportError as error:  # Not only ModuleNotFoundError: a broken install says why.
    skip_unless_ci(f"tensorflow_datasets cannot be imported ({error}); "
                   "pip install tensorflow-datasets")
  return tensorflow_datasets


def import_torchvision():
  """The torchvision module (the `torch` extra); skips, or fails under CI, where it is missing."""
  try:
    import torchvision  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    skip_unless_ci(f"torchvision cannot be imported ({error}); pip install 'tripletjax[torch]'")
  return torchvision


def import_keras():
  """Keras 3 on its JAX backend (the `keras` extra; no TensorFlow needed); skips, or fails under
  CI, where it is missing."""
  os.environ.setdefault("KERAS_BACKEND", "jax")
  try:
    import keras  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    skip_unless_ci(f"keras cannot be imported ({error}); pip install 'tripletjax[keras]'")
  if keras.backend.backend() != "jax":
    pytest.fail(f"keras was imported with the {keras.backend.backend()!r} backend; these tests "
                "need KERAS_BACKEND=jax", pytrace=False)
  return keras


@pytest.fixture
def torchvision():
  return import_torchvision()


@pytest.fixture
def keras():
  return import_keras()
