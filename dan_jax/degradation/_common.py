"""Shared helpers of dan_jax.degradation: argument checks and array conversion (a leaf).

Every other module of the package imports these; this one imports none of them, so there
are no import cycles.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import tensorflow as tf

ArrayLike = Union[np.ndarray, tf.Tensor, float, Sequence[float]]

SUPPORTED_SCALES = (2, 3, 4)

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
    raise ValueError(f"scale must be one of {SUPPORTED_SCALES} (integer SR factor), got {scale!r}")
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
      "convert integer images with `img.astype(np.float32) / 255` first"
    )
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
