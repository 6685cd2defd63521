"""dan_jax: DAN (deep alternating network) blind super-resolution in JAX/Flax."""

__version__ = "0.1.0"
