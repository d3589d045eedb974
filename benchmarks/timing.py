"""Timing repeated calls for the benchmarks: the median of several calls after a warm-up."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np


def _timed_calls(call: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    seconds.append(time.perf_counter() - start)
  return float(np.median(seconds)), seconds


def time_calls(call: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
  """Median seconds of `repeats` calls of `call()` after one untimed call, and all times."""
  call()
  return _timed_calls(call, repeats)


def time_calls_for(call: Callable[[], object], min_time_s: float, min_repeats: int = 3,
                   max_repeats: int = 20) -> tuple[float, list[float]]:
  """Times `call()` repeatedly: as many calls as fit in `min_time_s` within the repeat limits.

  The first (warm-up) call is timed to choose the number of calls but not counted. Returns
  (median seconds, all seconds).
  """
  start = time.perf_counter()
  call()
  first = time.perf_counter() - start
  repeats = int(min(max_repeats, max(min_repeats, math.ceil(min_time_s / max(first, 1e-6)))))
  return _timed_calls(call, repeats)
