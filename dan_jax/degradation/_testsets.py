"""Gaussian8 test sets (setting 1), exactly as the official `generate_mod_blur_LR_bic.py`."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np
import tensorflow as tf

from dan_jax import image_io
from dan_jax import storage
from dan_jax.degradation._common import _check_odd_size
from dan_jax.degradation._common import _check_scale
from dan_jax.degradation._kernels import isotropic_gaussian_kernel
from dan_jax.degradation._synthesis import degrade

# The image files a Gaussian8 set is built from (what tf.io.decode_image reads).
_IMAGE_EXTENSIONS = image_io.TF_IMAGE_EXTENSIONS


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


def make_gaussian8_lr(
  hr: Any, scale: int, kernel_size: int = 21, sigmas: Optional[Sequence[float]] = None
) -> np.ndarray:
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


def write_gaussian8_set(
  hr_dir: str,
  out_dir: str,
  scale: int,
  kernel_size: int = 21,
  sigmas: Optional[Sequence[float]] = None,
) -> dict[float, str]:
  """Writes a Gaussian8 test set for every image in hr_dir (png/jpg/bmp, read as RGB).

  Layout (one sub-folder per sigma, each a self-contained paired set):
    out_dir/x{scale}/sig{sigma:.2f}/HR/{stem}.png   modcropped HR (same for all sigmas)
    out_dir/x{scale}/sig{sigma:.2f}/LR/{stem}.png   its blurred, downscaled uint8 LR
  Returns {sigma: out_dir/x{scale}/sig{sigma:.2f}}.
  """
  scale = _check_scale(scale)
  sigmas = gaussian8_sigmas(scale) if sigmas is None else np.asarray(sigmas, np.float64)
  # Files through epath (local or gs://...), as every workdir path (dan_jax.storage).
  names = sorted(
    f.name
    for f in storage.path(hr_dir).iterdir()
    if os.path.splitext(f.name)[1].lower() in _IMAGE_EXTENSIONS
  )
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
      storage.write_bytes(storage.join(d, "LR", stem), tf.io.encode_png(lr).numpy(), overwrite=True)
  return dirs
