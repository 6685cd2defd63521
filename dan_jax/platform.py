"""Which platform JAX will run on, decided without starting a backend.

A leaf module (the standard library only): `runtime` and `xla_cpu` ask it before JAX
starts, when a wrong guess would still cost nothing.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import re
import sys

# Distributions that register a JAX accelerator backend (PJRT plugins, libtpu).
_PLUGIN_RE = re.compile(
  r"^(jax[-_.]?cuda\d*[-_.]plugin|jax[-_.]?cuda\d*[-_.]pjrt|"
  r"jax[-_.]?rocm\d*[-_.]plugin|jax[-_.]?rocm\d*[-_.]pjrt|libtpu.*|"
  r"jax[-_.]?tpu.*)$",
  re.IGNORECASE,
)


_TPU_RE = re.compile(r"^(libtpu.*|jax[-_.]?tpu.*)$", re.IGNORECASE)
# Device nodes of a TPU VM's chips (v2-v5e: accel; v5p, v6e: vfio).
_TPU_NODES = ("/dev/accel*", "/dev/vfio/[0-9]*")


def installed_plugins() -> list[str]:
  """Installed JAX accelerator plugins (by distribution name), without starting JAX."""
  found = set()
  for dist in importlib.metadata.distributions():
    name = dist.metadata.get("Name") or ""
    if _PLUGIN_RE.match(name):
      found.add(name)
  try:
    found.update(ep.name for ep in importlib.metadata.entry_points(group="jax_plugins"))
  except Exception:  # odd metadata must not stop a run
    pass
  return sorted(found)


def tpu_present() -> bool:
  """Whether this host has TPU chips (their device nodes), without starting JAX."""
  return any(glob.glob(pattern) for pattern in _TPU_NODES)


def accelerator_plugins() -> list[str]:
  """Installed JAX accelerator plugins that can find a device here, without starting JAX.

  libtpu without TPU chips is the compiler `dan_jax.aot` uses, not an accelerator: the
  process stays CPU-only (its XLA:CPU flag, `runtime.setup_entry_point`).
  """
  found = installed_plugins()
  if not tpu_present():
    found = [name for name in found if not _TPU_RE.match(name)]
  return found


def idle_tpu_compiler() -> bool:
  """Whether libtpu is installed on a host without TPU chips (and nothing else is)."""
  return not tpu_present() and any(_TPU_RE.match(p) for p in installed_plugins())


def cpu_only() -> bool:
  """Whether JAX will run on the CPU alone, decided without starting a backend.

  True when JAX_PLATFORMS names only 'cpu', or when it is unset and no accelerator
  plugin is installed.
  """
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if "jax" in sys.modules and not platforms:  # jax.config.update('jax_platforms', ...)
    try:
      platforms = sys.modules["jax"].config.jax_platforms or ""
    except Exception:  # an old or odd jax: decide from the environment alone
      platforms = ""
  if platforms:
    return {p.strip().lower() for p in platforms.split(",") if p.strip()} == {"cpu"}
  return not accelerator_plugins()
