"""dan_jax: DAN (deep alternating network) blind super-resolution in JAX/Flax."""

from dan_jax import xla_cpu as _xla_cpu

_xla_cpu.configure()  # before any JAX backend starts: see dan_jax/xla_cpu.py

__version__ = "0.1.0"
