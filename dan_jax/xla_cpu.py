"""An XLA:CPU setting for CPU-only processes: the command lines apply it, libraries opt in.

Recent jaxlib hands every CPU dot, and the dots XLA:CPU turns convolutions into, to
YNNPACK (`--xla_cpu_experimental_ynn_fusion_type`, default `individual_dot`). For DAN's
3x3 convolutions at 64-74 channels that path ran at ~55 GFLOP/s on a 2-core EPYC against
100-140 GFLOP/s for XLA's own (Eigen) convolution; the full DANv1 forward pass went from
10.6 s to 6.1 s (benchmarks/RESULTS.md). `configure()` turns the YNNPACK fusion off, by
appending `--xla_cpu_experimental_ynn_fusion_type=` to XLA_FLAGS, unless:

- the process may use an accelerator: JAX_PLATFORMS names anything but 'cpu', or (unset)
  a JAX accelerator plugin (jax-cuda*-plugin, libtpu, ...) is installed. Those plugins
  parse XLA_FLAGS too, and need not know an XLA:CPU flag (`platform.cpu_only()`);
- XLA_FLAGS already sets that flag (your choice wins), or
- the environment variable DAN_JAX_XLA_CPU_DEFAULTS=0 is set, or
- jaxlib is older than the versions we measured (the flag may not exist there), or
- a JAX backend has already started (XLA reads XLA_FLAGS once; `applied()` tells).

`import dan_jax` changes nothing. The command lines (`main`, `evaluate`, `infer`, the
sweep, the benchmarks) call `configure()` through `runtime.setup_entry_point()`; in a
library or notebook, opt in with one line before JAX starts:

  import dan_jax.xla_cpu; dan_jax.xla_cpu.configure()
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
  if (os.environ.get("DAN_JAX_XLA_CPU_DEFAULTS", "1").strip() == "0"
      or FLAG.rstrip("=") in flags or _jaxlib_version() < _MIN_JAXLIB
      or not platform.cpu_only()):
    return False
  try:
    from jax._src import xla_bridge
    started = xla_bridge.backends_are_initialized()
  except Exception:  # a jax without this private probe: assume not started
    started = False
  if started:
    logging.getLogger(__name__).info(
        "JAX started before dan_jax.xla_cpu.configure(): XLA:CPU keeps its default YNNPACK dots "
        "(set XLA_FLAGS=%s yourself for the faster convolutions)", FLAG)
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
  _applied = True
  return True


def applied() -> bool:
  """Whether `configure()` set the flag in this process."""
  return _applied
