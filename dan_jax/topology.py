"""Accelerator topologies to compile for without the hardware: TPU slices and GPU hosts.

`get(name)` turns a name such as `v5e:2x4`, `v4:2x2x4` or `h100:8` into compile-only
devices (`jax.experimental.topologies`): a TPU slice through libtpu, a GPU host through
the CUDA plugin and a target description shipped in `dan_jax/gpu_targets/`; `local` is
this host's own devices. `CHIPS` holds what the compiler does not report: each chip's
memory and peak bfloat16 rate.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import re
from typing import Any

from dan_jax.errors import MissingPackageError
from dan_jax.errors import UsageError

GPU_TARGETS_DIR = pathlib.Path(__file__).with_name("gpu_targets")
GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip: memory, peak bfloat16 FLOP/s (dense), and how to make it."""

  name: str  # the topology prefix: v5e, h100...
  platform: str  # "tpu" or "cuda"
  kind: str  # what a user calls it
  hbm_bytes: int
  peak_bf16_flops: float
  megacore: bool = False  # TPU v4/v5p: two cores a chip, one device a chip as on a VM
  target: str = ""  # GPU: the GpuTargetConfig file in GPU_TARGETS_DIR


# Public spec sheets (cloud.google.com/tpu/docs/system-architecture-tpu-vm; NVIDIA data
# sheets, SXM parts, dense bf16 tensor-core rates).
CHIPS = {
  c.name: c
  for c in (
    Chip("v4", "tpu", "TPU v4", 32 * GIB, 275e12, megacore=True),
    Chip("v5e", "tpu", "TPU v5e", 16 * GIB, 197e12),
    Chip("v5p", "tpu", "TPU v5p", 95 * GIB, 459e12, megacore=True),
    Chip("v6e", "tpu", "TPU v6e", 32 * GIB, 918e12),
    Chip("a100_40gb", "cuda", "A100 40GB", 40 * GIB, 312e12, target="a100_40gb.txtpb"),
    Chip("a100_80gb", "cuda", "A100 80GB", 80 * GIB, 312e12, target="a100_80gb.txtpb"),
    Chip("h100", "cuda", "H100 80GB", 80 * GIB, 989e12, target="h100_80gb.txtpb"),
    Chip("h200", "cuda", "H200", 141 * 10**9, 989e12, target="h200.txtpb"),
  )
}
# Chips whose 8-chip slice (v5litepod-8, v6e-8) is one VM with all 8; larger slices have
# hosts of 4 chips, libtpu's default.
SINGLE_HOST_8 = ("v5e", "v6e")
ALIASES = {"a100": "a100_80gb", "h100_80gb": "h100", "v5litepod": "v5e", "v6": "v6e"}

LOCAL = "local"  # this host's devices (jax.devices()): compiled, and runnable
# device_kind substrings -> CHIPS names (most specific first).
_KINDS = (
  ("H200", "h200"),
  ("H100", "h100"),
  ("A100-SXM4-40GB", "a100_40gb"),
  ("A100-PCIE-40GB", "a100_40gb"),
  ("A100", "a100_80gb"),
  ("TPU v4", "v4"),
  ("TPU v5 lite", "v5e"),
  ("TPU v5e", "v5e"),
  ("TPU v5", "v5p"),
  ("TPU v6", "v6e"),
)
# The CUDA compiler's Python plugin, any of which compiles for "cuda".
CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")

INSTALL_HINT = {
  "tpu": 'pip install "dan_jax[aot]" (libtpu, the TPU compiler; no TPU needed)',
  "cuda": 'pip install "jax[cuda12]" or "jax[cuda13]" (own environment; ~5 GB; no GPU needed)',
}


@dataclasses.dataclass
class Topology:
  """Compile-only devices of a slice or host group, and what they are."""

  name: str
  chip: Chip
  devices: list  # compile-only jax devices, one a chip
  hosts: int

  @property
  def chips(self) -> int:
    return len(self.devices)

  @property
  def platform(self) -> str:
    return self.chip.platform

  def describe(self) -> str:
    return f"{self.name} ({self.chips} x {self.chip.kind}, {self.hosts} host(s))"


_FLAGS_AT_LOAD: dict[str, str] = {}


def compiler_flags(platform: str) -> str:
  """XLA_FLAGS as the compiler of `platform` read them when this process loaded it."""
  return _FLAGS_AT_LOAD.get(platform, os.environ.get("XLA_FLAGS", ""))


_NAME_RE = re.compile(r"^([a-z0-9_]+):(\d+(?:x\d+)*)$")


def parse(name: str) -> tuple[Chip, tuple[int, ...]]:
  """('v5e:2x4') -> (the v5e Chip, (2, 4)); UsageError naming the choices."""
  m = _NAME_RE.match(name.strip().lower())
  chip = CHIPS.get(ALIASES.get(m.group(1), m.group(1))) if m else None
  if chip is None:
    raise UsageError(
      f"unknown topology {name!r}: use CHIP:SHAPE with CHIP one of {', '.join(CHIPS)} "
      "(e.g. v5e:2x4, v4:2x2x4, v5e:16x16, h100:8, h100:2x8 = 2 hosts of 8 GPUs), or "
      "'local' for this host's own devices"
    )
  dims = tuple(int(d) for d in m.group(2).split("x"))
  if min(dims) < 1:
    raise UsageError(f"topology {name!r}: every dimension must be at least 1")
  return chip, dims


def require(platform: str) -> None:
  """MissingPackageError naming the install when the compiler of `platform` is absent."""
  modules = {"tpu": ("libtpu",), "cuda": CUDA_PLUGINS}[platform]
  if all(importlib.util.find_spec(m) is None for m in modules):
    raise MissingPackageError(
      f"compiling for {platform.upper()} needs {' or '.join(modules)}, which is not "
      f"installed: {INSTALL_HINT[platform]}"
    )


def gpu_target(chip: Chip) -> str:
  """The GpuTargetConfig text of a GPU chip (package data)."""
  return (GPU_TARGETS_DIR / chip.target).read_text()


def local() -> Topology:
  """This host's own devices (the default backend), as a topology: the chip named by its
  `device_kind` where CHIPS knows it, with the memory the runtime reports."""
  import jax

  devices = jax.devices()
  backend = jax.default_backend()
  platform = "cuda" if backend == "gpu" else backend
  kind = devices[0].device_kind
  known = next((CHIPS[c] for k, c in _KINDS if k in kind), None)
  stats = devices[0].memory_stats() or {}
  hbm = int(stats.get("bytes_limit") or 0)
  if not hbm:
    hbm = known.hbm_bytes if known else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  chip = Chip(
    name=known.name if known else backend,
    platform=platform,
    kind=kind,
    hbm_bytes=hbm,
    peak_bf16_flops=known.peak_bf16_flops if known else float("nan"),
  )
  return Topology(
    name=LOCAL,
    chip=chip,
    devices=devices,
    hosts=len({d.process_index for d in devices}),
  )


def get(name: str) -> Topology:
  """The compile-only devices of topology `name` (see the module docstring)."""
  if name.strip().lower() == LOCAL:
    return local()
  chip, dims = parse(name)
  require(chip.platform)
  # Compile-only: never wait for, or refuse because of, another process holding the TPU.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  # The compiler reads XLA_FLAGS once, when it loads: what it saw is what its programs got.
  _FLAGS_AT_LOAD.setdefault(chip.platform, os.environ.get("XLA_FLAGS", ""))
  from jax._src.lib import _jax  # the error type of the topology calls
  from jax.experimental import topologies

  try:
    if chip.platform == "tpu":
      kwargs: dict[str, Any] = {"chip_config_name": "megacore"} if chip.megacore else {}
      if chip.name in SINGLE_HOST_8 and sorted(dims) == [2, 4]:
        kwargs["chips_per_host_bounds"] = (dims[0], dims[1], 1)  # libtpu's default: 2 hosts
      desc = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{chip.name}:{'x'.join(map(str, dims))}", **kwargs
      )
    else:
      if len(dims) > 2:
        raise UsageError(f"GPU topology {name!r}: use GPUS or HOSTSxGPUS (e.g. h100:8, h100:2x8)")
      hosts, per_host = (1, dims[0]) if len(dims) == 1 else dims
      desc = topologies.get_topology_desc(
        "dan_jax",
        "cuda",
        topology=f"1x{hosts}x{per_host}",
        target_config=gpu_target(chip),
      )
  except (_jax.JaxRuntimeError, NotImplementedError, ValueError) as e:
    if isinstance(e, UsageError):
      raise
    raise UsageError(
      f"topology {name!r} is not one the {chip.kind} compiler knows: "
      f"{str(e).splitlines()[0][:300]} (e.g. v5e:2x2, v5e:2x4, v5e:16x16, v4:2x2x1, "
      "v4:2x2x4, v5p:2x2x1, v6e:2x4, h100:8)"
    ) from e
  devices = list(desc.devices)
  return Topology(
    name=name, chip=chip, devices=devices, hosts=len({d.process_index for d in devices})
  )


def hbm_bytes(topo: Topology) -> int:
  """Memory per chip: the local runtime's or the GPU target's own number, else the spec
  sheet's."""
  if topo.name == LOCAL:
    return topo.chip.hbm_bytes
  if topo.platform == "cuda":
    m = re.search(r"device_memory_size:\s*(\d+)", gpu_target(topo.chip))
    if m:
      return int(m.group(1))
  return topo.chip.hbm_bytes
