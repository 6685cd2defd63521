"""dan_jax.xla_cpu: the XLA:CPU flag dan_jax sets on import, and when it leaves it alone."""

import os
import subprocess
import sys
from unittest import mock

import pytest

from dan_jax import xla_cpu


@pytest.fixture
def clean_env(monkeypatch):
  """Neither XLA_FLAGS nor the opt-out variable set."""
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv("DAN_JAX_XLA_CPU_DEFAULTS", raising=False)
  return monkeypatch


@pytest.fixture
def fresh(clean_env):
  """configure() as in a process whose JAX backend has not started."""
  with mock.patch("jax._src.xla_bridge.backends_are_initialized", return_value=False):
    yield clean_env


def test_appends_to_existing_flags(fresh):
  fresh.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert xla_cpu.configure()
  assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                             xla_cpu.FLAG]


def test_user_setting_wins(fresh):
  fresh.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
  assert not xla_cpu.configure()
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"


def test_opt_out(fresh):
  fresh.setenv("DAN_JAX_XLA_CPU_DEFAULTS", "0")
  assert not xla_cpu.configure()
  assert "XLA_FLAGS" not in os.environ


def test_old_jaxlib_is_left_alone(fresh):
  with mock.patch.object(xla_cpu, "_jaxlib_version", return_value=(0, 7)):
    assert not xla_cpu.configure()
  assert "XLA_FLAGS" not in os.environ


def test_started_backend_is_left_alone(clean_env):
  with mock.patch("jax._src.xla_bridge.backends_are_initialized", return_value=True):
    assert not xla_cpu.configure()
  assert "XLA_FLAGS" not in os.environ


def test_import_sets_the_flag_in_a_fresh_process():
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "DAN_JAX_XLA_CPU_DEFAULTS")}
  code = ("import os, dan_jax, jax, jax.numpy as jnp; jnp.ones(2).block_until_ready(); "
          "print(os.environ['XLA_FLAGS'], dan_jax.xla_cpu.applied())")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout
  assert out.split() == [xla_cpu.FLAG, "True"]
