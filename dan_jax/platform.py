"""Which platform JAX will run on, decided without starting a backend.

A leaf module (the standard library only): `runtime` and `xla_cpu` ask it before JAX
starts, when a wrong guess would still cost nothing.
"""

from __future__ import annotations

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


def accelerator_plugins() -> list[str]:
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
