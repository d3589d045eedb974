"""Where the sorting miners run: `resolve_backend`'s rules, for every request and platform."""

import jax
import pytest

from tripletjax.mining import backend
from tripletjax.mining import keys

PLATFORMS = ("cpu", "gpu", "tpu")
# Rows that rank keys fit, and rows one entry too long for them.
SHORT, LONG = keys.RANK_KEY_MAX_COLUMNS, keys.RANK_KEY_MAX_COLUMNS + 1


def resolve(request, platform, num_devices=1, num_columns=64):
  return backend.resolve_backend(request, num_columns=num_columns, platform=platform,
                                 num_devices=num_devices)


def test_auto_is_numpy_only_on_one_cpu_device():
  assert resolve("auto", "cpu", num_devices=1) == backend.NUMPY
  # A host callback inside a program sharded over several CPU devices deadlocks XLA:CPU.
  assert resolve("auto", "cpu", num_devices=2) == backend.RANK_KEY
  assert resolve("auto", "cpu", num_devices=8) == backend.RANK_KEY
  for platform in ("gpu", "tpu"):
    for num_devices in (1, 8):
      assert resolve("auto", platform, num_devices) == backend.THREE_KEYS, platform


@pytest.mark.parametrize("num_devices", [1, 4])
def test_xla_sorts_by_rank_key_on_cpu_and_by_three_keys_elsewhere(num_devices):
  assert resolve("xla", "cpu", num_devices) == backend.RANK_KEY
  assert resolve("xla", "gpu", num_devices) == backend.THREE_KEYS
  assert resolve("xla", "tpu", num_devices) == backend.THREE_KEYS


@pytest.mark.parametrize("request_", ["auto", "xla", "xla:rank_key"])
def test_rows_too_long_for_rank_keys_take_three_keys(request_):
  num_devices = 2  # So that "auto" means XLA on the CPU too.
  assert resolve(request_, "cpu", num_devices, num_columns=SHORT) == backend.RANK_KEY
  assert resolve(request_, "cpu", num_devices, num_columns=LONG) == backend.THREE_KEYS


def test_numpy_three_keys_and_packed_key_do_not_depend_on_the_row_length_or_platform():
  for platform in PLATFORMS:
    for num_columns in (1, SHORT, LONG):
      for request_ in (backend.NUMPY, backend.THREE_KEYS, backend.PACKED_KEY):
        assert resolve(request_, platform, num_columns=num_columns) == request_
  assert resolve(backend.RANK_KEY, "gpu") == backend.RANK_KEY  # Forced, on any platform.


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("num_devices", [1, 2])
@pytest.mark.parametrize("num_columns", [8, LONG])
def test_a_resolved_method_resolves_to_itself(platform, num_devices, num_columns):
  for request_ in backend.BACKENDS:
    method = resolve(request_, platform, num_devices, num_columns)
    assert method in (backend.NUMPY, backend.RANK_KEY, backend.THREE_KEYS,
                      backend.PACKED_KEY), request_
    assert resolve(method, platform, num_devices, num_columns) == method, request_


def test_defaults_are_this_process_platform_and_device_count(monkeypatch):
  assert jax.default_backend() == "cpu" and jax.device_count() == 1  # The test session's.
  assert backend.resolve_backend(num_columns=8) == backend.NUMPY
  monkeypatch.setattr(jax, "device_count", lambda: 4)
  assert backend.resolve_backend("auto", num_columns=8) == backend.RANK_KEY
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert backend.resolve_backend("auto", num_columns=8) == backend.THREE_KEYS
  # Explicit values win over the defaults.
  assert backend.resolve_backend("auto", num_columns=8, platform="cpu",
                                 num_devices=1) == backend.NUMPY


@pytest.mark.parametrize("name", ["gpu", "xla:radix", "NUMPY", ""])
def test_unknown_names_are_errors_listing_the_valid_ones(name):
  expected = (rf"Unknown mining_backend {name!r}; expected one of \('auto', 'numpy', 'xla', "
              r"'xla:rank_key', 'xla:three_keys', 'xla:packed_key'\)")
  with pytest.raises(ValueError, match=expected):
    backend.check_backend(name)
  with pytest.raises(ValueError, match=expected):
    resolve(name, "cpu")


def test_check_backend_returns_a_valid_name():
  for name in backend.BACKENDS:
    assert backend.check_backend(name) == name
