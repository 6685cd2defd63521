"""What every model family shares: the spec, the output, generic checks, the family contract.

A family is one module under `models/` (see `Family`); `models.FAMILIES` maps each
version string to it. Families import this module and `layers`, never each other.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SCALES = (2, 3, 4)
# DCLS `remat` modes: what the backward pass recomputes instead of keeping from the forward.
# "none": keep every activation; "groups": keep only each DPCAG group's inputs and recompute
# a group's forward when its gradient is needed; "blocks": the same per DPCAB block; "auto":
# "groups" on the CPU (a third of the memory at no measured cost in speed there), "none" on
# GPUs and TPUs (the official x4 recipe then fits a v5e chip at 8 a chip with 2.3x to spare,
# and the step needs 21% fewer FLOPs: benchmarks/RESULTS.md).
REMAT_MODES = ("none", "groups", "blocks", "auto")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The hashable, validated form of a model config (see `models.spec_from_config`)."""

  version: str = "DANv2"
  scale: int = 4
  nf: int = 64
  nb: int = 10
  ng: int = 5
  in_nc: int = 3
  loops: int = 4
  kernel_size: int = 21
  code_len: int = 10
  estimator_nf: int = 64
  estimator_nb: int = 5
  scan_unroll: int = 1
  dtype: Any = jnp.float32
  conv_backward: str = "auto"
  input_para: int = 256  # DCLS: length of the Estimator's latent (official input_para)
  reduction: int = 4  # DCLS: channel reduction of the CLS branch and the attention
  remat: str = "none"  # DCLS: rematerialisation in the backward pass (see REMAT_MODES)


@flax.struct.dataclass
class ModelOutput:
  """What one forward pass returns; the leading axis is the iteration (1 for one pass).

  Attributes:
    sr: [iterations, B, s*H, s*W, C] super-resolved images, one per iteration.
    code: [iterations, B, code_len] kernel codes (zeros for a family without an estimate).
    kernel: [iterations, B, k, k] estimated kernels, or None (no kernel estimate).
  """

  sr: Array
  code: Array
  kernel: Optional[Array] = None


@dataclasses.dataclass(frozen=True)
class Tiling:
  """What the tiled predictor needs of a family (pure functions of the variables).

  The predictor runs `loops` rounds: `restore` every LR tile with the current code and blend
  the SR tiles; then, when `features` is given, sum the Estimator's per-pixel features over
  the tiles (weighted to a global mean) and turn that pool into the next code with `head`.
  """

  restorer_radius: int  # receptive-field radius of the Restorer, LR pixels
  estimator_radius: int  # of the Estimator's features up to its global pool (0: none)
  loops: int
  exact: bool  # whether an overlap >= 2 * restorer_radius equals whole-image inference
  approximate_why: str  # when not exact: why (for the CLI's note)
  initial_code: Callable[[dict], Array]  # variables -> [1, code_len]
  restore: Callable[[dict, Array, Array], Array]  # (variables, lr [B,h,w,C], code) -> sr
  features: Optional[Callable[[dict, Array, Array], Array]] = None  # (v, sr, lr) -> [B,h,w,c]
  head: Optional[Callable[[dict, Array], tuple]] = None  # (v, pooled [c]) -> (code, kernel)


class Family(Protocol):
  """What a family module exports (see `dan`, `dcls`, `baseline`)."""

  VERSIONS: tuple[str, ...]  # the `model.version` strings it implements
  DEFAULTS: Mapping[str, Any]  # ModelSpec fields whose default differs for this family

  def arch_fields(self, version: str) -> tuple[str, ...]:
    """The fields whose change makes a checkpoint another model."""

  def validate(self, spec: ModelSpec) -> None:
    """Raises ValueError naming the field the family cannot build."""

  def create(self, spec: ModelSpec) -> nn.Module:
    """The module: `apply(variables, lr, initial_code=None, iterations=None) -> ModelOutput`."""

  def init_params(self, params: dict, seed: int, spec: ModelSpec) -> dict:
    """Official re-draws over PyTorch-default params (identity for most families)."""

  def kernel_loss(self, out: ModelOutput, batch: dict) -> Array:
    """Per-iteration [n] kernel term of the training loss."""

  def needs_clean_lr(self, spec: ModelSpec) -> bool:
    """Whether batches carry 'lr_blurred'/'lr_clean' (noise-free LR pairs)."""

  def has_kernel(self, spec: ModelSpec) -> bool:
    """Whether outputs carry a kernel estimate."""

  def fixed_image_size(self, spec: ModelSpec) -> bool:
    """Whether exported artifacts take one LR size."""

  def receptive_fields(self, spec: ModelSpec) -> tuple[int, int]:
    """(Restorer, Estimator-features) receptive-field radii in LR pixels."""

  def tiling(self, spec: ModelSpec) -> Tiling:
    """What tiled inference needs; ValueError when the family cannot be tiled."""

  def official_config(self, version: str, **official_options: Any) -> dict:
    """Our model config fields from the official constructor/YAML options."""

  def official_options(self, state_dict: Mapping[str, np.ndarray]) -> Optional[tuple]:
    """(version, official options) read off an official state_dict; None: not ours."""

  def params_from_torch(
    self, state_dict: Mapping[str, np.ndarray], spec: ModelSpec, pca_matrix: Any = None
  ) -> dict:
    """Official weights -> {'params', 'pca'}; ConversionError when they do not fit."""


# ---------------------------------------------------------------------------------------
# Generic checks and helpers
# ---------------------------------------------------------------------------------------

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_POSITIVE = (
  "nf",
  "nb",
  "in_nc",
  "loops",
  "kernel_size",
  "code_len",
  "estimator_nf",
  "estimator_nb",
  "scan_unroll",
)


def _get(config: Any, name: str, default: Any) -> Any:
  if isinstance(config, Mapping):
    return config.get(name, default)
  return getattr(config, name, default)


def build_spec(model_config: Any, defaults: Mapping[str, Any]) -> ModelSpec:
  """A ModelSpec from a config (ConfigDict or dict), missing fields from `defaults`, checked
  for what every family needs (the family's own `validate` comes after)."""
  fields = {f.name: f.default for f in dataclasses.fields(ModelSpec)}
  known = set(fields) | {"name"}
  keys = set(model_config.keys()) if hasattr(model_config, "keys") else set()
  unknown = sorted(keys - known)
  if unknown:
    raise ValueError(f"unknown model config field(s) {unknown}; known: {sorted(fields)}")
  fields.update(defaults)
  values = {k: _get(model_config, k, d) for k, d in fields.items()}
  dtype = values["dtype"]
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    values["dtype"] = _DTYPES[dtype]
  spec = ModelSpec(**values)
  if spec.scale not in SCALES:
    raise ValueError(f"model.scale must be one of {SCALES}, got {spec.scale!r}")
  check_positive(spec, _POSITIVE)
  if spec.remat not in REMAT_MODES:
    raise ValueError(f"model.remat must be one of {REMAT_MODES}, got {spec.remat!r}")
  if spec.conv_backward not in ("auto", "gemm", "xla"):
    raise ValueError(
      f"model.conv_backward must be 'auto', 'gemm' or 'xla', got {spec.conv_backward!r}"
    )
  if spec.kernel_size % 2 == 0:
    raise ValueError(f"model.kernel_size must be odd, got {spec.kernel_size}")
  if spec.estimator_nf % 2:
    raise ValueError(f"model.estimator_nf must be even, got {spec.estimator_nf}")
  return spec


def check_positive(spec: ModelSpec, names: tuple[str, ...]) -> None:
  for name in names:
    v = getattr(spec, name)
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"model.{name} must be a positive integer, got {v!r}")


def refuse_remat(spec: ModelSpec) -> None:
  """For families without rematerialisation."""
  if spec.remat != "none":
    raise ValueError(
      f"model.remat is for DCLS only (version {spec.version!r}), got {spec.remat!r}; use 'none'"
    )


def remat_mode(spec: ModelSpec, platform: Optional[str] = None) -> str:
  """spec.remat with "auto" resolved for `platform` (default: JAX's default backend)."""
  if spec.remat != "auto":
    return spec.remat
  return "groups" if (platform or jax.default_backend()) == "cpu" else "none"


def gemm_grad(spec: ModelSpec) -> bool:
  """Whether convolutions take the GEMM kernel gradient (`layers.conv_gemm_grad`)."""
  on_cpu = jax.default_backend() == "cpu"
  if spec.conv_backward == "gemm" and not on_cpu:
    # The GEMM gradient is a convolution whose window is the whole activation map:
    # fast with XLA:CPU's dot emitter, pathological on GPU/TPU convolution units.
    raise ValueError(
      f"model.conv_backward = 'gemm' is for the CPU only (backend "
      f"{jax.default_backend()}): use 'auto' or 'xla'"
    )
  return spec.conv_backward == "gemm" or (spec.conv_backward == "auto" and on_cpu)


def l1(a: Array, b: Array) -> Array:
  """Mean absolute difference in float32 (official nn.L1Loss)."""
  return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))
