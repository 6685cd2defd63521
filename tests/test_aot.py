"""dan_jax.aot and dan_jax.topology: compiling for TPU slices and GPU hosts this host lacks."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest

from dan_jax import aot
from dan_jax import config as config_lib
from dan_jax import models
from dan_jax import steps
from dan_jax import topology
from dan_jax import xla_cpu
from dan_jax.errors import ConfigError
from dan_jax.errors import MissingPackageError
from dan_jax.errors import UsageError
from dan_jax.train_state import abstract_state
from dan_jax.train_state import state_template

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
HAS_CUDA = any(importlib.util.find_spec(m) for m in topology.CUDA_PLUGINS)
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu: pip install "dan_jax[aot]"')
ROOT = pathlib.Path(__file__).resolve().parent.parent
TEST_CONFIG = "configs/test.py"
TINY = aot.Images(whole=(16, 24), tiled=(40, 40), tile=16, batch=4)
# The test config's nf and kernel sizes are 8: a global batch of 16 keeps the
# gradient all-reduce from looking batch-sized by coincidence.
BATCH = 16


@pytest.fixture(autouse=True)
def _restore_environment(monkeypatch):
  """`aot.main` and `topology.get` set JAX_PLATFORMS and ALLOW_MULTIPLE_LIBTPU_LOAD."""
  for name in ("JAX_PLATFORMS", "ALLOW_MULTIPLE_LIBTPU_LOAD"):
    value = os.environ.get(name)
    monkeypatch.delenv(name, raising=False)
    if value is not None:
      monkeypatch.setenv(name, value)


# ---- topology names, install hints, shipped GPU targets (no compiler needed) ----


@pytest.mark.parametrize("name", ["v9:2x2", "v5e", "tpu:8", "h100:eight", "v5e:0x2", ""])
def test_unknown_topology_is_one_usage_error(name):
  with pytest.raises(UsageError, match="topology"):
    topology.parse(name)


def test_topology_names():
  assert topology.parse("v5e:2x4") == (topology.CHIPS["v5e"], (2, 4))
  assert topology.parse("V4:2x2x4")[0].megacore
  assert topology.parse("a100:8")[0].name == "a100_80gb"
  assert topology.parse("h100:2x8")[1] == (2, 8)


def test_local_topology_is_this_hosts_devices():
  topo = topology.get("local")
  assert topo.devices == jax.devices() and topo.platform == jax.default_backend() == "cpu"
  assert topo.chip.hbm_bytes > 0 and topology.hbm_bytes(topo) == topo.chip.hbm_bytes
  kinds = dict(topology._KINDS)
  assert [c for k, c in topology._KINDS if k in "NVIDIA H100 80GB HBM3"][0] == "h100"
  assert [c for k, c in topology._KINDS if k in "NVIDIA A100-SXM4-40GB"][0] == "a100_40gb"
  assert [c for k, c in topology._KINDS if k in "TPU v5 lite"][0] == "v5e"
  assert set(kinds.values()) <= set(topology.CHIPS)


def test_local_programs_compile_and_run_on_this_host():
  rows = aot.report(TEST_CONFIG, "local", what=["train", "predict"], run_steps=2, images=TINY)
  assert [r.program for r in rows][:2] == ["train", "predict"]
  for r in rows:
    assert not r.error and not r.violations and r.fits and r.chips == jax.device_count()
    assert r.measured_step_s > 0 and r.compile_s > 0
  assert "measured" in aot.format_table(rows)
  with pytest.raises(UsageError, match="--topology=local"):
    aot.report(TEST_CONFIG, "v5e:2x2", what=["train"], run_steps=2)


def test_missing_compiler_names_the_install():
  with mock.patch.object(importlib.util, "find_spec", return_value=None):
    with pytest.raises(MissingPackageError, match=r"dan_jax\[aot\]"):
      topology.get("v5e:2x2")
    with pytest.raises(MissingPackageError, match=r"jax\[cuda12\]"):
      topology.get("h100:8")


@pytest.mark.parametrize("chip", [c for c in topology.CHIPS.values() if c.platform == "cuda"])
def test_shipped_gpu_targets_parse(chip):
  text = topology.gpu_target(chip)
  fields = dict(re.findall(r"^\s*(\w+): (\S+)$", text, re.M))
  assert fields["platform_name"] == '"CUDA"'
  assert re.search(r"cuda_compute_capability \{\s*major: [89]", text)
  assert int(fields["core_count"]) >= 100
  for name in ("memory_bandwidth", "l2_cache_size", "shared_memory_per_core", "clock_rate_ghz"):
    assert float(fields[name]) > 0, name
  assert text.count("{") == text.count("}")
  # The description's memory is the card's, within a few percent of the spec sheet's.
  memory = int(fields["device_memory_size"])
  assert abs(memory - chip.hbm_bytes) / chip.hbm_bytes < 0.08
  assert topology.hbm_bytes(topology.Topology("x", chip, [], 1)) == memory


def test_gpu_targets_are_package_data():
  shipped = {p.name for p in topology.GPU_TARGETS_DIR.glob("*.txtpb")}
  assert {c.target for c in topology.CHIPS.values() if c.target} <= shipped


# ---- what is read from compiled programs ----

_HLO = """
  %all-reduce.3 = (f32[3,3,8,8]{3,2,1,0}, f32[8]{0}) all-reduce(%a, %b), replica_groups={}
  %ag = f32[16,8,8,3]{3,2,1,0} all-gather(f32[4,8,8,3]{3,2,1,0} %x), dimensions={0}
  %ags = ((f32[4,21]{1,0}), f32[16,21]{1,0}) all-gather-start(%y), dimensions={0}
  %agd = f32[16,21]{1,0} all-gather-done(%ags)
  %ar2 = f32[16,441]{1,0} all-reduce(%g), to_apply=%add
  %cp = f32[2]{0} collective-permute(%z), source_target_pairs={{0,1}}
"""


def test_collectives_are_read_from_hlo():
  found = aot.collectives(_HLO)
  assert [c["kind"] for c in found] == [
    "all-reduce",
    "all-gather",
    "all-gather",
    "all-reduce",
    "collective-permute",
  ]
  assert found[0]["bytes"] == (9 * 64 + 8) * 4
  assert found[1]["bytes"] == 16 * 8 * 8 * 3 * 4  # the result, not the operand
  assert found[2]["shapes"] == [(16, 21)]  # an async start counts its result once


def test_batch_sized_collectives_break_the_sharding_rule():
  found = aot.collectives(_HLO)
  bad = aot.sharding_violations(found, 16, param_sizes=frozenset({16 * 441}))
  assert any("batch-sized all-gather of (16, 8, 8, 3)" in b for b in bad)
  assert any("(16, 21)" in b for b in bad)
  assert not any("441" in b for b in bad)  # gradient-shaped: the data-parallel reduction
  assert not any("collective-permute" in b for b in bad)  # 8 bytes of bookkeeping
  assert aot.sharding_violations(found[:1], 16) == []


def test_cpu_only_paths_are_found(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  frames = 'FunctionNames\n21 "Conv2d._conv"\n22 "_conv_gemm_grad_fwd"\n47 "conv_gemm_grad"\n'
  assert aot.cpu_path_violations(frames) == [
    "the CPU-only GEMM convolution gradient (model.conv_backward='gemm')"
  ]
  xla = (
    'FunctionNames\n21 "Conv2d._conv"\n23 "_conv"\nop_name="jit(f)/alternate/conv_general_dilated"'
  )
  assert aot.cpu_path_violations(xla) == []
  lapack = 'custom-call(), custom_call_target="lapack_sgetrf_ffi"'
  assert aot.cpu_path_violations(lapack) == ["the CPU-only custom call lapack_sgetrf_ffi"]
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
  assert "XLA:CPU flags" in aot.cpu_path_violations("")[0]
  assert aot.cpu_path_violations("", xla_flags="--xla_dump_to=/tmp") == []


def _program(lower):
  return aot.Program("train", 8, "8x8 LR", lower, 4)


def test_a_program_the_compiler_refuses_does_not_fit():
  def lower(batch):
    raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 40G")

  out = aot.compile_program(_program(lower), 8, 16 << 30)
  assert out["fits"] is False and "RESOURCE_EXHAUSTED" in out["note"]
  # Any other compiler failure is the row's error (the command exits 1), not a traceback.
  out = aot.compile_program(_program(mock.Mock(side_effect=RuntimeError("INTERNAL: tiles"))), 8, 1)
  assert out["error"] == "RuntimeError: INTERNAL: tiles" and "fits" not in out


@pytest.mark.parametrize(
  "limit,start,expected", [(44, 8, 44), (44, 64, 44), (7, 8, 4), (3, 8, None)]
)
def test_max_batch_doubles_then_bisects(limit, start, expected):
  calls = []

  def fake(prog, batch, hbm):
    calls.append(batch)
    return {"fits": batch <= limit}

  with mock.patch.object(aot, "compile_program", fake):
    found, used, exact = aot.max_batch(_program(None), start, start <= limit, 0, budget=8)
  assert found == expected and used == len(calls) <= 8 and exact
  assert all(b % 4 == 0 for b in calls)


def test_max_batch_stops_at_its_budget():
  with mock.patch.object(aot, "compile_program", lambda p, b, h: {"fits": True}):
    assert aot.max_batch(_program(None), 8, True, 0, budget=3) == (64, 3, False)


def test_abstract_state_is_the_real_states_shape():
  config = config_lib.load(TEST_CONFIG)
  spec = models.spec_from_config(config.model)
  model = models.create_model(spec)
  tx = steps.create_optimizer(config, steps.create_learning_rate_fn(config))
  real = state_template(spec, model, tx, True)
  shapes = abstract_state(spec, model, tx, True)
  as_shape = lambda x: (tuple(np.shape(x)), np.result_type(x).name)
  assert jax.tree_util.tree_map(as_shape, real) == jax.tree_util.tree_map(
    lambda s: (tuple(s.shape), np.dtype(s.dtype).name), shapes
  )


def test_a_gemm_config_is_refused_for_accelerators():
  config = config_lib.load_with_overrides(TEST_CONFIG, ["--config.model.conv_backward=gemm"])
  with pytest.raises(ConfigError, match="CPU only"):
    aot._target_spec(config, "tpu")
  assert aot._target_spec(config, "cpu").conv_backward == "gemm"
  auto = config_lib.load(TEST_CONFIG)
  assert aot._target_spec(auto, "tpu").conv_backward == "xla"


def test_dcls_remat_auto_is_resolved_for_the_target():
  # DCLS's remat "auto": groups recomputed on the CPU, none on GPUs/TPUs (the activations
  # fit there and the step is 21% cheaper); an explicit mode is kept for every target.
  dcls = config_lib.load("configs/x4.py:dcls")  # the official recipe
  assert dcls.model.remat == "auto"
  assert aot._target_spec(dcls, "tpu").remat == aot._target_spec(dcls, "cuda").remat == "none"
  assert aot._target_spec(dcls, "cpu").remat == "auto"  # resolved by the CPU at trace time
  dcls.model.remat = "groups"
  assert aot._target_spec(dcls, "tpu").remat == "groups"


# ---- real compiles for TPU topologies (libtpu) ----


@needs_libtpu
@pytest.mark.parametrize(
  "name,chips,hosts",
  [("v5e:2x2", 4, 1), ("v5e:2x4", 8, 1), ("v4:2x2x4", 16, 4), ("v5e:16x16", 256, 64)],
)
def test_tpu_topologies(name, chips, hosts):
  topo = topology.get(name)
  assert (topo.chips, topo.hosts) == (chips, hosts)


@needs_libtpu
def test_bad_input_gives_one_error_line(capsys):
  assert aot.main(["--config", TEST_CONFIG, "--topology=v5e:2x2", "--batch_size=10"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --batch_size") and "multiple of 4" in err[0]
  assert aot.main(["--config", TEST_CONFIG, "--topology=v5e:3x3"]) == 2
  assert capsys.readouterr().err.startswith("error: topology 'v5e:3x3' is not one")
  assert aot.main(["--config", "configs/nope.py", "--topology=v5e:2x2"]) == 2
  assert "no such config file" in capsys.readouterr().err
  bad_config = ["--config", TEST_CONFIG, "--topology=v5e:2x2", "--config.model.scale=5"]
  assert aot.main(bad_config) == 2
  assert "model.scale must be one of" in capsys.readouterr().err


@needs_libtpu
@pytest.mark.slow
def test_two_host_train_step_is_data_parallel(tmp_path):
  # The global program every host of a 2-host v4-16 slice runs: one gradient all-reduce.
  # A fresh process as a user runs it (this one's XLA_FLAGS carry the XLA:CPU flag).
  out = tmp_path / "rows.json"
  argv = ["--config", TEST_CONFIG, "--topology=v4:2x2x2", "--what=train", f"--json={out}"]
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {xla_cpu.FLAG}")
  run = subprocess.run(
    [sys.executable, "-m", "dan_jax.aot", *argv, f"--batch_size={BATCH}"],
    capture_output=True,
    text=True,
    env=env,
    cwd=ROOT,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  assert "train" in run.stdout
  (row,) = json.loads(out.read_text())
  assert (row["chips"], row["hosts"], row["chip"]) == (8, 2, "TPU v4")
  assert (row["global_batch"], row["per_chip_batch"]) == (BATCH, 2)
  assert row["violations"] == []  # the command kept its XLA:CPU flag from libtpu
  assert set(row["collectives"]) == {"all-reduce"}
  assert 0 < row["collective_bytes_per_chip"] < 1 << 20
  assert row["hbm_total"] == (
    row["hbm_args"] + row["hbm_temps"] + row["hbm_outputs"] - row["hbm_alias"]
  )
  assert 0 < row["hbm_total"] < row["hbm_chip"] == 32 << 30 and row["fits"]
  assert row["flops_per_chip"] > 0 and row["ideal_step_s"] == pytest.approx(
    row["flops_per_chip"] / 275e12
  )
  assert row["compile_s"] > 0


def _sharding_problems(row):
  """A row's violations but the XLA:CPU flag this test process gave libtpu (conftest)."""
  return [v for v in row.violations if not v.startswith("XLA:CPU flags")]


@needs_libtpu
@pytest.mark.slow
def test_every_program_compiles_for_a_v5e_slice():
  rows = aot.report(TEST_CONFIG, "v5e:2x2", batch_size=BATCH, images=TINY)
  assert [r.program for r in rows] == [
    "train",
    "eval",
    "predict",
    "predict_tile_restore",
    "predict_tile_pool",
  ]
  for r in rows:
    assert r.fits and _sharding_problems(r) == [] and r.hbm_total > 0, r
  assert rows[1].global_batch == 4 and rows[1].precision == "default"
  text = aot.format_table(rows)
  assert "v5e:2x2 TPU v5e" in text and "16.00" in text


@needs_libtpu
@pytest.mark.slow
def test_dcls_train_step_is_data_parallel():
  # DCLS had a global-batch FFT on the CPU mesh; on a TPU slice it must stay per chip.
  (row,) = aot.report(TEST_CONFIG + ":dcls", "v4:2x2x2", batch_size=BATCH, what=["train"])
  assert _sharding_problems(row) == [] and set(row.collectives) == {"all-reduce"}


@needs_libtpu
@pytest.mark.slow
def test_the_gemm_gradient_is_caught_in_a_tpu_program(monkeypatch):
  # What the check exists for: the CPU-only kernel gradient compiled for a TPU (the
  # command refuses such a config; here the refusal is bypassed).
  cpu_spec = aot._target_spec
  monkeypatch.setattr(aot, "_target_spec", lambda config, platform: cpu_spec(config, "cpu"))
  overrides = ["--config.model.conv_backward=gemm"]
  (row,) = aot.report(TEST_CONFIG, "v5e:2x2", batch_size=BATCH, what=["train"], overrides=overrides)
  assert any("GEMM" in v for v in row.violations)


@pytest.mark.skipif(not HAS_CUDA, reason="jax[cuda12] not installed (its own environment)")
@pytest.mark.slow
def test_train_step_compiles_for_eight_h100s(tmp_path):
  # A fresh process: the CUDA plugin registers its compile-only topology at JAX's start.
  out = tmp_path / "rows.json"
  argv = ["--config", TEST_CONFIG, "--topology=h100:8", "--what=train", f"--json={out}"]
  run = subprocess.run(
    [sys.executable, "-m", "dan_jax.aot", *argv, f"--batch_size={BATCH}"],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  (row,) = json.loads(out.read_text())
  assert (row["chips"], row["chip"], row["hosts"]) == (8, "H100 80GB", 1)
  assert row["fits"] and row["violations"] == [] and row["flops_per_chip"] > 0
