"""XLA:CPU settings that dan_jax applies when it is imported (before JAX starts a backend).

Recent jaxlib hands every CPU dot, and the dots XLA:CPU turns convolutions into, to
YNNPACK (`--xla_cpu_experimental_ynn_fusion_type`, default `individual_dot`). For DAN's
3x3 convolutions at 64-74 channels that path ran at ~55 GFLOP/s on a 2-core EPYC against
100-140 GFLOP/s for XLA's own (Eigen) convolution; the full DANv1 forward pass went from
10.6 s to 6.1 s (benchmarks/RESULTS.md). So dan_jax turns the YNNPACK fusion off, by
appending `--xla_cpu_experimental_ynn_fusion_type=` to XLA_FLAGS, unless:

- XLA_FLAGS already sets that flag (your choice wins), or
- the environment variable DAN_JAX_XLA_CPU_DEFAULTS=0 is set, or
- jaxlib is older than the versions we measured (the flag may not exist there).

Only XLA:CPU reads `xla_cpu_*` flags: GPU and TPU runs are unaffected. XLA reads XLA_FLAGS
once, when the first backend starts; importing dan_jax after that leaves the flag without
effect for that process (`applied()` tells).
"""

from __future__ import annotations

import logging
import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type="
_MIN_JAXLIB = (0, 9)
_applied = False


def _jaxlib_version() -> tuple[int, ...]:
  try:
    from jaxlib import version  # pylint: disable=g-import-not-at-top
    return tuple(int(p) for p in version.__version__.split(".")[:2])
  except Exception:  # pylint: disable=broad-except
    return (0, 0)


def configure() -> bool:
  """Appends FLAG to XLA_FLAGS where appropriate (see the module doc). Returns whether."""
  global _applied
  flags = os.environ.get("XLA_FLAGS", "")
  if (os.environ.get("DAN_JAX_XLA_CPU_DEFAULTS", "1").strip() == "0"
      or FLAG.rstrip("=") in flags or _jaxlib_version() < _MIN_JAXLIB):
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    started = xla_bridge.backends_are_initialized()
  except Exception:  # pylint: disable=broad-except
    started = False
  if started:
    logging.getLogger(__name__).info(
        "JAX started before dan_jax was imported: XLA:CPU keeps its default YNNPACK dots "
        "(set XLA_FLAGS=%s yourself for the faster convolutions)", FLAG)
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
  _applied = True
  return True


def applied() -> bool:
  """Whether this process's import of dan_jax set the flag."""
  return _applied
