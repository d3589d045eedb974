"""Under CI a test whose dataset or dependency is missing fails; elsewhere it skips, saying why."""

from __future__ import annotations

import sys

import pytest

import conftest
from tripletjax import datasets


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("yes", True),
                                             ("", False), ("false", False), ("0", False)])
def test_in_ci_reads_the_environment(monkeypatch, value, expected):
  monkeypatch.setenv("CI", value)
  assert conftest.in_ci() is expected
  monkeypatch.delenv("CI")
  assert not conftest.in_ci()


@pytest.mark.parametrize("ci", [True, False])
def test_missing_fashion_mnist_fails_under_ci_and_skips_elsewhere(ci, monkeypatch, request,
                                                                  tmp_path):
  monkeypatch.setattr(datasets, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "absent"))
  if ci:
    monkeypatch.setenv("CI", "true")
  else:
    monkeypatch.delenv("CI", raising=False)
  outcome = pytest.fail.Exception if ci else pytest.skip.Exception
  with pytest.raises(outcome, match="absent.*apt-get install dataset-fashion-mnist"):
    request.getfixturevalue("fashion_mnist_dir")


@pytest.mark.parametrize("ci", [True, False])
def test_missing_tfds_fails_under_ci_and_skips_elsewhere(ci, monkeypatch, request):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError.
  if ci:
    monkeypatch.setenv("CI", "true")
  else:
    monkeypatch.delenv("CI", raising=False)
  outcome = pytest.fail.Exception if ci else pytest.skip.Exception
  with pytest.raises(outcome, match="pip install tensorflow-datasets"):
    request.getfixturevalue("tfds")
