"""Under CI a test whose dataset or dependency is missing fails; elsewhere it skips, saying why."""

from __future__ import annotations

import re
import sys

import pytest

from tests import conftest
from tripletjax.app.data import datasets


def assert_outcome(request, monkeypatch, fixture: str, ci: bool, reason: str):
  """With CI set (`ci`) or not, requesting `fixture` fails (under CI) or skips (elsewhere),
  giving `reason`.

  Both outcomes are caught here: a skip that escaped would only mark this test skipped.
  """
  if ci:
    monkeypatch.setenv("CI", "true")
  else:
    monkeypatch.delenv("CI", raising=False)
  try:
    request.getfixturevalue(fixture)
  except (pytest.fail.Exception, pytest.skip.Exception) as outcome:
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    assert type(outcome) is expected, f"{fixture}: {type(outcome).__name__} with CI={ci}"
    assert re.search(reason, str(outcome)), str(outcome)
  else:
    raise AssertionError(f"{fixture} neither failed nor skipped")


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
  assert_outcome(request, monkeypatch, "fashion_mnist_dir", ci,
                 "absent.*apt-get install dataset-fashion-mnist")


@pytest.mark.parametrize("ci", [True, False])
def test_missing_tfds_fails_under_ci_and_skips_elsewhere(ci, monkeypatch, request):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError.
  assert_outcome(request, monkeypatch, "tfds", ci, "pip install tensorflow-datasets")


@pytest.mark.parametrize("ci", [True, False])
@pytest.mark.parametrize("fixture, module, hint", [
    ("torchvision", "torchvision", r"pip install 'tripletjax\[torch\]'"),
    ("keras", "keras", r"pip install 'tripletjax\[keras\]'"),
])
def test_missing_weight_converters_fail_under_ci_and_skip_elsewhere(ci, fixture, module, hint,
                                                                    monkeypatch, request):
  monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError.
  assert_outcome(request, monkeypatch, fixture, ci, hint)
