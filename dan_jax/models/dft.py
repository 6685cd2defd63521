"""Real 2-D discrete Fourier transforms written as matrix products (DCLS's deconvolution).

Einsums with constant DFT matrices shard over the batch like any dot (XLA's SPMD partitioner
gathers an FFT's whole batch onto every device), run on matrix units and cost O(HW(H+W)) per
channel. Spectra are (real, imaginary) float32 pairs (ONNX and TFLite have no complex
tensors); every product runs at `Precision.HIGHEST` (the deconvolution divides by small
|K|^2 + |P|^2); matrices are built in float64 from exact integer phases. README: "DCLS-SR".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


@functools.lru_cache(maxsize=64)
def _forward_matrix(n: int, freqs: int, taps: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
  """cos and -sin parts of exp(-2 pi i f (t - shift) / n), as [taps, freqs] float32."""
  phase = (np.arange(freqs)[None, :] * (np.arange(taps)[:, None] - shift)) % n
  angle = 2.0 * np.pi * phase / n
  return np.cos(angle).astype(np.float32), (-np.sin(angle)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _inverse_real_matrix(n: int) -> tuple[np.ndarray, np.ndarray]:
  """[n//2+1, n] matrices taking a half spectrum (real, imaginary) to n real samples.

  x[t] = (1/n) (X0 + 2 sum_{0<f<n/2} Re(X_f e^{2 pi i f t/n}) + X_{n/2} (-1)^t), the
  inverse of `numpy.fft.rfft`; the imaginary parts of the DC and Nyquist bins drop out
  (their sines vanish), as in `numpy.fft.irfft`.
  """
  freqs = n // 2 + 1
  weight = np.full((freqs, 1), 2.0)
  weight[0] = 1.0
  if n % 2 == 0:
    weight[-1] = 1.0
  angle = 2.0 * np.pi * ((np.arange(freqs)[:, None] * np.arange(n)[None, :]) % n) / n
  return (
    (weight * np.cos(angle) / n).astype(np.float32),
    (-weight * np.sin(angle) / n).astype(np.float32),
  )


def _mm(spec: str, x: Array, m: np.ndarray) -> Array:
  return jnp.einsum(spec, x, jnp.asarray(m), precision=_HIGHEST)


def rfft2(
  x: Array, height: int | None = None, width: int | None = None, shift: int = 0
) -> tuple[Array, Array]:
  """`jnp.fft.rfft2` of x [..., h, w] over its last two axes, as (real, imaginary) parts,
  each [..., height, width//2+1].

  `height`/`width` (default h, w) zero-pad x to that size first, and `shift` rolls the
  padded array by -shift on both axes, so `rfft2(psf, H, W, k // 2)` is psf2otf: the OTF of
  a k x k kernel with its centre tap moved to (0, 0). Padding and roll are folded into the
  DFT matrices, so the padded array is never built.
  """
  h, w = x.shape[-2:]
  height, width = height or h, width or w
  if h > height or w > width:
    raise ValueError(f"rfft2: input {h}x{w} is larger than the transform {height}x{width}")
  col_re, col_im = _forward_matrix(width, width // 2 + 1, w, shift)  # [w, V]
  row_re, row_im = _forward_matrix(height, height, h, shift)  # [h, height]
  x = x.astype(jnp.float32)
  t_re, t_im = _mm("...hw,wv->...hv", x, col_re), _mm("...hw,wv->...hv", x, col_im)
  # Rows: (A_re + i A_im)^T (t_re + i t_im), A [h, height].
  re = _mm("...hv,hu->...uv", t_re, row_re) - _mm("...hv,hu->...uv", t_im, row_im)
  im = _mm("...hv,hu->...uv", t_im, row_re) + _mm("...hv,hu->...uv", t_re, row_im)
  return re, im


def irfft2(re: Array, im: Array, height: int, width: int) -> Array:
  """`jnp.fft.irfft2(re + i im, s=(height, width))` of a half spectrum [..., height, V]."""
  if re.shape[-2:] != (height, width // 2 + 1) or im.shape != re.shape:
    raise ValueError(f"irfft2: spectrum {re.shape[-2:]} does not fit {height}x{width}")
  # Rows: the inverse complex DFT, (1/height) exp(+2 pi i u t / height) = conj(forward)/n.
  row_re, row_im = _forward_matrix(height, height, height, 0)
  row_re, row_im = row_re / height, -row_im / height
  y_re = _mm("...uv,ut->...tv", re, row_re) - _mm("...uv,ut->...tv", im, row_im)
  y_im = _mm("...uv,ut->...tv", im, row_re) + _mm("...uv,ut->...tv", re, row_im)
  col_re, col_im = _inverse_real_matrix(width)  # [V, width]
  return _mm("...tv,vw->...tw", y_re, col_re) + _mm("...tv,vw->...tw", y_im, col_im)


def conj_times(a: tuple[Array, Array], b: tuple[Array, Array]) -> tuple[Array, Array]:
  """conj(a) * b of two (real, imaginary) spectra, as (real, imaginary)."""
  (a_re, a_im), (b_re, b_im) = a, b
  return a_re * b_re + a_im * b_im, a_re * b_im - a_im * b_re
