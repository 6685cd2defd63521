"""dan_jax.xla_cpu: the XLA:CPU flag the command lines set, and when it is left alone."""

import os
import subprocess
import sys
from unittest import mock

import jax
import pytest

from dan_jax import platform as platform_lib
from dan_jax import xla_cpu


@pytest.fixture
def clean_env(monkeypatch):
  """Neither XLA_FLAGS, the opt-out variable nor JAX_PLATFORMS set.

  JAX_PLATFORMS also leaves the JAX config it was read into when jax was imported (a
  caller's `JAX_PLATFORMS=cpu` would otherwise still decide `platform.cpu_only()`).
  """
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv("DAN_JAX_XLA_CPU_DEFAULTS", raising=False)
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  saved = jax.config.jax_platforms
  jax.config.update("jax_platforms", None)
  yield monkeypatch
  jax.config.update("jax_platforms", saved)


@pytest.fixture
def fresh(clean_env):
  """configure() as in a process whose JAX backend has not started."""
  with (
    mock.patch("jax._src.xla_bridge.backends_are_initialized", return_value=False),
    mock.patch.object(platform_lib, "accelerator_plugins", return_value=[]),
  ):
    yield clean_env


def test_appends_to_existing_flags(fresh):
  fresh.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert xla_cpu.configure()
  assert os.environ["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=2",
    xla_cpu.FLAG,
  ]


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


@pytest.mark.parametrize(
  "plugins,platforms,applied",
  [
    (["jax-cuda12-plugin"], None, False),  # a GPU plugin parses XLA_FLAGS too
    (["libtpu"], None, False),
    (["jax-cuda12-plugin"], "cpu", True),  # asked for the CPU alone: the plugin stays off
    ([], "cuda", False),
    ([], "cpu,tpu", False),
  ],
)
def test_only_cpu_only_processes(fresh, plugins, platforms, applied):
  if platforms:
    fresh.setenv("JAX_PLATFORMS", platforms)
  with mock.patch.object(platform_lib, "accelerator_plugins", return_value=plugins):
    assert xla_cpu.configure() == applied
  assert (xla_cpu.FLAG in os.environ.get("XLA_FLAGS", "")) == applied


def test_accelerator_plugins_reads_installed_metadata():
  # This machine has none; the names the check matches are those of real plugins.
  assert platform_lib.accelerator_plugins() == []
  for name in (
    "jax-cuda12-plugin",
    "jax_cuda13_pjrt",
    "libtpu",
    "libtpu-nightly",
    "jax-rocm7-plugin",
  ):
    assert platform_lib._PLUGIN_RE.match(name), name
  assert not platform_lib._PLUGIN_RE.match("jaxlib")


def _fresh_process(code, **env_extra):
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in ("XLA_FLAGS", "DAN_JAX_XLA_CPU_DEFAULTS", "JAX_PLATFORMS")
  }
  env.update(env_extra)
  return subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
  ).stdout


def test_import_leaves_xla_flags_alone():
  code = (
    "import os, dan_jax, dan_jax.train, jax.numpy as jnp; "
    "jnp.ones(2).block_until_ready(); print(repr(os.environ.get('XLA_FLAGS')))"
  )
  assert _fresh_process(code).split() == ["None"]


def test_opt_in_sets_the_flag_in_a_fresh_process():
  code = (
    "import os, dan_jax.xla_cpu; dan_jax.xla_cpu.configure(); import jax.numpy as jnp; "
    "jnp.ones(2).block_until_ready(); "
    "print(os.environ['XLA_FLAGS'], dan_jax.xla_cpu.applied())"
  )
  assert _fresh_process(code).split() == [xla_cpu.FLAG, "True"]


@pytest.mark.parametrize(
  "installed,chips,accelerators,idle",
  [
    (["libtpu"], False, [], True),  # dan_jax.aot's compiler on a CPU host: CPU-only
    (["libtpu"], True, ["libtpu"], False),  # a TPU VM
    (["jax-cuda12-plugin", "libtpu"], False, ["jax-cuda12-plugin"], True),
    ([], False, [], False),
  ],
)
def test_libtpu_without_tpu_chips_is_not_an_accelerator(installed, chips, accelerators, idle):
  with (
    mock.patch.object(platform_lib, "installed_plugins", return_value=installed),
    mock.patch.object(platform_lib, "tpu_present", return_value=chips),
  ):
    assert platform_lib.accelerator_plugins() == accelerators
    assert platform_lib.idle_tpu_compiler() == idle


def test_entry_point_keeps_an_idle_libtpu_off(fresh):
  # libtpu without TPU chips would print its failed start and take the TPU lock file.
  from dan_jax import runtime

  with (
    mock.patch.object(platform_lib, "idle_tpu_compiler", return_value=True),
    mock.patch.object(runtime, "hide_accelerators_from_tensorflow"),
  ):
    runtime.setup_entry_point()
  assert os.environ["JAX_PLATFORMS"] == "cpu"
  assert xla_cpu.FLAG in os.environ["XLA_FLAGS"]
