"""dan_jax: DAN (deep alternating network) blind super-resolution in JAX/Flax.

Importing dan_jax changes no process setting; command lines call
`dan_jax.runtime.setup_entry_point()` (see dan_jax/xla_cpu.py for the CPU opt-in).
"""

__version__ = "0.1.0"
