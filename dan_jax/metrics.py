"""Evaluation metrics matching the official DAN test protocol (numpy only).

Y-PSNR/SSIM of uint8 images as the official `test.py` computes them (tensor2img rounding,
a border of `scale` pixels cropped, MATLAB's unrounded float Y channel, MATLAB-style SSIM on
the valid region), and kernel errors. HWC images in RGB order; the README ("Evaluation
(official protocol)") spells the protocol out step by step.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

import numpy as np

from dan_jax import image_io

__all__ = [
  "to_uint8",
  "rgb_to_y",
  "psnr_y",
  "ssim_y",
  "psnr_rgb",
  "ssim_rgb",
  "kernel_error",
  "score_prediction",
  "average",
]

# MATLAB rgb2ycbcr luma weights for R, G, B in [0, 255] (ITU-R BT.601).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2


def to_uint8(img) -> np.ndarray:
  """Converts a [0, 1] float image to uint8 exactly like official tensor2img.

  float32 cast, clip to [0, 1], ``* 255``, round half to even, cast to uint8: the protocol's
  name for `image_io.quantize(img, 8)` (one implementation). Unlike tensor2img the layout
  and channel order are left unchanged (no CHW -> HWC transpose, no RGB -> BGR flip).

  Args:
    img: array-like (numpy or jax) of any shape with values nominally in
      [0, 1]; values outside are clipped.

  Returns:
    uint8 array of the same shape.

  Raises:
    ValueError: if the image contains NaN.
  """
  return image_io.quantize(img, 8)


def rgb_to_y(img, data_range: float = 255.0) -> np.ndarray:
  """Y channel of MATLAB's ``rgb2ycbcr``, in float64 and NOT rounded.

  ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` with R, G, B scaled to
  [0, 255]; the result lies in [16, 235] (the [0, 255] scale), matching the
  official ``bgr2ycbcr`` on float input (x255) as used by the test protocol.

  Args:
    img: RGB image (..., 3). uint8 values are in [0, 255]; float values are
      taken to be in [0, data_range].
    data_range: maximum value of a float input (255.0 or 1.0 typically).
      Must be 255 for uint8 input.

  Returns:
    float64 array of shape img.shape[:-1].
  """
  x = np.asarray(img)
  if x.ndim < 1 or x.shape[-1] != 3:
    raise ValueError(
      f"rgb_to_y expects an RGB image with a last axis of size 3, got shape {x.shape}."
    )
  if x.dtype == np.uint8:
    if data_range != 255.0:
      raise ValueError("rgb_to_y: uint8 input implies data_range=255.")
  elif not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"rgb_to_y expects uint8 or float input, got dtype {x.dtype}.")
  x = x.astype(np.float64)
  if data_range != 255.0:
    x = x * (255.0 / data_range)
  return x @ _Y_WEIGHTS / 255.0 + 16.0


def _check_pair(sr, gt, crop_border: int, name: str):
  """Validates a uint8 image pair and applies the border crop."""
  sr = np.asarray(sr)
  gt = np.asarray(gt)
  for label, a in (("sr", sr), ("gt", gt)):
    if a.dtype != np.uint8:
      raise ValueError(
        f"{name}: {label} must be a uint8 image in [0, 255], got dtype "
        f"{a.dtype}; convert [0, 1] float images with to_uint8 first."
      )
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3))):
      raise ValueError(f"{name}: {label} must be HW, HW1 or HW3, got shape {a.shape}.")
  if sr.shape != gt.shape:
    raise ValueError(f"{name}: sr and gt shapes differ: {sr.shape} vs {gt.shape}.")
  if (
    isinstance(crop_border, bool)
    or not isinstance(crop_border, (int, np.integer))
    or crop_border < 0
  ):
    raise ValueError(f"{name}: crop_border must be a non-negative int, got {crop_border!r}.")
  h, w = sr.shape[:2]
  if 2 * crop_border >= min(h, w):
    raise ValueError(f"{name}: crop_border={crop_border} leaves nothing of a {h}x{w} image.")
  if crop_border:
    sl = (slice(crop_border, -crop_border), slice(crop_border, -crop_border))
    sr, gt = sr[sl], gt[sl]
  return sr, gt


def _luma(img: np.ndarray) -> np.ndarray:
  """Float64 Y (HW) of a uint8 HW / HW1 / HW3 image; gray is its own Y."""
  if img.ndim == 3 and img.shape[2] == 3:
    return rgb_to_y(img)
  return img.reshape(img.shape[:2]).astype(np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR (dB) for float64 arrays in [0, 255]; inf if identical."""
  mse = np.mean((a - b) ** 2)
  if mse == 0:
    return float("inf")
  return 20.0 * math.log10(255.0 / math.sqrt(mse))


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian, as cv2.getGaussianKernel(size, sigma)."""
  x = np.arange(size, dtype=np.float64) - (size - 1) * 0.5
  k = np.exp(-0.5 / (sigma * sigma) * x * x)
  return k / k.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
  """'valid' 2-D correlation of HW x with the separable window outer(k, k)."""
  n = k.size
  x = np.lib.stride_tricks.sliding_window_view(x, n, axis=0) @ k
  return np.lib.stride_tricks.sliding_window_view(x, n, axis=1) @ k


def _ssim_2d(a: np.ndarray, b: np.ndarray) -> float:
  """MATLAB-style SSIM of two float64 HW images in [0, 255] (valid region)."""
  k = _gaussian_1d(_SSIM_WIN, _SSIM_SIGMA)
  mu1 = _filter_valid(a, k)
  mu2 = _filter_valid(b, k)
  mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
  s1 = _filter_valid(a * a, k) - mu1_sq
  s2 = _filter_valid(b * b, k) - mu2_sq
  s12 = _filter_valid(a * b, k) - mu12
  ssim_map = ((2 * mu12 + _C1) * (2 * s12 + _C2)) / ((mu1_sq + mu2_sq + _C1) * (s1 + s2 + _C2))
  return float(ssim_map.mean())


def _check_ssim_size(img: np.ndarray, name: str):
  h, w = img.shape[:2]
  if min(h, w) < _SSIM_WIN:
    raise ValueError(
      f"{name}: image is {h}x{w} after cropping; SSIM needs at least {_SSIM_WIN}x{_SSIM_WIN}."
    )


def psnr_y(sr, gt, crop_border: int) -> float:
  """PSNR (dB) on the float Y channel, official DAN protocol.

  Args:
    sr, gt: uint8 images, HW3 RGB (HW / HW1 are used directly as Y).
    crop_border: pixels removed on each side before the metric (the
      protocol uses the SR scale); 0 keeps the whole image.

  Returns:
    PSNR in dB; ``float('inf')`` for identical Y channels.
  """
  sr, gt = _check_pair(sr, gt, crop_border, "psnr_y")
  return _psnr(_luma(sr), _luma(gt))


def ssim_y(sr, gt, crop_border: int) -> float:
  """SSIM on the float Y channel, official DAN protocol (see psnr_y)."""
  sr, gt = _check_pair(sr, gt, crop_border, "ssim_y")
  _check_ssim_size(sr, "ssim_y")
  return _ssim_2d(_luma(sr), _luma(gt))


def psnr_rgb(sr, gt, crop_border: int) -> float:
  """PSNR (dB) over all channels of uint8 images (official "PSNR")."""
  sr, gt = _check_pair(sr, gt, crop_border, "psnr_rgb")
  return _psnr(sr.astype(np.float64), gt.astype(np.float64))


def ssim_rgb(sr, gt, crop_border: int) -> float:
  """SSIM of uint8 images: mean of per-channel SSIMs (official "SSIM")."""
  sr, gt = _check_pair(sr, gt, crop_border, "ssim_rgb")
  _check_ssim_size(sr, "ssim_rgb")
  if sr.ndim == 2:
    sr, gt = sr[..., None], gt[..., None]
  vals = [
    _ssim_2d(sr[..., c].astype(np.float64), gt[..., c].astype(np.float64))
    for c in range(sr.shape[2])
  ]
  return float(np.mean(vals))


def _center_pad(k: np.ndarray, shape) -> np.ndarray:
  """Zero-pads a 2-D kernel to `shape`, centred (extra row/col at the end)."""
  pads = []
  for have, want in zip(k.shape, shape):
    d = want - have
    pads.append((d // 2, d - d // 2))
  return np.pad(k, pads)


def kernel_error(est, true, normalize: bool = False) -> Dict[str, float]:
  """Compares an estimated blur kernel with the ground-truth kernel.

  Kernels of different sizes are compared after zero-padding the smaller one
  (per axis, centred; for odd size differences the extra zero row/column goes
  at the end). Zero-padding keeps the whole mass of both kernels.

  Args:
    est: estimated kernel, 2-D (h, w).
    true: ground-truth kernel, 2-D (h', w').
    normalize: if True, both kernels are first divided by their sums (so they
      sum to 1), removing a global gain error.

  Returns:
    dict with
      'mse':  mean squared error over the (common, padded) support,
      'mae':  mean absolute error over that support,
      'sad':  sum of absolute differences (L1 distance; in [0, 2] for
              non-negative unit-sum kernels),
      'psnr': 10 log10(max(true)^2 / mse) in dB, peak = max of the true
              kernel (inf when mse == 0).
  """
  e = np.asarray(est, dtype=np.float64)
  t = np.asarray(true, dtype=np.float64)
  if e.ndim != 2 or t.ndim != 2:
    raise ValueError(f"kernel_error expects 2-D kernels, got shapes {e.shape} and {t.shape}.")
  if normalize:
    se, st = e.sum(), t.sum()
    if se == 0 or st == 0:
      raise ValueError("kernel_error: cannot normalize a zero-sum kernel.")
    e, t = e / se, t / st
  shape = (max(e.shape[0], t.shape[0]), max(e.shape[1], t.shape[1]))
  e, t = _center_pad(e, shape), _center_pad(t, shape)
  diff = e - t
  mse = float(np.mean(diff**2))
  peak = float(t.max())
  if mse == 0:
    psnr = float("inf")
  elif peak <= 0:
    psnr = float("nan")
  else:
    psnr = 10.0 * math.log10(peak * peak / mse)
  return {
    "mse": mse,
    "mae": float(np.mean(np.abs(diff))),
    "sad": float(np.sum(np.abs(diff))),
    "psnr": psnr,
  }


def score_prediction(
  sr,
  hr,
  scale: int,
  *,
  crop_border: Optional[int] = None,
  kernel=None,
  true_kernel=None,
  rgb: bool = False,
) -> Dict[str, float]:
  """One super-resolved image's scores by the official protocol (the one scoring rule).

  Used by validation during training, `dan_jax.evaluate` and the kernel-space sweep.

  Args:
    sr: SR image [H, W, C]: uint8, or float in [0, 1] (rounded by `to_uint8`, the
      official tensor2img rounding).
    hr: ground truth of the same shape, uint8 or float in [0, 1].
    scale: the SR scale.
    crop_border: pixels cut on each side (default: `scale`, as official test.py).
    kernel: the estimated kernel [k, k], or None.
    true_kernel: the true kernel; with `kernel`, adds its `kernel_error` as
      'kernel_mse', 'kernel_mae', 'kernel_sad', 'kernel_psnr'.
    rgb: also 'psnr_rgb' and 'ssim_rgb' (all channels).

  Returns:
    {'psnr_y', 'ssim_y'} (MATLAB Y channel), plus the RGB and kernel entries asked for.
  """
  crop = scale if crop_border is None else crop_border
  sr = sr if np.asarray(sr).dtype == np.uint8 else to_uint8(sr)
  hr = hr if np.asarray(hr).dtype == np.uint8 else to_uint8(hr)
  out = {"psnr_y": psnr_y(sr, hr, crop), "ssim_y": ssim_y(sr, hr, crop)}
  if rgb:
    out.update(psnr_rgb=psnr_rgb(sr, hr, crop), ssim_rgb=ssim_rgb(sr, hr, crop))
  if kernel is not None and true_kernel is not None:
    out.update({f"kernel_{k}": v for k, v in kernel_error(kernel, true_kernel).items()})
  return out


def average(values: Iterable[float], ignore_inf: bool = False) -> float:
  """Mean of per-image metric values.

  The official protocol uses ``sum(v) / len(v)``, so one infinite PSNR makes
  the mean infinite (default). With ``ignore_inf=True`` infinite values are
  left out (NaN if nothing remains).
  """
  v = np.asarray(list(values), dtype=np.float64)
  if v.size == 0:
    raise ValueError("average: no values.")
  if ignore_inf:
    v = v[~np.isinf(v)]
    if v.size == 0:
      return float("nan")
  return float(v.sum() / v.size)
