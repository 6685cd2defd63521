"""Blur kernels: official isotropic/anisotropic Gaussians, `KernelSpec`, named kernel
spaces, and `config.degradation` -> specs (official `utils/deg_utils.py` kernels).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from typing import Any, Mapping, Union

import numpy as np
import tensorflow as tf

from dan_jax.degradation._common import _check_odd_size
from dan_jax.degradation._common import ArrayLike


def _grid(size: int) -> tuple[tf.Tensor, tf.Tensor]:
  # Official grid: np.arange(-l // 2 + 1., l // 2 + 1.); xx varies along columns.
  ax = np.arange(-size // 2 + 1.0, size // 2 + 1.0)
  xx, yy = np.meshgrid(ax, ax)
  return tf.constant(xx, tf.float64), tf.constant(yy, tf.float64)


def _as_param(x: ArrayLike) -> tf.Tensor:
  x = tf.cast(tf.convert_to_tensor(x), tf.float64)
  if x.shape.rank not in (0, 1):
    raise ValueError(f"kernel parameters must be scalars or (B,) vectors, got shape {x.shape}")
  return x


def _normalize(kernel: tf.Tensor) -> tf.Tensor:
  return kernel / tf.reduce_sum(kernel, axis=(-2, -1), keepdims=True)


def isotropic_gaussian_kernel(size: int, sigma: ArrayLike) -> tf.Tensor:
  """Normalized isotropic Gaussian: (k, k) for scalar sigma, (B, k, k) for a (B,) vector."""
  size = _check_odd_size(size)
  sigma = _as_param(sigma)
  xx, yy = _grid(size)
  s = sigma[..., None, None]
  # float64 like the official numpy code; cast once at the end.
  kernel = tf.exp(-(xx**2 + yy**2) / (2.0 * s**2))
  return tf.cast(_normalize(kernel), tf.float32)


def _quadratic_form(size: int, sigma_x, sigma_y, theta) -> tf.Tensor:
  """x^T Σ^-1 x on the kernel grid (float64), Σ = U diag(sx^2, sy^2) U^T, U = rot(theta)."""
  sx, sy, th = _as_param(sigma_x), _as_param(sigma_y), _as_param(theta)
  xx, yy = _grid(size)
  sx, sy, th = sx[..., None, None], sy[..., None, None], th[..., None, None]
  c, s = tf.cos(th), tf.sin(th)
  # Closed form of inv(U diag(sx^2, sy^2) U^T), U = [[c, -s], [s, c]], applied to (x, y).
  a = c**2 / sx**2 + s**2 / sy**2
  b = c * s * (1.0 / sx**2 - 1.0 / sy**2)
  d = s**2 / sx**2 + c**2 / sy**2
  return a * xx**2 + 2.0 * b * xx * yy + d * yy**2


def _anisotropic_unnormalized(size: int, sigma_x, sigma_y, theta) -> tf.Tensor:
  return tf.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta))


def anisotropic_gaussian_kernel(
  size: int, sigma_x: ArrayLike, sigma_y: ArrayLike, theta: ArrayLike
) -> tf.Tensor:
  """Normalized anisotropic Gaussian with covariance U diag(sx^2, sy^2) U^T, U = rot(theta).

  Scalars give (k, k); (B,) vectors give (B, k, k). theta in radians.
  """
  size = _check_odd_size(size)
  kernel = _anisotropic_unnormalized(size, sigma_x, sigma_y, theta)
  return tf.cast(_normalize(kernel), tf.float32)


def apply_disturbance(kernel: ArrayLike, noise: ArrayLike) -> tf.Tensor:
  """Official "random_disturb": kernel + noise * kernel, then renormalize.

  `noise` has the kernel's shape and is U(0, 0.25) in the official code.
  """
  kernel = tf.cast(tf.convert_to_tensor(kernel), tf.float64)
  noise = tf.cast(tf.convert_to_tensor(noise), tf.float64)
  return tf.cast(_normalize(kernel + noise * kernel), tf.float32)


KERNEL_FAMILIES = ("gaussian", "generalized_gaussian", "plateau", "motion")


@functools.lru_cache(maxsize=64)
def parse_family(family: str) -> tuple[tuple[str, float], ...]:
  """`KernelSpec.family` -> ((name, probability), ...), probabilities summing to 1.

  A single name ("motion") or a mixture "gaussian:0.5,motion:0.5"; a component
  without ":weight" has weight 1, and weights are normalised.
  """
  if not isinstance(family, str) or not family.strip():
    raise ValueError(f"kernel family must be a non-empty string, got {family!r}")
  parts = []
  for item in family.split(","):
    name, sep, weight = item.partition(":")
    name = name.strip()
    if name not in KERNEL_FAMILIES:
      raise ValueError(
        f"unknown kernel family {name!r} in {family!r}; "
        f"expected one of {KERNEL_FAMILIES} or a mixture like "
        "'gaussian:0.5,motion:0.5'"
      )
    try:
      w = float(weight) if sep else 1.0
    except ValueError:
      raise ValueError(
        f"kernel family weight {weight.strip()!r} of {name!r} in {family!r} is not a number"
      ) from None
    if not (math.isfinite(w) and w > 0):
      raise ValueError(f"kernel family weight of {name!r} in {family!r} must be positive, got {w}")
    if any(name == p[0] for p in parts):
      raise ValueError(f"kernel family {name!r} appears twice in {family!r}")
    parts.append((name, w))
  total = sum(w for _, w in parts)
  return tuple((name, w / total) for name, w in parts)


def _check_range(
  lo_name: str, hi_name: str, lo: float, hi: float, *, lower: float, strict: bool = True
) -> None:
  ok = math.isfinite(lo) and math.isfinite(hi) and (lo > lower if strict else lo >= lower)
  if not ok or lo > hi:
    bound = f"> {lower}" if strict else f">= {lower}"
    raise ValueError(
      f"{lo_name} = {lo} and {hi_name} = {hi} must satisfy {bound} {lo_name} <= {hi_name}"
    )


@dataclasses.dataclass(frozen=True)
class KernelSpec:
  """Random blur-kernel distribution (fields named like the `degradation` config).

  The first five fields are the official ones. With `family="gaussian"` (the
  default) sampling is exactly the official setting-1/2 sampler and the
  remaining fields are unused.

  Families (see `sample_kernels`):
    * "gaussian": official (an)isotropic Gaussians (`random_kernels`).
    * "generalized_gaussian": k ∝ exp(-0.5 q^beta), q = x^T Σ^-1 x, beta in
      [beta_min, beta_max] (Real-ESRGAN, betag_range (0.5, 4)).
    * "plateau": k ∝ 1 / (1 + q^beta), beta in [plateau_beta_min,
      plateau_beta_max] (Real-ESRGAN, betap_range (1, 2)).
      Both share sig_min/sig_max/rate_iso with "gaussian" (Σ = U diag(sx², sy²) U^T,
      isotropic with probability rate_iso) and apply `random_disturb` always.
    * "motion": random-walk camera trajectories (`random_motion_kernels`).
    * a mixture "gaussian:0.5,motion:0.5": each kernel drawn from one component
      with the (normalised) probabilities; components share these fields.
  """

  kernel_size: int = 21
  sig_min: float = 0.2
  sig_max: float = 4.0
  rate_iso: float = 1.0
  random_disturb: bool = False
  family: str = "gaussian"
  beta_min: float = 0.5
  beta_max: float = 4.0
  plateau_beta_min: float = 1.0
  plateau_beta_max: float = 2.0
  motion_len_min: float = 4.0  # trajectory arc length range, pixels (shrunk to fit the kernel)
  motion_len_max: float = 16.0
  motion_steps: int = 8  # random-walk segments per trajectory
  motion_turn: float = 0.6  # std of the direction change per segment, radians (0: straight)
  motion_smooth: float = 0.5  # std of the Gaussian smoothing the rasterised path (0: none)

  def __post_init__(self):
    parse_family(self.family)
    _check_range("sig_min", "sig_max", self.sig_min, self.sig_max, lower=0.0)
    if not 0.0 <= self.rate_iso <= 1.0:
      raise ValueError(f"rate_iso must be in [0, 1], got {self.rate_iso}")
    _check_range("beta_min", "beta_max", self.beta_min, self.beta_max, lower=0.0)
    _check_range(
      "plateau_beta_min",
      "plateau_beta_max",
      self.plateau_beta_min,
      self.plateau_beta_max,
      lower=0.0,
    )
    _check_range(
      "motion_len_min",
      "motion_len_max",
      self.motion_len_min,
      self.motion_len_max,
      lower=0.0,
      strict=False,
    )
    if (
      isinstance(self.motion_steps, bool)
      or not isinstance(self.motion_steps, (int, np.integer))
      or self.motion_steps < 1
    ):
      raise ValueError(f"motion_steps must be a positive int, got {self.motion_steps!r}")
    for name in ("motion_turn", "motion_smooth"):
      value = getattr(self, name)
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be >= 0, got {value}")

  @property
  def families(self) -> tuple[tuple[str, float], ...]:
    """`parse_family(self.family)`."""
    return parse_family(self.family)


def setting1_spec(kernel_size: int = 21) -> KernelSpec:
  """Setting 1: isotropic Gaussian, sigma ~ U(0.2, 4.0)."""
  return KernelSpec(kernel_size, 0.2, 4.0, 1.0, False)


def setting2_spec(kernel_size: int = 21) -> KernelSpec:
  """Setting 2: anisotropic, sigma_x, sigma_y ~ U(0.6, 5), theta ~ U(-pi, pi), disturbed.

  The official configs use kernel_size 21 for x4 and 11 for x2.
  """
  return KernelSpec(kernel_size, 0.6, 5.0, 0.0, True)


KERNEL_SPACES = ("iso", "aniso", "generalized", "plateau", "motion", "mixed")


def kernel_space(name: str, kernel_size: int = 21) -> KernelSpec:
  """Named kernel distributions for kernel-space ablations.

    iso          setting 1 (isotropic Gaussian, sigma ~ U(0.2, 4)).
    aniso        setting 2 (anisotropic Gaussian, U(0.6, 5), disturbed).
    generalized  generalized Gaussian, beta ~ Real-ESRGAN (0.5, 4), half isotropic.
    plateau      plateau kernels, beta ~ Real-ESRGAN (1, 2), half isotropic.
    motion       random-walk motion blur, lengths 20%..80% of the kernel width.
    mixed        gaussian 0.4, generalized 0.2, plateau 0.2, motion 0.2.

  The generalized/plateau/mixed spaces keep setting 1's sigma range, so they
  differ from "iso" in kernel shape, not width.
  """
  kernel_size = _check_odd_size(kernel_size)
  span = kernel_size - 1
  common = dict(
    kernel_size=kernel_size,
    sig_min=0.2,
    sig_max=4.0,
    rate_iso=0.5,
    random_disturb=False,
    motion_len_min=0.2 * span,
    motion_len_max=0.8 * span,
  )
  spaces = {
    "iso": lambda: setting1_spec(kernel_size),
    "aniso": lambda: setting2_spec(kernel_size),
    "generalized": lambda: KernelSpec(family="generalized_gaussian", **common),
    "plateau": lambda: KernelSpec(family="plateau", **common),
    "motion": lambda: KernelSpec(family="motion", **common),
    "mixed": lambda: KernelSpec(
      family="gaussian:0.4,generalized_gaussian:0.2,plateau:0.2,motion:0.2", **common
    ),
  }
  if name not in spaces:
    raise ValueError(f"unknown kernel space {name!r}; expected one of {KERNEL_SPACES}")
  return spaces[name]()


def kernel_space_overrides(name: str, kernel_size: int = 21) -> dict[str, Any]:
  """`kernel_space(name)` as `config.degradation` overrides (every field but kernel_size)."""
  fields = dataclasses.asdict(kernel_space(name, kernel_size))
  del fields["kernel_size"]  # tied to the model's kernel size in the config
  return fields


def sample_kernel_params(
  batch: Union[int, tf.Tensor], *, sig_min: float, sig_max: float, rate_iso: float, seed: ArrayLike
) -> dict[str, tf.Tensor]:
  """Draws per-kernel (sigma_x, sigma_y, theta, is_iso) float64/bool vectors of length batch."""
  seed = tf.convert_to_tensor(seed)
  sub = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(4)]
  uni = functools.partial(tf.random.stateless_uniform, [batch], dtype=tf.float64)
  sx = uni(seed=sub[0], minval=sig_min, maxval=sig_max)
  if rate_iso == 1:
    return dict(
      sigma_x=sx, sigma_y=sx, theta=tf.zeros_like(sx), is_iso=tf.ones_like(sx, dtype=tf.bool)
    )
  sy = uni(seed=sub[1], minval=sig_min, maxval=sig_max)
  theta = uni(seed=sub[2], minval=-math.pi, maxval=math.pi)
  is_iso = uni(seed=sub[3]) < rate_iso
  # Intended semantics of the official mixing (see the `random_kernels` docstring).
  sy = tf.where(is_iso, sx, sy)
  theta = tf.where(is_iso, tf.zeros_like(theta), theta)
  return dict(sigma_x=sx, sigma_y=sy, theta=theta, is_iso=is_iso)


def _disturb(k64: tf.Tensor, batch, kernel_size: int, seed: tf.Tensor) -> tf.Tensor:
  noise = tf.random.stateless_uniform(
    [batch, kernel_size, kernel_size],
    seed=tf.random.experimental.stateless_fold_in(seed, 4),
    minval=0.0,
    maxval=0.25,
    dtype=tf.float64,
  )
  return k64 + noise * k64


def random_kernels(
  batch: Union[int, tf.Tensor],
  kernel_size: int,
  *,
  sig_min: float,
  sig_max: float,
  rate_iso: float,
  random_disturb: bool,
  seed: ArrayLike,
  return_params: bool = False,
):
  """Random Gaussian kernels (B, k, k) float32, as official `random_batch_kernel`.

  * rate_iso == 1: isotropic, sigma ~ U(sig_min, sig_max); `random_disturb` is
    ignored (the official isotropic branch ignores it too).
  * otherwise: sigma_x, sigma_y ~ U(sig_min, sig_max), theta ~ U(-pi, pi);
    each kernel is isotropic with probability rate_iso; with random_disturb
    every kernel is multiplied by (1 + U(0, 0.25)) per tap and renormalized.

  Deviation: for 0 < rate_iso < 1 the official code builds the covariance
  before forcing sigma_y = sigma_x, so its "isotropic" draws are actually
  axis-aligned anisotropic; here they are truly isotropic. Both official
  settings (rate_iso 1 and 0) are unaffected.

  Args:
    batch: number of kernels (may be a scalar tensor inside tf.data).
    kernel_size: odd kernel size.
    seed: shape-[2] int tensor for the stateless RNG.
    return_params: also return the dict of `sample_kernel_params`.
  """
  kernel_size = _check_odd_size(kernel_size)
  seed = tf.convert_to_tensor(seed)
  p = sample_kernel_params(batch, sig_min=sig_min, sig_max=sig_max, rate_iso=rate_iso, seed=seed)
  if rate_iso == 1:
    kernels = isotropic_gaussian_kernel(kernel_size, p["sigma_x"])
  else:
    k64 = _anisotropic_unnormalized(kernel_size, p["sigma_x"], p["sigma_y"], p["theta"])
    if random_disturb:
      k64 = _disturb(k64, batch, kernel_size, seed)
    kernels = tf.cast(_normalize(k64), tf.float32)
  return (kernels, p) if return_params else kernels


# --------------------------------------------------------------------------
# Degradation config -> specs
# --------------------------------------------------------------------------

# `config.degradation` keys that are not KernelSpec fields (NoiseSpec's and the
# pipeline's). Anything else unknown is a typo and is rejected.
NOISE_CONFIG_KEYS = (
  "noise_sigma",
  "noise_sigma_max",
  "jpeg_prob",
  "jpeg_quality_min",
  "jpeg_quality_max",
)
NON_KERNEL_CONFIG_KEYS = NOISE_CONFIG_KEYS + ("quantize_lr", "pca_samples")


def _config_items(config: Any) -> dict[str, Any]:
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict: resolves field references
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise ValueError(f"expected a degradation config (mapping), got {type(config).__name__}")
  items = dict(config)
  if "ksize" in items and "kernel_size" not in items:  # official config key
    items["kernel_size"] = items.pop("ksize")
  return items


def _reject_unknown(items: Mapping[str, Any], known: set[str]) -> None:
  unknown = sorted(set(items) - known)
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, sorted(known), n=1)
      hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(
      f"unknown degradation config field(s) {', '.join(hints)}; kernel fields "
      f"are {[f.name for f in dataclasses.fields(KernelSpec)]}, other allowed "
      f"fields {list(NON_KERNEL_CONFIG_KEYS)}"
    )


def _coerce(name: str, value: Any, kind: type) -> Any:
  if kind is bool:
    if not isinstance(value, (bool, np.bool_)):
      raise ValueError(f"degradation field {name} must be a bool, got {value!r}")
    return bool(value)
  if kind is int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f"degradation field {name} must be an int, got {value!r}")
    return int(value)
  if kind is float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
      raise ValueError(f"degradation field {name} must be a number, got {value!r}")
    return float(value)
  if not isinstance(value, str):
    raise ValueError(f"degradation field {name} must be a string, got {value!r}")
  return value


_KERNEL_FIELD_TYPES = {
  "kernel_size": int,
  "random_disturb": bool,
  "family": str,
  "motion_steps": int,
}


def kernel_spec_from_config(config: Union[Mapping[str, Any], Any]) -> KernelSpec:
  """KernelSpec from `config.degradation` (ConfigDict or dict).

  Picks the KernelSpec fields (missing ones keep their defaults), ignores the
  documented non-kernel keys `NON_KERNEL_CONFIG_KEYS` (noise, JPEG,
  quantize_lr, pca_samples) and raises ValueError naming any other key, so a
  misspelled field cannot silently fall back to a default.
  """
  items = _config_items(config)
  fields = {f.name for f in dataclasses.fields(KernelSpec)}
  _reject_unknown(items, fields | set(NON_KERNEL_CONFIG_KEYS))
  kwargs = {
    k: _coerce(k, v, _KERNEL_FIELD_TYPES.get(k, float)) for k, v in items.items() if k in fields
  }
  return KernelSpec(**kwargs)
