"""The one timing rule of the benchmark scripts (imported by them; needs only JAX)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall time of `repeats` calls of fn(), each waited for on the device.

  Callers warm up (compile) first; this times only.
  """
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)
