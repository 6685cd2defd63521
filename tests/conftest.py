"""Test-session set-up: the XLA:CPU flag the command lines use (tests run on the CPU)."""

from dan_jax import xla_cpu

# Before any test starts JAX: the in-process tests then compile what the CLIs compile.
xla_cpu.configure()
