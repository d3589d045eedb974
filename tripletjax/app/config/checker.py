"""What checks a config section: `Checker`, each failure one clear line.

A failure raises `errors.ConfigError` (a ValueError) naming the key, the value and what is
allowed, e.g. "config.model.embedding_dim=0: must be an integer >= 1", instead of letting a bad
value fail deep inside a run (a ZeroDivisionError in an initializer, a NaN learning rate, an
int64 seed that JAX wraps). Each section of a config is checked by the module that owns it
(`check_config(check)` there); `loop.checks.check_config` calls them all, before any work.
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import TYPE_CHECKING, Any, Iterable

from tripletjax.app import errors

if TYPE_CHECKING:  # The modules that own a section import this one: none needs ml_collections.
  import ml_collections



def _value(config: ml_collections.ConfigDict, key: str) -> Any:
  for part in key.split("."):
    config = config[part]
  return config


def fail(key: str, value: Any, allowed: str, hint: str | None = None):
  raise errors.ConfigError(f"config.{key}={value!r}: {allowed}.", hint)


def is_integer(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Checker:
  """Checks the values of one config by key."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def __getitem__(self, key: str) -> Any:
    return _value(self.config, key)

  def integer(self, key: str, minimum: int, optional: bool = False,
              below: int | None = None) -> None:
    value = self[key]
    if optional and value is None:
      return
    if not is_integer(value) or value < minimum or (below is not None and value >= below):
      allowed = f"must be an integer >= {minimum}"
      if below is not None:
        allowed = f"must be an integer in [{minimum}, {below})"
      fail(key, value, allowed + (" or None" if optional else ""))

  def number(self, key: str, *, minimum: float, below: float | None = None,
             exclusive_minimum: bool = False, optional: bool = False) -> None:
    """A finite number >= minimum (> with `exclusive_minimum`) and < `below` if given."""
    value = self[key]
    if optional and value is None:
      return
    low_ok = is_number(value) and (value > minimum if exclusive_minimum else value >= minimum)
    if not (low_ok and math.isfinite(value) and (below is None or value < below)):
      if below is not None:
        allowed = f"must be a number in [{minimum:g}, {below:g})"
      else:
        allowed = f"must be a finite number {'>' if exclusive_minimum else '>='} {minimum:g}"
      fail(key, value, allowed + (" or None" if optional else ""))

  def boolean(self, key: str, optional: bool = False) -> None:
    value = self[key]
    if not (isinstance(value, bool) or (optional and value is None)):
      fail(key, value, "must be True or False" + (" or None" if optional else ""))

  def fail(self, key: str, allowed: str, hint: str | None = None):
    """Raises the error of `key`'s value: `allowed` says what would be."""
    fail(key, self[key], allowed, hint)

  def choice(self, key: str, valid: Iterable[str]) -> None:
    value, valid = self[key], sorted(valid)
    if value not in valid:
      close = difflib.get_close_matches(str(value), valid, n=1)
      fail(key, value, f"must be one of {', '.join(map(repr, valid))}",
            f"did you mean {close[0]!r}?" if close else None)


def check_known_keys(config: ml_collections.ConfigDict,
                      defaults: ml_collections.ConfigDict, prefix: str = "config") -> None:
  """Every key of `config` must be one of `defaults.get_config()`: a misspelt key in a config file
  would otherwise be silently ignored (command-line overrides are checked by ml_collections).
  A key that is one of a section below (config.model.head: config.model.resnet.head) is
  pointed to it."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  for key in config.keys():
    if key not in defaults:
      close = [f"{prefix}.{name}" for name in
               difflib.get_close_matches(key, list(defaults.keys()), n=1)]
      if not close:
        close = [f"{prefix}.{name}.{key}" for name, section in defaults.items()
                 if isinstance(section, ml_collections.ConfigDict) and key in section]
      raise errors.ConfigError(
          f"{prefix}.{key} is not a config key; the keys of {prefix} are "
          f"{', '.join(sorted(defaults.keys()))}.",
          f"did you mean {' or '.join(close)}?" if close else None)
    value, default = config[key], defaults[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise errors.ConfigError(f"{prefix}.{key}={value!r}: must be a group of keys "
                                 f"({', '.join(sorted(default.keys()))}).")
      check_known_keys(value, default, f"{prefix}.{key}")
