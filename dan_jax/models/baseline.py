"""A plain SR baseline (EDSR-style, no kernel estimation): the control row of every
kernel-space ablation table.

Trained on the same synthesized degradations as the blind methods, with the SR loss only:
conv head, residual blocks (conv, ReLU, conv), a body conv with a skip from the head, and
the pixel-shuffle upsampler. One pass; `code` is zeros and `kernel` None (no estimate).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dan_jax.errors import ConversionError
from dan_jax.models import spec as spec_lib
from dan_jax.models.layers import _opts
from dan_jax.models.layers import Conv2d
from dan_jax.models.layers import ResBlock
from dan_jax.models.layers import Upsampler
from dan_jax.models.spec import ModelOutput
from dan_jax.models.spec import ModelSpec

Array = jax.Array


class Baseline(nn.Module):
  """`model.apply(variables, lr)` with lr [B, H, W, C] in [0, 1] -> ModelOutput (one pass).

  `initial_code` is ignored and `iterations` must be None or 1; both exist so the baseline
  is called like the other families.
  """

  spec: ModelSpec

  @nn.compact
  def __call__(
    self, lr: Array, initial_code: Optional[Array] = None, iterations: Optional[int] = None
  ) -> ModelOutput:
    del initial_code  # nothing is estimated
    s = self.spec
    if lr.ndim != 4 or lr.shape[-1] != s.in_nc:
      raise ValueError(f"lr must be [B, H, W, {s.in_nc}], got shape {lr.shape}")
    if iterations not in (None, 1):
      raise ValueError(f"the baseline runs one pass; iterations must be 1, got {iterations}")
    # The PCA matrix stays a variable, as in every family (checkpoints, codes of the data).
    self.variable("pca", "matrix", jnp.zeros, (s.kernel_size**2, s.code_len), jnp.float32)
    sr = Restorer(s.nf, s.nb, s.scale, s.in_nc, s.dtype, spec_lib.gemm_grad(s), name="restorer")(
      lr.astype(jnp.float32)
    )
    code = jnp.zeros((1, lr.shape[0], s.code_len), jnp.float32)
    return ModelOutput(sr=sr[None], code=code, kernel=None)


class Restorer(nn.Module):
  """Head conv, `nb` residual blocks and a conv with a skip from the head, upsampler."""

  nf: int = 64
  nb: int = 16
  scale: int = 4
  out_nc: int = 3
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, lr: Array) -> Array:
    head = Conv2d(self.nf, 3, padding=1, **_opts(self), name="head")(lr)
    f = head
    for i in range(self.nb):
      f = ResBlock(negative_slope=0.0, **_opts(self), name=f"block{i}")(f)
    f = Conv2d(self.nf, 3, padding=1, **_opts(self), name="body_out")(f) + head
    sr = Upsampler(self.nf, self.scale, self.out_nc, **_opts(self), name="upsample")(f)
    return sr.astype(jnp.float32)


# ---------------------------------------------------------------------------------------
# The family contract (models.spec.Family)
# ---------------------------------------------------------------------------------------

VERSIONS = ("baseline",)
DEFAULTS = {"loops": 1, "nb": 16}
ARCH_FIELDS = ("version", "scale", "nf", "nb", "in_nc", "loops", "kernel_size", "code_len")


def arch_fields(version: str) -> tuple[str, ...]:
  del version
  return ARCH_FIELDS


def validate(spec: ModelSpec) -> None:
  if spec.loops != 1:
    raise ValueError(f"model.loops must be 1 for the baseline (one pass), got {spec.loops!r}")
  spec_lib.refuse_remat(spec)


def create(spec: ModelSpec) -> nn.Module:
  return Baseline(spec)


def init_params(params: dict, seed: int, spec: ModelSpec) -> dict:
  del seed, spec  # PyTorch's default init
  return params


def has_kernel(spec: ModelSpec) -> bool:
  del spec
  return False


def kernel_loss(out: ModelOutput, batch: dict) -> Array:
  """No kernel term: zeros, one per iteration."""
  del batch
  return jnp.zeros(out.sr.shape[:1], jnp.float32)


def needs_clean_lr(spec: ModelSpec) -> bool:
  del spec
  return False


def fixed_image_size(spec: ModelSpec) -> bool:
  del spec
  return False


def receptive_fields(spec: ModelSpec) -> tuple[int, int]:
  """Head, two 3x3 convs per block, body conv, upsampler (+1: the SR-to-LR pixel offset)."""
  return 1 + 2 * spec.nb + 1 + 2 + 1, 0


def tiling(spec: ModelSpec) -> spec_lib.Tiling:
  """Convolutions only: tiles with an overlap of twice the receptive field are exact."""
  model = Baseline(spec)

  def restore(variables, lr, code):
    del code
    return model.apply(variables, lr).sr[0]

  return spec_lib.Tiling(
    restorer_radius=receptive_fields(spec)[0],
    estimator_radius=0,
    loops=1,
    exact=True,
    approximate_why="",
    initial_code=lambda variables: jnp.zeros((1, spec.code_len), jnp.float32),
    restore=restore,
  )


def official_config(version: str, **official_options: Any) -> dict:
  del official_options
  raise ValueError(f"{version} has no official weights to convert")


def official_options(state_dict: Mapping[str, np.ndarray]) -> Optional[tuple[str, dict]]:
  del state_dict
  return None  # no official weights


def params_from_torch(
  state_dict: Mapping[str, np.ndarray], spec: ModelSpec, pca_matrix: Any = None
) -> dict:
  del state_dict, pca_matrix
  raise ConversionError(f"{spec.version} has no official weights to convert")
