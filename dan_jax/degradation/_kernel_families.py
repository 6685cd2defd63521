"""Kernel families beyond the official Gaussians (generalized Gaussian, plateau, motion),
mixtures, and `sample_kernels` / `make_kernel_sampler` for any `KernelSpec`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Union

import numpy as np
import tensorflow as tf

from dan_jax.degradation._common import _check_odd_size
from dan_jax.degradation._common import ArrayLike
from dan_jax.degradation._kernels import _as_param
from dan_jax.degradation._kernels import _disturb
from dan_jax.degradation._kernels import _normalize
from dan_jax.degradation._kernels import _quadratic_form
from dan_jax.degradation._kernels import kernel_spec_from_config
from dan_jax.degradation._kernels import KernelSpec
from dan_jax.degradation._kernels import random_kernels
from dan_jax.degradation._kernels import sample_kernel_params


def generalized_gaussian_kernel(
  size: int, sigma_x: ArrayLike, sigma_y: ArrayLike, theta: ArrayLike, beta: ArrayLike
) -> tf.Tensor:
  """Normalized generalized Gaussian exp(-0.5 (x^T Σ^-1 x)^beta) (Real-ESRGAN).

  Σ = U diag(sx^2, sy^2) U^T, U = rot(theta), as `anisotropic_gaussian_kernel`
  (beta = 1 gives it). Scalars give (k, k); (B,) vectors give (B, k, k).
  """
  size = _check_odd_size(size)
  q = _quadratic_form(size, sigma_x, sigma_y, theta)
  kernel = tf.exp(-0.5 * tf.pow(q, _as_param(beta)[..., None, None]))
  return tf.cast(_normalize(kernel), tf.float32)


def plateau_kernel(
  size: int, sigma_x: ArrayLike, sigma_y: ArrayLike, theta: ArrayLike, beta: ArrayLike
) -> tf.Tensor:
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


def random_shaped_kernels(
  batch: Union[int, tf.Tensor],
  kernel_size: int,
  family: str,
  *,
  sig_min: float,
  sig_max: float,
  rate_iso: float,
  beta_min: float,
  beta_max: float,
  random_disturb: bool,
  seed: ArrayLike,
  return_params: bool = False,
):
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
  p = sample_kernel_params(batch, sig_min=sig_min, sig_max=sig_max, rate_iso=rate_iso, seed=seed)
  p["beta"] = _sample_beta(
    batch, beta_min, beta_max, tf.random.experimental.stateless_fold_in(seed, 5)
  )
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
    g = tf.constant(np.exp(-((ax[:, None] - ax[None, :]) ** 2) / (2.0 * smooth**2)))
    kernel = tf.matmul(tf.matmul(g, kernel), g)
  return tf.cast(_normalize(kernel), tf.float32)


def random_motion_trajectories(
  batch: Union[int, tf.Tensor],
  kernel_size: int,
  *,
  len_min: float,
  len_max: float,
  steps: int,
  turn: float,
  smooth: float = 0.0,
  seed: ArrayLike,
) -> tf.Tensor:
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


def random_motion_kernels(
  batch: Union[int, tf.Tensor],
  kernel_size: int,
  *,
  len_min: float,
  len_max: float,
  steps: int,
  turn: float,
  smooth: float,
  random_disturb: bool = False,
  seed: ArrayLike,
  return_trajectory: bool = False,
):
  """Random motion-blur kernels (B, k, k) float32 from `random_motion_trajectories`.

  With random_disturb the official multiplicative tap noise is applied (it only
  modulates the path, zero taps stay zero). return_trajectory also returns the
  (B, P, 2) path rasterised.
  """
  kernel_size = _check_odd_size(kernel_size)
  seed = tf.convert_to_tensor(seed)
  pts = random_motion_trajectories(
    batch,
    kernel_size,
    len_min=len_min,
    len_max=len_max,
    steps=steps,
    turn=turn,
    smooth=smooth,
    seed=seed,
  )
  kernels = motion_kernel(kernel_size, pts, smooth)
  if random_disturb:
    k64 = _disturb(tf.cast(kernels, tf.float64), batch, kernel_size, seed)
    kernels = tf.cast(_normalize(k64), tf.float32)
  return (kernels, pts) if return_trajectory else kernels


def _sample_family(batch, s: KernelSpec, name: str, seed: tf.Tensor) -> tf.Tensor:
  if name == "gaussian":
    return random_kernels(
      batch,
      s.kernel_size,
      sig_min=s.sig_min,
      sig_max=s.sig_max,
      rate_iso=s.rate_iso,
      random_disturb=s.random_disturb,
      seed=seed,
    )
  if name in ("generalized_gaussian", "plateau"):
    lo, hi = (
      (s.beta_min, s.beta_max)
      if name == "generalized_gaussian"
      else (s.plateau_beta_min, s.plateau_beta_max)
    )
    return random_shaped_kernels(
      batch,
      s.kernel_size,
      name,
      sig_min=s.sig_min,
      sig_max=s.sig_max,
      rate_iso=s.rate_iso,
      beta_min=lo,
      beta_max=hi,
      random_disturb=s.random_disturb,
      seed=seed,
    )
  return random_motion_kernels(
    batch,
    s.kernel_size,
    len_min=s.motion_len_min,
    len_max=s.motion_len_max,
    steps=int(s.motion_steps),
    turn=s.motion_turn,
    smooth=s.motion_smooth,
    random_disturb=s.random_disturb,
    seed=seed,
  )


# Salts of the mixture's per-component and component-choice streams.
_MIX_COMPONENT_SALT, _MIX_CHOICE_SALT = 1000, 999


def _spec(spec: Union[KernelSpec, Mapping[str, Any]]) -> KernelSpec:
  return spec if isinstance(spec, KernelSpec) else kernel_spec_from_config(spec)


def sample_kernels(
  batch: Union[int, tf.Tensor],
  spec: Union[KernelSpec, Mapping[str, Any]],
  seed: ArrayLike,
  return_family: bool = False,
):
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
    stacked = tf.stack(
      [
        _sample_family(batch, s, name, fold(seed, _MIX_COMPONENT_SALT + i))
        for i, (name, _) in enumerate(families)
      ],
      axis=1,
    )  # (B, F, k, k)
    u = tf.random.stateless_uniform([batch, 1], seed=fold(seed, _MIX_CHOICE_SALT), dtype=tf.float64)
    bounds = tf.constant(np.cumsum([w for _, w in families])[:-1])
    which = tf.reduce_sum(tf.cast(u >= bounds[None], tf.int32), axis=1)
    kernels = tf.gather(stacked, which, axis=1, batch_dims=1)
  return (kernels, which) if return_family else kernels


def make_kernel_sampler(
  spec: Union[KernelSpec, Mapping[str, Any]], chunk: int = 4096
) -> Callable[[int, int], np.ndarray]:
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
