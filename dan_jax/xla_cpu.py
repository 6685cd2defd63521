"""An XLA:CPU setting for CPU-only processes: the command lines apply it, libraries opt in.

Recent jaxlib hands every CPU dot (and the dots XLA:CPU turns convolutions into) to
YNNPACK, about half as fast as XLA's own convolutions for DAN's 3x3 convolutions.
`configure()` turns that fusion off through XLA_FLAGS, but only in a process that will run
on the CPU alone (`platform.cpu_only()`: accelerator plugins parse XLA_FLAGS too), before a
backend starts, and never over your own setting; `import dan_jax` changes nothing. The
conditions and measurements are in the README ("Performance").
"""

from __future__ import annotations

import logging
import os

from dan_jax import platform

FLAG = "--xla_cpu_experimental_ynn_fusion_type="
_MIN_JAXLIB = (0, 9)
_applied = False


def _jaxlib_version() -> tuple[int, ...]:
  try:
    from jaxlib import version

    return tuple(int(p) for p in version.__version__.split(".")[:2])
  except Exception:  # no or an odd jaxlib: too old to know the flag
    return (0, 0)


def configure() -> bool:
  """Appends FLAG to XLA_FLAGS where appropriate (see the module doc). Returns whether."""
  global _applied
  flags = os.environ.get("XLA_FLAGS", "")
  if (
    os.environ.get("DAN_JAX_XLA_CPU_DEFAULTS", "1").strip() == "0"
    or FLAG.rstrip("=") in flags
    or _jaxlib_version() < _MIN_JAXLIB
    or not platform.cpu_only()
  ):
    return False
  try:
    from jax._src import xla_bridge

    started = xla_bridge.backends_are_initialized()
  except Exception:  # a jax without this private probe: assume not started
    started = False
  if started:
    logging.getLogger(__name__).info(
      "JAX started before dan_jax.xla_cpu.configure(): XLA:CPU keeps its default YNNPACK dots "
      "(set XLA_FLAGS=%s yourself for the faster convolutions)",
      FLAG,
    )
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
  _applied = True
  return True


def applied() -> bool:
  """Whether `configure()` set the flag in this process."""
  return _applied
