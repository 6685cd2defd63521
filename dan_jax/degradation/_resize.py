"""MATLAB-compatible bicubic `imresize` (antialiased when downscaling), in TensorFlow ops."""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf

from dan_jax.degradation._common import _to_float_image
from dan_jax.degradation._common import ArrayLike


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
