"""Synthetic blind-SR degradations (blur -> bicubic downsampling -> noise) in TensorFlow.

This reproduces the degradation model of the official DAN code (greatlog/DAN,
`utils/deg_utils.py`, `data/util.py`, `scripts/generate_mod_blur_LR_bic.py`,
`config/DANv*/creat_PCA.py`), and extends it for kernel-space ablations: kernel
families beyond the official Gaussians (`KernelSpec.family`: generalized
Gaussian and plateau kernels as in Real-ESRGAN, random-trajectory motion blur,
mixtures; named spaces in `kernel_space`), noise level ranges and JPEG
(`NoiseSpec`), all driven by `config.degradation` (`kernel_spec_from_config`,
`noise_spec_from_config`, `synthesize`). Every image/kernel function is written with
TensorFlow ops only, so the same code runs

* inside `tf.data` `map` functions (graph mode, parallel, deterministic with
  stateless seeds), and
* eagerly on numpy arrays (evaluation sets, notebooks, tests): pass numpy in,
  get `tf.Tensor` out and call `.numpy()`.

Conventions:
  * Images are float in [0, 1], channels last: HWC or BHWC. Computation and
    outputs are float32. Integer images are rejected with `ValueError` by
    `blur`, `imresize`, `degrade` and `quantize_8bit` (a silent uint8 -> float
    conversion would make the [0, 255] vs [0, 1] range ambiguous); only the
    Gaussian8 helpers (`make_gaussian8_lr`, `write_gaussian8_set`) accept uint8
    and divide by 255 like the official `img2tensor`.
  * Kernels are (k, k) or (B, k, k), rows = image y axis, columns = x axis,
    applied as a cross-correlation (exactly like `F.conv2d` in the official
    `BatchBlur`; this matters for anisotropic kernels).
  * Noise levels are standard deviations in [0, 1] image units (the official
    `b_GaussianNoising` adds `N(0, noise_high)` to [0, 1] images; use e.g.
    `15 / 255` for "noise level 15").
  * Random sampling uses stateless TF ops with `seed` = shape-[2] int tensor.

This module must not import jax/flax or the model: it is used by input
pipelines that run on the host.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from dan_jax import storage

ArrayLike = Union[np.ndarray, tf.Tensor, float, Sequence[float]]

SUPPORTED_SCALES = (2, 3, 4)
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _check_odd_size(size: Any, what: str = "kernel size") -> int:
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
    raise ValueError(f"{what} must be a Python int, got {size!r}")
  size = int(size)
  if size < 1 or size % 2 == 0:
    raise ValueError(f"{what} must be a positive odd integer, got {size}")
  return size


def _check_scale(scale: Any) -> int:
  if isinstance(scale, bool) or scale not in SUPPORTED_SCALES:
    raise ValueError(
        f"scale must be one of {SUPPORTED_SCALES} (integer SR factor), got {scale!r}")
  return int(scale)


def _to_float_image(img: ArrayLike, name: str = "image") -> tf.Tensor:
  """Converts to a float32 tensor, rejecting integer/bool inputs."""
  dtype = getattr(img, "dtype", None)
  if dtype is None:
    img = np.asarray(img)
    dtype = img.dtype
  if not tf.as_dtype(dtype).is_floating:
    raise ValueError(
        f"{name} must be a floating-point array in [0, 1], got dtype {tf.as_dtype(dtype).name}; "
        "convert integer images with `img.astype(np.float32) / 255` first")
  img = tf.convert_to_tensor(img)
  if img.shape.rank not in (3, 4):
    raise ValueError(f"{name} must be HWC or BHWC (rank 3 or 4), got shape {img.shape}")
  return tf.cast(img, tf.float32)


def _to_kernel(kernel: ArrayLike) -> tf.Tensor:
  dtype = getattr(kernel, "dtype", None)
  if dtype is not None and not tf.as_dtype(dtype).is_floating:
    raise ValueError(f"kernel must be floating point, got dtype {tf.as_dtype(dtype).name}")
  kernel = tf.cast(tf.convert_to_tensor(kernel), tf.float32)
  if kernel.shape.rank not in (2, 3):
    raise ValueError(f"kernel must be (k, k) or (B, k, k), got shape {kernel.shape}")
  kh, kw = kernel.shape[-2], kernel.shape[-1]
  if kh is None or kw is None:
    raise ValueError("kernel spatial size must be static")
  if kh != kw:
    raise ValueError(f"kernel must be square, got {kh}x{kw}")
  return kernel


# --------------------------------------------------------------------------
# Gaussian kernels
# --------------------------------------------------------------------------


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


def anisotropic_gaussian_kernel(size: int, sigma_x: ArrayLike, sigma_y: ArrayLike,
                                theta: ArrayLike) -> tf.Tensor:
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
      raise ValueError(f"unknown kernel family {name!r} in {family!r}; "
                       f"expected one of {KERNEL_FAMILIES} or a mixture like "
                       "'gaussian:0.5,motion:0.5'")
    try:
      w = float(weight) if sep else 1.0
    except ValueError:
      raise ValueError(f"kernel family weight {weight.strip()!r} of {name!r} in {family!r} "
                       "is not a number") from None
    if not (math.isfinite(w) and w > 0):
      raise ValueError(f"kernel family weight of {name!r} in {family!r} must be positive, "
                       f"got {w}")
    if any(name == p[0] for p in parts):
      raise ValueError(f"kernel family {name!r} appears twice in {family!r}")
    parts.append((name, w))
  total = sum(w for _, w in parts)
  return tuple((name, w / total) for name, w in parts)


def _check_range(lo_name: str, hi_name: str, lo: float, hi: float, *, lower: float,
                 strict: bool = True) -> None:
  ok = math.isfinite(lo) and math.isfinite(hi) and (lo > lower if strict else lo >= lower)
  if not ok or lo > hi:
    bound = f"> {lower}" if strict else f">= {lower}"
    raise ValueError(f"{lo_name} = {lo} and {hi_name} = {hi} must satisfy "
                     f"{bound} {lo_name} <= {hi_name}")


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
    _check_range("plateau_beta_min", "plateau_beta_max", self.plateau_beta_min,
                 self.plateau_beta_max, lower=0.0)
    _check_range("motion_len_min", "motion_len_max", self.motion_len_min, self.motion_len_max,
                 lower=0.0, strict=False)
    if (isinstance(self.motion_steps, bool) or not isinstance(self.motion_steps, (int, np.integer))
        or self.motion_steps < 1):
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
  common = dict(kernel_size=kernel_size, sig_min=0.2, sig_max=4.0, rate_iso=0.5,
                random_disturb=False, motion_len_min=0.2 * span, motion_len_max=0.8 * span)
  spaces = {
      "iso": lambda: setting1_spec(kernel_size),
      "aniso": lambda: setting2_spec(kernel_size),
      "generalized": lambda: KernelSpec(family="generalized_gaussian", **common),
      "plateau": lambda: KernelSpec(family="plateau", **common),
      "motion": lambda: KernelSpec(family="motion", **common),
      "mixed": lambda: KernelSpec(
          family="gaussian:0.4,generalized_gaussian:0.2,plateau:0.2,motion:0.2", **common),
  }
  if name not in spaces:
    raise ValueError(f"unknown kernel space {name!r}; expected one of {KERNEL_SPACES}")
  return spaces[name]()


def kernel_space_overrides(name: str, kernel_size: int = 21) -> dict[str, Any]:
  """`kernel_space(name)` as `config.degradation` overrides (every field but kernel_size)."""
  fields = dataclasses.asdict(kernel_space(name, kernel_size))
  del fields["kernel_size"]  # tied to the model's kernel size in the config
  return fields


def sample_kernel_params(batch: Union[int, tf.Tensor], *, sig_min: float, sig_max: float,
                         rate_iso: float, seed: ArrayLike) -> dict[str, tf.Tensor]:
  """Draws per-kernel (sigma_x, sigma_y, theta, is_iso) float64/bool vectors of length batch."""
  seed = tf.convert_to_tensor(seed)
  sub = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(4)]
  uni = functools.partial(tf.random.stateless_uniform, [batch], dtype=tf.float64)
  sx = uni(seed=sub[0], minval=sig_min, maxval=sig_max)
  if rate_iso == 1:
    return dict(sigma_x=sx, sigma_y=sx, theta=tf.zeros_like(sx),
                is_iso=tf.ones_like(sx, dtype=tf.bool))
  sy = uni(seed=sub[1], minval=sig_min, maxval=sig_max)
  theta = uni(seed=sub[2], minval=-math.pi, maxval=math.pi)
  is_iso = uni(seed=sub[3]) < rate_iso
  # Intended semantics of the official mixing (see the `random_kernels` docstring).
  sy = tf.where(is_iso, sx, sy)
  theta = tf.where(is_iso, tf.zeros_like(theta), theta)
  return dict(sigma_x=sx, sigma_y=sy, theta=theta, is_iso=is_iso)


def _disturb(k64: tf.Tensor, batch, kernel_size: int, seed: tf.Tensor) -> tf.Tensor:
  noise = tf.random.stateless_uniform(
      [batch, kernel_size, kernel_size], seed=tf.random.experimental.stateless_fold_in(seed, 4),
      minval=0.0, maxval=0.25, dtype=tf.float64)
  return k64 + noise * k64


def random_kernels(batch: Union[int, tf.Tensor], kernel_size: int, *, sig_min: float,
                   sig_max: float, rate_iso: float, random_disturb: bool, seed: ArrayLike,
                   return_params: bool = False):
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
  p = sample_kernel_params(batch, sig_min=sig_min, sig_max=sig_max, rate_iso=rate_iso,
                           seed=seed)
  if rate_iso == 1:
    kernels = isotropic_gaussian_kernel(kernel_size, p["sigma_x"])
  else:
    k64 = _anisotropic_unnormalized(kernel_size, p["sigma_x"], p["sigma_y"], p["theta"])
    if random_disturb:
      k64 = _disturb(k64, batch, kernel_size, seed)
    kernels = tf.cast(_normalize(k64), tf.float32)
  return (kernels, p) if return_params else kernels


# --------------------------------------------------------------------------
# Kernel families beyond the official Gaussians (Real-ESRGAN shapes, motion)
# --------------------------------------------------------------------------


def generalized_gaussian_kernel(size: int, sigma_x: ArrayLike, sigma_y: ArrayLike,
                                theta: ArrayLike, beta: ArrayLike) -> tf.Tensor:
  """Normalized generalized Gaussian exp(-0.5 (x^T Σ^-1 x)^beta) (Real-ESRGAN).

  Σ = U diag(sx^2, sy^2) U^T, U = rot(theta), as `anisotropic_gaussian_kernel`
  (beta = 1 gives it). Scalars give (k, k); (B,) vectors give (B, k, k).
  """
  size = _check_odd_size(size)
  q = _quadratic_form(size, sigma_x, sigma_y, theta)
  kernel = tf.exp(-0.5 * tf.pow(q, _as_param(beta)[..., None, None]))
  return tf.cast(_normalize(kernel), tf.float32)


def plateau_kernel(size: int, sigma_x: ArrayLike, sigma_y: ArrayLike, theta: ArrayLike,
                   beta: ArrayLike) -> tf.Tensor:
  """Normalized plateau kernel 1 / (1 + (x^T Σ^-1 x)^beta) (Real-ESRGAN); Σ as above."""
  size = _check_odd_size(size)
  q = _quadratic_form(size, sigma_x, sigma_y, theta)
  kernel = 1.0 / (1.0 + tf.pow(q, _as_param(beta)[..., None, None]))
  return tf.cast(_normalize(kernel), tf.float32)


def _sample_beta(batch, lo: float, hi: float, seed: tf.Tensor) -> tf.Tensor:
  uni = functools.partial(tf.random.stateless_uniform, [batch], dtype=tf.float64)
  fold = tf.random.experimental.stateless_fold_in
  if not lo < 1.0 < hi:
    return uni(seed=fold(seed, 0), minval=lo, maxval=hi)
  # Real-ESRGAN: half the shapes lighter-tailed (beta < 1), half heavier (beta > 1),
  # however asymmetric the range is around 1.
  below = uni(seed=fold(seed, 0), minval=lo, maxval=1.0)
  above = uni(seed=fold(seed, 1), minval=1.0, maxval=hi)
  return tf.where(uni(seed=fold(seed, 2)) < 0.5, below, above)


def random_shaped_kernels(batch: Union[int, tf.Tensor], kernel_size: int, family: str, *,
                          sig_min: float, sig_max: float, rate_iso: float, beta_min: float,
                          beta_max: float, random_disturb: bool, seed: ArrayLike,
                          return_params: bool = False):
  """Random generalized-Gaussian or plateau kernels (B, k, k) float32.

  sigma_x, sigma_y, theta and isotropy are drawn exactly like `random_kernels`
  (same seed -> same values). beta ~ U(beta_min, beta_max), except that a range
  straddling 1 is split like Real-ESRGAN: beta ~ U(beta_min, 1) or U(1,
  beta_max) with probability 1/2 each. With random_disturb, every kernel gets
  the official multiplicative tap noise (also isotropic ones).

  Args:
    family: "generalized_gaussian" or "plateau".
    return_params: also return the params dict (with "beta").
  """
  if family not in ("generalized_gaussian", "plateau"):
    raise ValueError(f"family must be 'generalized_gaussian' or 'plateau', got {family!r}")
  kernel_size = _check_odd_size(kernel_size)
  seed = tf.convert_to_tensor(seed)
  p = sample_kernel_params(batch, sig_min=sig_min, sig_max=sig_max, rate_iso=rate_iso,
                           seed=seed)
  p["beta"] = _sample_beta(batch, beta_min, beta_max,
                           tf.random.experimental.stateless_fold_in(seed, 5))
  q = _quadratic_form(kernel_size, p["sigma_x"], p["sigma_y"], p["theta"])
  qb = tf.pow(q, p["beta"][:, None, None])
  k64 = tf.exp(-0.5 * qb) if family == "generalized_gaussian" else 1.0 / (1.0 + qb)
  if random_disturb:
    k64 = _disturb(k64, batch, kernel_size, seed)
  kernels = tf.cast(_normalize(k64), tf.float32)
  return (kernels, p) if return_params else kernels


def motion_kernel(size: int, trajectory: ArrayLike, smooth: float = 0.0) -> tf.Tensor:
  """Rasterises camera trajectories into normalized blur kernels.

  Args:
    size: odd kernel size k.
    trajectory: (P, 2) or (B, P, 2) points (x, y) in pixels relative to the
      kernel centre (x along columns, y along rows), equally weighted; points
      beyond the kernel are clamped onto its border.
    smooth: std (pixels) of a Gaussian applied to the rasterised path (0: none).
  Returns:
    (k, k) or (B, k, k) float32. Each point is splatted bilinearly, i.e. with
    the separable tent max(0, 1 - |t|), so the kernel's centre of mass is the
    mean of the points.
  """
  size = _check_odd_size(size)
  pts = tf.cast(tf.convert_to_tensor(trajectory), tf.float64)
  if pts.shape.rank not in (2, 3) or pts.shape[-1] != 2:
    raise ValueError(f"trajectory must be (P, 2) or (B, P, 2), got shape {pts.shape}")
  if not (math.isfinite(smooth) and smooth >= 0):
    raise ValueError(f"smooth must be >= 0, got {smooth}")
  half = size // 2
  pts = tf.clip_by_value(pts, -float(half), float(half))
  ax = np.arange(-half, half + 1, dtype=np.float64)
  wx = tf.nn.relu(1.0 - tf.abs(pts[..., 0, None] - ax))  # (..., P, k) column weights
  wy = tf.nn.relu(1.0 - tf.abs(pts[..., 1, None] - ax))  # (..., P, k) row weights
  kernel = tf.matmul(wy, wx, transpose_a=True)  # sum over points of outer(wy, wx)
  if smooth > 0:
    # Separable Gaussian blur as G K G^T (G symmetric); mass pushed past the border is
    # dropped, which `random_motion_trajectories` avoids by keeping paths inside.
    g = tf.constant(np.exp(-(ax[:, None] - ax[None, :])**2 / (2.0 * smooth**2)))
    kernel = tf.matmul(tf.matmul(g, kernel), g)
  return tf.cast(_normalize(kernel), tf.float32)


def random_motion_trajectories(batch: Union[int, tf.Tensor], kernel_size: int, *,
                               len_min: float, len_max: float, steps: int, turn: float,
                               smooth: float = 0.0, seed: ArrayLike) -> tf.Tensor:
  """Random-walk camera paths (B, P, 2) float64, centred and fitted to the kernel.

  A path has `steps` equal segments, total arc length L ~ U(len_min, len_max),
  initial direction ~ U(-pi, pi) and a direction change ~ N(0, turn^2) at each
  vertex. It is sampled at P evenly spaced points (segment midpoints, several
  per pixel), shifted so their mean is the kernel centre, and shrunk about the
  centre when it would leave the kernel (keeping a ceil(2 * smooth) pixel
  border for the smoothing).
  """
  kernel_size = _check_odd_size(kernel_size)
  seed = tf.convert_to_tensor(seed)
  fold = tf.random.experimental.stateless_fold_in
  uni = functools.partial(tf.random.stateless_uniform, dtype=tf.float64)
  length = uni([batch], seed=fold(seed, 0), minval=len_min, maxval=len_max)
  theta0 = uni([batch, 1], seed=fold(seed, 1), minval=-math.pi, maxval=math.pi)
  dtheta = tf.random.stateless_normal([batch, steps], seed=fold(seed, 2), dtype=tf.float64)
  angles = theta0 + turn * tf.cumsum(dtheta, axis=1, exclusive=True)
  seg = tf.stack([tf.cos(angles), tf.sin(angles)], -1) * (length / steps)[:, None, None]
  starts = tf.cumsum(seg, axis=1, exclusive=True)  # (B, steps, 2) segment start points
  per_seg = max(2, math.ceil(4.0 * len_max / steps))  # >= 4 samples per pixel of path
  t = tf.constant((np.arange(per_seg) + 0.5) / per_seg)[None, None, :, None]
  pts = tf.reshape(starts[:, :, None] + t * seg[:, :, None], [batch, steps * per_seg, 2])
  pts = pts - tf.reduce_mean(pts, axis=1, keepdims=True)
  room = max(kernel_size // 2 - math.ceil(2.0 * smooth), 0)
  extent = tf.reduce_max(tf.abs(pts), axis=(1, 2))
  shrink = tf.minimum(float(room) / tf.maximum(extent, 1e-12), 1.0)
  return pts * shrink[:, None, None]


def random_motion_kernels(batch: Union[int, tf.Tensor], kernel_size: int, *, len_min: float,
                          len_max: float, steps: int, turn: float, smooth: float,
                          random_disturb: bool = False, seed: ArrayLike,
                          return_trajectory: bool = False):
  """Random motion-blur kernels (B, k, k) float32 from `random_motion_trajectories`.

  With random_disturb the official multiplicative tap noise is applied (it only
  modulates the path, zero taps stay zero). return_trajectory also returns the
  (B, P, 2) path rasterised.
  """
  kernel_size = _check_odd_size(kernel_size)
  seed = tf.convert_to_tensor(seed)
  pts = random_motion_trajectories(batch, kernel_size, len_min=len_min, len_max=len_max,
                                   steps=steps, turn=turn, smooth=smooth, seed=seed)
  kernels = motion_kernel(kernel_size, pts, smooth)
  if random_disturb:
    k64 = _disturb(tf.cast(kernels, tf.float64), batch, kernel_size, seed)
    kernels = tf.cast(_normalize(k64), tf.float32)
  return (kernels, pts) if return_trajectory else kernels


def _sample_family(batch, s: KernelSpec, name: str, seed: tf.Tensor) -> tf.Tensor:
  if name == "gaussian":
    return random_kernels(batch, s.kernel_size, sig_min=s.sig_min, sig_max=s.sig_max,
                          rate_iso=s.rate_iso, random_disturb=s.random_disturb, seed=seed)
  if name in ("generalized_gaussian", "plateau"):
    lo, hi = ((s.beta_min, s.beta_max) if name == "generalized_gaussian"
              else (s.plateau_beta_min, s.plateau_beta_max))
    return random_shaped_kernels(batch, s.kernel_size, name, sig_min=s.sig_min,
                                 sig_max=s.sig_max, rate_iso=s.rate_iso, beta_min=lo,
                                 beta_max=hi, random_disturb=s.random_disturb, seed=seed)
  return random_motion_kernels(batch, s.kernel_size, len_min=s.motion_len_min,
                               len_max=s.motion_len_max, steps=int(s.motion_steps),
                               turn=s.motion_turn, smooth=s.motion_smooth,
                               random_disturb=s.random_disturb, seed=seed)


# Salts of the mixture's per-component and component-choice streams.
_MIX_COMPONENT_SALT, _MIX_CHOICE_SALT = 1000, 999


def _spec(spec: Union[KernelSpec, Mapping[str, Any]]) -> KernelSpec:
  return spec if isinstance(spec, KernelSpec) else kernel_spec_from_config(spec)


def sample_kernels(batch: Union[int, tf.Tensor], spec: Union[KernelSpec, Mapping[str, Any]],
                   seed: ArrayLike, return_family: bool = False):
  """Random kernels (B, k, k) float32 from a KernelSpec or a `degradation` config.

  family "gaussian" is `random_kernels` (the official sampler, unchanged).
  A single family uses `seed` directly; a mixture draws every component for
  the whole batch from its own sub-seed and picks one per kernel.

  Args:
    batch: number of kernels (may be a scalar tensor inside tf.data).
    spec: KernelSpec, or a mapping accepted by `kernel_spec_from_config`.
    seed: shape-[2] int tensor for the stateless RNG.
    return_family: also return (B,) int32 indices into `spec.families`.
  """
  s = _spec(spec)
  seed = tf.convert_to_tensor(seed)
  families = s.families
  if len(families) == 1:
    kernels = _sample_family(batch, s, families[0][0], seed)
    which = tf.zeros([batch], tf.int32)
  else:
    fold = tf.random.experimental.stateless_fold_in
    stacked = tf.stack([_sample_family(batch, s, name, fold(seed, _MIX_COMPONENT_SALT + i))
                        for i, (name, _) in enumerate(families)], axis=1)  # (B, F, k, k)
    u = tf.random.stateless_uniform([batch, 1], seed=fold(seed, _MIX_CHOICE_SALT),
                                    dtype=tf.float64)
    bounds = tf.constant(np.cumsum([w for _, w in families])[:-1])
    which = tf.reduce_sum(tf.cast(u >= bounds[None], tf.int32), axis=1)
    kernels = tf.gather(stacked, which, axis=1, batch_dims=1)
  return (kernels, which) if return_family else kernels


def make_kernel_sampler(spec: Union[KernelSpec, Mapping[str, Any]],
                        chunk: int = 4096) -> Callable[[int, int], np.ndarray]:
  """Returns `(n, seed) -> (n, k, k) float32 numpy` drawing from `spec` (for `build_pca`).

  Works for every family and mixture, so `build_pca(make_kernel_sampler(spec))`
  fits the PCA to the kernel space being trained on.
  """
  spec = _spec(spec)

  def sampler(n: int, seed: int) -> np.ndarray:
    out = []
    for i, start in enumerate(range(0, n, chunk)):
      m = min(chunk, n - start)
      out.append(sample_kernels(m, spec, tf.constant([seed, i], tf.int64)).numpy())
    return np.concatenate(out, axis=0)
  return sampler


# --------------------------------------------------------------------------
# Degradation config -> specs
# --------------------------------------------------------------------------

# `config.degradation` keys that are not KernelSpec fields (NoiseSpec's and the
# pipeline's). Anything else unknown is a typo and is rejected.
NOISE_CONFIG_KEYS = ("noise_sigma", "noise_sigma_max", "jpeg_prob", "jpeg_quality_min",
                     "jpeg_quality_max")
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
    raise ValueError(f"unknown degradation config field(s) {', '.join(hints)}; kernel fields "
                     f"are {[f.name for f in dataclasses.fields(KernelSpec)]}, other allowed "
                     f"fields {list(NON_KERNEL_CONFIG_KEYS)}")


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


_KERNEL_FIELD_TYPES = {"kernel_size": int, "random_disturb": bool, "family": str,
                       "motion_steps": int}


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
  kwargs = {k: _coerce(k, v, _KERNEL_FIELD_TYPES.get(k, float))
            for k, v in items.items() if k in fields}
  return KernelSpec(**kwargs)


# --------------------------------------------------------------------------
# MATLAB-compatible bicubic imresize
# --------------------------------------------------------------------------


def _cubic(x: tf.Tensor) -> tf.Tensor:
  # Keys cubic with a = -0.5 (MATLAB imresize).
  ax = tf.abs(x)
  ax2, ax3 = ax**2, ax**3
  inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * tf.cast(ax <= 1, x.dtype)
  outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * tf.cast((ax > 1) & (ax <= 2), x.dtype)
  return inner + outer


def _resize_matrix(in_len, out_len, scale: float) -> tf.Tensor:
  """Dense (out_len, in_len) float64 matrix of MATLAB bicubic resampling along one axis.

  Symmetric border extension is folded into the matrix: taps that fall outside
  the image are added onto their mirrored pixel. Zero-weight taps that MATLAB
  (and the official port) strip out contribute nothing here, so the result is
  identical.
  """
  antialias = scale < 1
  kernel_width = 4.0 / scale if antialias else 4.0
  x = tf.range(1, tf.cast(out_len, tf.int32) + 1, dtype=tf.float64)
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)
  left = tf.floor(u - kernel_width / 2.0)
  taps = math.ceil(kernel_width) + 2
  idx = left[:, None] + tf.range(taps, dtype=tf.float64)[None, :]
  dist = u[:, None] - idx
  w = scale * _cubic(dist * scale) if antialias else _cubic(dist)
  w = w / tf.reduce_sum(w, axis=1, keepdims=True)
  n = tf.cast(in_len, tf.int32)
  j = tf.cast(idx, tf.int32) - 1  # 1-based MATLAB index -> 0-based
  # Symmetric (edge-including) mirror; loop twice so very small inputs still land inside.
  for _ in range(2):
    j = tf.where(j < 0, -j - 1, j)
    j = tf.where(j >= n, 2 * n - 1 - j, j)
  return tf.einsum("op,opn->on", w, tf.one_hot(j, n, dtype=tf.float64))


@functools.lru_cache(maxsize=256)
def _static_resize_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
  # Evaluated eagerly even while tracing a graph, so static shapes embed a constant.
  with tf.init_scope():
    return _resize_matrix(in_len, out_len, scale).numpy().astype(np.float32)


def _resize_matrix_for(in_len, scale: float):
  if isinstance(in_len, int):
    out_len = math.ceil(in_len * scale)
    if out_len < 1:
      raise ValueError(f"imresize output would be empty ({in_len} * {scale})")
    return tf.constant(_static_resize_matrix(in_len, out_len, scale)), out_len
  out_len = tf.cast(tf.math.ceil(tf.cast(in_len, tf.float64) * scale), tf.int32)
  return tf.cast(_resize_matrix(in_len, out_len, scale), tf.float32), out_len


def imresize(img: ArrayLike, scale: float) -> tf.Tensor:
  """MATLAB `imresize(img, scale, 'bicubic')` for float HWC / BHWC images.

  Like the official `data/util.py` port: cubic a = -0.5, antialiasing when
  downscaling, symmetric border extension, output size ceil(size * scale),
  H processed before W, no clipping or rounding. Returns float32.
  """
  x = _to_float_image(img)
  if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
    raise ValueError(f"scale must be a positive Python number, got {scale!r}")
  scale = float(scale)
  if not (math.isfinite(scale) and scale > 0):
    raise ValueError(f"scale must be positive and finite, got {scale}")
  batched = x.shape.rank == 4
  if not batched:
    x = x[None]
  dyn = tf.shape(x)
  h = x.shape[1] if x.shape[1] is not None else dyn[1]
  w = x.shape[2] if x.shape[2] is not None else dyn[2]
  b = x.shape[0] if x.shape[0] is not None else dyn[0]
  c = x.shape[3] if x.shape[3] is not None else dyn[3]
  wh, oh = _resize_matrix_for(h, scale)
  ww, ow = _resize_matrix_for(w, scale)
  # H: (oh, h) @ (B, h, w*c); W: (ow, w) @ (B*oh, w, c). Plain matmuls, no transposes.
  y = tf.matmul(wh[None], tf.reshape(x, tf.stack([b, h, w * c])))
  y = tf.matmul(ww[None], tf.reshape(y, tf.stack([b * oh, w, c])))
  y = tf.reshape(y, tf.stack([b, oh, ow, c]))
  return y if batched else y[0]


# --------------------------------------------------------------------------
# Blur, degradation, quantization
# --------------------------------------------------------------------------


def _fft_length(n: int) -> int:
  # Smallest 2^a 3^b 5^c 7^d >= n: the FFT is much faster for such sizes than for n with
  # a large prime factor, and any length >= n avoids wrap-around (see _blur_fft).
  m = n
  while True:
    r = m
    for p in (2, 3, 5, 7):
      while r % p == 0:
        r //= p
    if r == 1:
      return m
    m += 1


def _blur_direct(xp: tf.Tensor, kernel: tf.Tensor, c) -> tf.Tensor:
  dyn = tf.shape(xp)
  b, hp, wp = dyn[0], dyn[1], dyn[2]
  k = kernel.shape[-1]
  # Fold the batch into channels so one depthwise conv applies B different kernels.
  xt = tf.reshape(tf.transpose(xp, [1, 2, 0, 3]), tf.stack([1, hp, wp, b * c]))
  filt = tf.transpose(kernel, [1, 2, 0])[:, :, :, None]  # (k, k, B, 1)
  filt = tf.reshape(tf.tile(filt, [1, 1, 1, c]), tf.stack([k, k, b * c, 1]))
  y = tf.nn.depthwise_conv2d(xt, filt, strides=[1, 1, 1, 1], padding="VALID")
  return tf.transpose(tf.reshape(y, tf.stack([hp - k + 1, wp - k + 1, b, c])), [2, 0, 1, 3])


def _blur_fft(xp: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
  k = kernel.shape[-1]
  hp = xp.shape[1] if xp.shape[1] is not None else tf.shape(xp)[1]
  wp = xp.shape[2] if xp.shape[2] is not None else tf.shape(xp)[2]
  nh = _fft_length(hp) if isinstance(hp, int) else hp
  nw = _fft_length(wp) if isinstance(wp, int) else wp
  # Circular cross-correlation of length n >= hp equals the linear one for the
  # hp - k + 1 valid outputs: index i + u <= hp - 1 never wraps.
  spec = tf.signal.rfft2d(tf.transpose(xp, [0, 3, 1, 2]), fft_length=tf.stack([nh, nw]))
  kspec = tf.signal.rfft2d(kernel, fft_length=tf.stack([nh, nw]))
  y = tf.signal.irfft2d(spec * tf.math.conj(kspec)[:, None], fft_length=tf.stack([nh, nw]))
  y = y[:, :, :hp - k + 1, :wp - k + 1]
  return tf.transpose(y, [0, 2, 3, 1])


def blur(img: ArrayLike, kernel: ArrayLike, method: str = "auto") -> tf.Tensor:
  """Official `BatchBlur`: reflect padding then per-image cross-correlation.

  img HWC with kernel (k, k), or BHWC with kernel (B, k, k) (one kernel per
  image) or (k, k) (shared). Odd k pads k//2 on every side; even k pads
  (k//2, k//2 - 1) (top/left, bottom/right) like the official code. Output has
  the input's spatial size.

  method: "direct" (depthwise convolution, max abs deviation from the official
  torch result ~2e-7), "fft" (FFT correlation, ~1e-6 but several times faster
  for large kernels on CPU) or "auto" (fft for k >= 9, else direct).
  """
  if method not in ("auto", "direct", "fft"):
    raise ValueError(f"method must be 'auto', 'direct' or 'fft', got {method!r}")
  x = _to_float_image(img)
  kernel = _to_kernel(kernel)
  k = kernel.shape[-1]
  batched = x.shape.rank == 4
  if not batched:
    if kernel.shape.rank != 2:
      raise ValueError(f"an HWC image needs a (k, k) kernel, got shape {kernel.shape}")
    x = x[None]
  h, w = x.shape[1], x.shape[2]
  for name, size in (("height", h), ("width", w)):
    if size is not None and size < k:
      raise ValueError(f"image {name} {size} is smaller than the {k}x{k} kernel")
  if kernel.shape.rank == 2:
    kernel = tf.broadcast_to(kernel, tf.concat([tf.shape(x)[:1], [k, k]], 0))
  elif x.shape[0] is not None and kernel.shape[0] is not None and x.shape[0] != kernel.shape[0]:
    raise ValueError(f"{x.shape[0]} images but {kernel.shape[0]} kernels")
  lo, hi = k // 2, (k // 2 if k % 2 else k // 2 - 1)
  xp = tf.pad(x, [[0, 0], [lo, hi], [lo, hi], [0, 0]], mode="REFLECT")
  if method == "fft" or (method == "auto" and k >= 9):
    y = _blur_fft(xp, kernel)
  else:
    c = x.shape[3] if x.shape[3] is not None else tf.shape(x)[3]
    y = _blur_direct(xp, kernel, c)
  if h is not None and w is not None:
    y = tf.ensure_shape(y, [x.shape[0], h, w, x.shape[3]])
  return y if batched else y[0]


def degrade(hr: ArrayLike, kernel: ArrayLike, scale: int,
            noise_sigma: Union[float, ArrayLike] = 0.0, seed: Optional[ArrayLike] = None,
            clip: Optional[bool] = None, method: str = "auto") -> tf.Tensor:
  """HR -> LR as official `SRMDPreprocessing`: blur, imresize(1/scale), optional noise.

  Args:
    hr: float HWC or BHWC image(s) in [0, 1].
    kernel: (k, k) or (B, k, k) blur kernel(s) (see `blur`).
    scale: 2, 3 or 4.
    noise_sigma: Gaussian noise std in [0, 1] units; scalar or per-image (B,).
      A Python 0 skips the noise entirely.
    seed: shape-[2] int seed for stateless noise; None uses the global TF RNG.
    clip: clip to [0, 1]. None follows the official code: clip only when
      noise is added (noise-free LR may slightly overshoot from bicubic ringing).
    method: blur implementation, see `blur`.
  Returns:
    float32 LR image(s), spatial size ceil(size / scale). Not quantized: see
    `quantize_8bit`.
  """
  scale = _check_scale(scale)
  lr = imresize(blur(hr, kernel, method), 1.0 / scale)
  add_noise = not (isinstance(noise_sigma, (int, float)) and noise_sigma == 0)
  if add_noise:
    sigma = tf.cast(tf.convert_to_tensor(noise_sigma), tf.float32)
    if sigma.shape.rank == 1:
      if lr.shape.rank != 4:
        raise ValueError("per-image noise_sigma needs a BHWC batch")
      sigma = sigma[:, None, None, None]
    elif sigma.shape.rank != 0:
      raise ValueError(f"noise_sigma must be a scalar or (B,), got shape {sigma.shape}")
    if seed is None:
      noise = tf.random.normal(tf.shape(lr))
    else:
      noise = tf.random.stateless_normal(tf.shape(lr), seed=tf.convert_to_tensor(seed))
    lr = lr + noise * sigma
  if add_noise if clip is None else clip:
    lr = tf.clip_by_value(lr, 0.0, 1.0)
  return lr


def quantize_8bit(img: ArrayLike) -> tf.Tensor:
  """round(img * 255) / 255, as the official train loop applies to synthesized LR.

  Rounds half to even (like torch.round). Does not clip, like the train loop.
  """
  dtype = img.dtype if hasattr(img, "dtype") else np.asarray(img).dtype
  if not tf.as_dtype(dtype).is_floating:
    raise ValueError(
        f"quantize_8bit expects a float image in [0, 1], got {tf.as_dtype(dtype).name}")
  x = tf.cast(tf.convert_to_tensor(img), tf.float32)
  return tf.round(x * 255.0) / 255.0


# --------------------------------------------------------------------------
# Noise level ranges, JPEG, one-call synthesis
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
  """Random LR corruption after blur + downsampling (the defaults add nothing).

  Noise std ~ U(sigma_min, sigma_max) per image, in [0, 1] units (sigma_min ==
  sigma_max: a fixed level). Then, with probability jpeg_prob per image, JPEG
  compression with an integer quality ~ U{jpeg_quality_min..jpeg_quality_max}.
  """
  sigma_min: float = 0.0
  sigma_max: float = 0.0
  jpeg_prob: float = 0.0
  jpeg_quality_min: int = 30
  jpeg_quality_max: int = 95

  def __post_init__(self):
    _check_range("sigma_min", "sigma_max", self.sigma_min, self.sigma_max, lower=0.0,
                 strict=False)
    if not 0.0 <= self.jpeg_prob <= 1.0:
      raise ValueError(f"jpeg_prob must be in [0, 1], got {self.jpeg_prob}")
    qs = (self.jpeg_quality_min, self.jpeg_quality_max)
    if (any(isinstance(q, bool) or not isinstance(q, (int, np.integer)) for q in qs)
        or not 1 <= qs[0] <= qs[1] <= 100):
      raise ValueError(f"jpeg_quality_min = {qs[0]!r} and jpeg_quality_max = {qs[1]!r} must be "
                       "ints with 1 <= jpeg_quality_min <= jpeg_quality_max <= 100")


def noise_spec_from_config(config: Union[Mapping[str, Any], Any]) -> NoiseSpec:
  """NoiseSpec from `config.degradation` (ConfigDict or dict).

  noise_sigma is the (lower) noise level and noise_sigma_max, when larger, the
  upper end of the per-image range; jpeg_* map to the NoiseSpec fields. Kernel
  and pipeline keys are ignored, unknown keys raise ValueError.
  """
  items = _config_items(config)
  _reject_unknown(items, {f.name for f in dataclasses.fields(KernelSpec)}
                  | set(NON_KERNEL_CONFIG_KEYS))
  get = lambda key, kind, default: _coerce(key, items.get(key, default), kind)
  lo = get("noise_sigma", float, 0.0)
  hi = max(lo, get("noise_sigma_max", float, 0.0))
  return NoiseSpec(lo, hi, get("jpeg_prob", float, 0.0), get("jpeg_quality_min", int, 30),
                   get("jpeg_quality_max", int, 95))


def sample_noise_sigma(batch: Union[int, tf.Tensor], spec: NoiseSpec,
                       seed: ArrayLike) -> tf.Tensor:
  """Per-image noise std (B,) float32 ~ U(spec.sigma_min, spec.sigma_max)."""
  return tf.random.stateless_uniform([batch], seed=tf.convert_to_tensor(seed),
                                     minval=spec.sigma_min, maxval=spec.sigma_max,
                                     dtype=tf.float32)


def sample_jpeg_quality(batch: Union[int, tf.Tensor], spec: NoiseSpec,
                        seed: ArrayLike) -> tf.Tensor:
  """Per-image JPEG quality (B,) int32: U{min..max} with probability jpeg_prob, else 0 (none)."""
  seed = tf.convert_to_tensor(seed)
  fold = tf.random.experimental.stateless_fold_in
  quality = tf.random.stateless_uniform([batch], seed=fold(seed, 0),
                                        minval=spec.jpeg_quality_min,
                                        maxval=spec.jpeg_quality_max + 1, dtype=tf.int32)
  apply = tf.random.stateless_uniform([batch], seed=fold(seed, 1)) < spec.jpeg_prob
  return tf.where(apply, quality, tf.zeros_like(quality))


def apply_jpeg(lr: ArrayLike, quality: Union[int, ArrayLike]) -> tf.Tensor:
  """JPEG round trip of float HWC / BHWC images in [0, 1] (1 or 3 channels).

  quality: int or (B,) ints in [0, 100]; 0 leaves that image unchanged. Pixels
  are clipped to [0, 1] and rounded to 8 bits before encoding (like
  `quantize_8bit`), so JPEG'd images are exactly 8-bit. Works in graph mode.
  """
  x = _to_float_image(lr, "lr")
  if x.shape[-1] not in (1, 3):
    raise ValueError(f"JPEG needs 1 or 3 (static) channels, got shape {x.shape}")
  q = tf.cast(tf.convert_to_tensor(quality), tf.int32)
  if q.shape.rank not in (0, 1) or (q.shape.rank == 1 and x.shape.rank != 4):
    raise ValueError(f"quality must be a scalar, or (B,) for a BHWC batch, got shape {q.shape}")
  if isinstance(quality, (int, np.integer)) and not 0 <= quality <= 100:
    raise ValueError(f"JPEG quality must be in [0, 100], got {quality}")
  batched = x.shape.rank == 4
  if not batched:
    x = x[None]
  q = tf.broadcast_to(q, tf.shape(x)[:1])

  def one(args):
    img, qi = args
    u8 = tf.cast(tf.round(tf.clip_by_value(img, 0.0, 1.0) * 255.0), tf.uint8)
    return tf.cond(qi > 0,
                   lambda: tf.cast(tf.image.adjust_jpeg_quality(u8, qi), tf.float32) / 255.0,
                   lambda: img)

  y = tf.map_fn(one, (x, q), fn_output_signature=tf.TensorSpec(x.shape[1:], tf.float32))
  return y if batched else y[0]


def synthesize(hr: ArrayLike, kernel_spec: Union[KernelSpec, Mapping[str, Any]],
               noise_spec: NoiseSpec, scale: int, seed: ArrayLike,
               method: str = "auto") -> dict[str, tf.Tensor]:
  """HR batch -> random kernels, blur, imresize(1/scale), noise, JPEG (eager or tf.data).

  Args:
    hr: float BHWC batch in [0, 1] (HWC: one image; outputs are unbatched).
    kernel_spec: KernelSpec or `degradation` config (see `sample_kernels`).
    noise_spec: NoiseSpec (e.g. `noise_spec_from_config(config.degradation)`).
    scale: 2, 3 or 4.
    seed: shape-[2] int seed; sub-streams 0 kernels, 1 noise level, 2 noise,
      3 JPEG.
  Returns:
    dict(lr float32 (not quantized unless JPEG'd; clipped to [0, 1] when noise
    is configured, as `degrade`), kernel (B, k, k), noise_sigma (B,) float32,
    jpeg_quality (B,) int32, 0 = not compressed).
  """
  x = _to_float_image(hr, "hr")
  batched = x.shape.rank == 4
  if not batched:
    x = x[None]
  seed = tf.convert_to_tensor(seed)
  fold = tf.random.experimental.stateless_fold_in
  batch = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]
  kernels = sample_kernels(batch, kernel_spec, fold(seed, 0))
  sigma = sample_noise_sigma(batch, noise_spec, fold(seed, 1))
  # A Python 0 keeps `degrade` noise- and clip-free, exactly like the default pipeline.
  lr = degrade(x, kernels, scale, noise_sigma=sigma if noise_spec.sigma_max > 0 else 0.0,
               seed=fold(seed, 2), method=method)
  if noise_spec.jpeg_prob > 0:
    quality = sample_jpeg_quality(batch, noise_spec, fold(seed, 3))
    lr = apply_jpeg(lr, quality)
  else:
    quality = tf.zeros([batch], tf.int32)
  out = dict(lr=lr, kernel=kernels, noise_sigma=sigma, jpeg_quality=quality)
  return out if batched else {k: v[0] for k, v in out.items()}


# --------------------------------------------------------------------------
# PCA kernel codes
# --------------------------------------------------------------------------


def build_pca(kernel_sampler: Callable[[int, int], Any], n: int = 30000, code_len: int = 10,
              seed: int = 0, return_mean: bool = False):
  """PCA projection (k*k, code_len) float32 from n sampled kernels (as creat_PCA.py).

  Kernels are mean-centred before the decomposition (official `PCA`), but the
  official model stores only the top principal directions and `encode`
  projects the *uncentred* kernel (official PCAEncoder). Column signs
  (arbitrary in an SVD) are fixed so the largest-magnitude entry of each column
  is positive.

  Args:
    kernel_sampler: `(n, seed) -> (n, k, k)` array, e.g. `make_kernel_sampler(spec)`.
    return_mean: also return the mean kernel (k, k) float32, which `decode`
      needs to invert `encode` (not part of the official checkpoint).
  """
  kernels = np.asarray(kernel_sampler(n, seed), np.float64)
  if kernels.ndim != 3 or kernels.shape[1] != kernels.shape[2]:
    raise ValueError(f"kernel_sampler must return (n, k, k), got shape {kernels.shape}")
  x = kernels.reshape(kernels.shape[0], -1)
  if not 1 <= code_len <= min(x.shape):
    raise ValueError(f"code_len must be in [1, {min(x.shape)}], got {code_len}")
  mean = x.mean(axis=0, keepdims=True)
  x = x - mean
  # Eigenvectors of the (k*k, k*k) scatter matrix = right singular vectors of x
  # (what torch.svd(x.T) returns as U), but far cheaper than an SVD of a tall x.
  _, vecs = np.linalg.eigh(x.T @ x)
  p = vecs[:, ::-1][:, :code_len]
  signs = np.sign(p[np.argmax(np.abs(p), axis=0), np.arange(code_len)])
  p = (p * signs).astype(np.float32)
  if return_mean:
    return p, mean.reshape(kernels.shape[1:]).astype(np.float32)
  return p


def _check_pca(k2: int, pca_matrix: tf.Tensor) -> None:
  if pca_matrix.shape.rank != 2 or pca_matrix.shape[0] != k2:
    raise ValueError(f"pca_matrix must be ({k2}, code_len), got shape {pca_matrix.shape}")


def encode(kernel: ArrayLike, pca_matrix: ArrayLike) -> tf.Tensor:
  """Kernel code = kernel.reshape(B, k*k) @ pca_matrix -> (B, code_len) ((code_len,) for (k, k))."""
  kernel = _to_kernel(kernel)
  pca = tf.cast(tf.convert_to_tensor(pca_matrix), tf.float32)
  k = kernel.shape[-1]
  _check_pca(k * k, pca)
  flat = tf.reshape(kernel, [-1, k * k])
  code = flat @ pca
  return code if kernel.shape.rank == 3 else code[0]


def decode(code: ArrayLike, pca_matrix: ArrayLike,
           mean_kernel: Optional[ArrayLike] = None) -> tf.Tensor:
  """Kernel(s) (B, k, k) ((k, k) for a (code_len,) code) from `encode` codes.

  Because codes project the uncentred kernel, the reconstruction is
  `(I - P P^T) mean + P code` with the PCA mean kernel (`build_pca(...,
  return_mean=True)`); without `mean_kernel` only the in-subspace part
  `P code` is returned, which misses the mean's out-of-subspace component.
  """
  pca = tf.cast(tf.convert_to_tensor(pca_matrix), tf.float32)
  code = tf.cast(tf.convert_to_tensor(code), tf.float32)
  k = int(round(math.sqrt(pca.shape[0])))
  _check_pca(k * k, pca)
  flat = tf.reshape(code, [-1, pca.shape[1]]) @ tf.transpose(pca)
  if mean_kernel is not None:
    mean = tf.reshape(tf.cast(tf.convert_to_tensor(mean_kernel), tf.float32), [1, k * k])
    flat += mean - (mean @ pca) @ tf.transpose(pca)
  out = tf.reshape(flat, [-1, k, k])
  return out if code.shape.rank == 2 else out[0]


# --------------------------------------------------------------------------
# Gaussian8 test sets (setting 1)
# --------------------------------------------------------------------------


def gaussian8_sigmas(scale: int) -> np.ndarray:
  """The 8 isotropic kernel widths of the Gaussian8 benchmark for x2/x3/x4."""
  scale = _check_scale(scale)
  lo, hi = {2: (0.8, 1.6), 3: (1.35, 2.40), 4: (1.8, 3.2)}[scale]
  return np.linspace(lo, hi, 8)


def modcrop(img: Any, scale: int) -> Any:
  """Crops HW/HWC (or BHWC) so height and width are multiples of scale (top-left kept)."""
  if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
    raise ValueError(f"scale must be a positive int, got {scale!r}")
  ndim = len(img.shape)
  if ndim not in (2, 3, 4):
    raise ValueError(f"modcrop expects HW, HWC or BHWC, got shape {img.shape}")
  ay = 1 if ndim == 4 else 0
  h, w = img.shape[ay], img.shape[ay + 1]
  h, w = h - h % scale, w - w % scale
  return img[:, :h, :w] if ndim == 4 else img[:h, :w]


def _u8_or_float(img: Any) -> np.ndarray:
  img = np.asarray(img)
  if img.dtype == np.uint8:
    return img.astype(np.float32) / 255.0
  if img.dtype.kind == "f":
    return img.astype(np.float32)
  raise ValueError(f"expected a uint8 [0, 255] or float [0, 1] image, got dtype {img.dtype}")


def make_gaussian8_lr(hr: Any, scale: int, kernel_size: int = 21,
                      sigmas: Optional[Sequence[float]] = None) -> np.ndarray:
  """The 8 Gaussian8 LR images (8, h, w[, C]) uint8 of one HR image.

  As `generate_mod_blur_LR_bic.py`: modcrop(hr, scale), isotropic kernel per
  sigma, official BatchBlur (reflect), imresize(1/scale), clamp to [0, 1],
  round(x * 255) to uint8. `hr` may be uint8 or float in [0, 1]; HW or HWC.
  The matching HR image is `modcrop(hr, scale)`.
  """
  scale = _check_scale(scale)
  kernel_size = _check_odd_size(kernel_size)
  sigmas = gaussian8_sigmas(scale) if sigmas is None else np.asarray(sigmas, np.float64)
  x = modcrop(_u8_or_float(hr), scale)
  gray = x.ndim == 2
  if gray:
    x = x[..., None]
  if x.ndim != 3:
    raise ValueError(f"hr must be HW or HWC, got shape {np.shape(hr)}")
  kernels = isotropic_gaussian_kernel(kernel_size, sigmas)
  batch = np.broadcast_to(x, (len(sigmas),) + x.shape)
  lr = degrade(batch, kernels, scale, clip=True).numpy()
  lr = np.round(lr * 255.0).astype(np.uint8)
  return lr[..., 0] if gray else lr


def write_gaussian8_set(hr_dir: str, out_dir: str, scale: int, kernel_size: int = 21,
                        sigmas: Optional[Sequence[float]] = None) -> dict[float, str]:
  """Writes a Gaussian8 test set for every image in hr_dir (png/jpg/bmp, read as RGB).

  Layout (one sub-folder per sigma, each a self-contained paired set):
    out_dir/x{scale}/sig{sigma:.2f}/HR/{stem}.png   modcropped HR (same for all sigmas)
    out_dir/x{scale}/sig{sigma:.2f}/LR/{stem}.png   its blurred, downscaled uint8 LR
  Returns {sigma: out_dir/x{scale}/sig{sigma:.2f}}.
  """
  scale = _check_scale(scale)
  sigmas = gaussian8_sigmas(scale) if sigmas is None else np.asarray(sigmas, np.float64)
  # Files through epath (local or gs://...), as every workdir path (dan_jax.storage).
  names = sorted(f.name for f in storage.path(hr_dir).iterdir()
                 if os.path.splitext(f.name)[1].lower() in _IMAGE_EXTENSIONS)
  if not names:
    raise ValueError(f"no .png/.jpg/.bmp images in {hr_dir}")
  dirs = {float(s): storage.join(out_dir, f"x{scale}", f"sig{s:.2f}") for s in sigmas}
  for d in dirs.values():
    for sub in ("HR", "LR"):
      if not storage.is_url(d):  # object stores have no folders to create
        storage.path(storage.join(d, sub)).mkdir(parents=True, exist_ok=True)
  for name in names:
    data = storage.read_bytes(storage.join(hr_dir, name))
    # 3 channels like cv2.imread in the official script (grayscale is replicated).
    hr = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False).numpy()
    hr = modcrop(hr, scale)
    lrs = make_gaussian8_lr(hr, scale, kernel_size, sigmas)
    stem = os.path.splitext(name)[0] + ".png"
    hr_png = tf.io.encode_png(hr).numpy()
    for d, lr in zip(dirs.values(), lrs):
      storage.write_bytes(storage.join(d, "HR", stem), hr_png, overwrite=True)
      storage.write_bytes(storage.join(d, "LR", stem), tf.io.encode_png(lr).numpy(),
                          overwrite=True)
  return dirs
