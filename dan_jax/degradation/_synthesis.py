"""Degradation synthesis: blur, `degrade` (blur + bicubic downscale), 8-bit quantisation,
noise level ranges (`NoiseSpec`), JPEG and the one-call `synthesize`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

import numpy as np
import tensorflow as tf

from dan_jax.degradation._common import _check_scale
from dan_jax.degradation._common import _to_float_image
from dan_jax.degradation._common import _to_kernel
from dan_jax.degradation._common import ArrayLike
from dan_jax.degradation._kernel_families import sample_kernels
from dan_jax.degradation._kernels import _check_range
from dan_jax.degradation._kernels import _coerce
from dan_jax.degradation._kernels import _config_items
from dan_jax.degradation._kernels import _reject_unknown
from dan_jax.degradation._kernels import KernelSpec
from dan_jax.degradation._kernels import NON_KERNEL_CONFIG_KEYS
from dan_jax.degradation._resize import imresize


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
  y = y[:, :, : hp - k + 1, : wp - k + 1]
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


def degrade(
  hr: ArrayLike,
  kernel: ArrayLike,
  scale: int,
  noise_sigma: Union[float, ArrayLike] = 0.0,
  seed: Optional[ArrayLike] = None,
  clip: Optional[bool] = None,
  method: str = "auto",
) -> tf.Tensor:
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
      f"quantize_8bit expects a float image in [0, 1], got {tf.as_dtype(dtype).name}"
    )
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
    _check_range("sigma_min", "sigma_max", self.sigma_min, self.sigma_max, lower=0.0, strict=False)
    if not 0.0 <= self.jpeg_prob <= 1.0:
      raise ValueError(f"jpeg_prob must be in [0, 1], got {self.jpeg_prob}")
    qs = (self.jpeg_quality_min, self.jpeg_quality_max)
    if (
      any(isinstance(q, bool) or not isinstance(q, (int, np.integer)) for q in qs)
      or not 1 <= qs[0] <= qs[1] <= 100
    ):
      raise ValueError(
        f"jpeg_quality_min = {qs[0]!r} and jpeg_quality_max = {qs[1]!r} must be "
        "ints with 1 <= jpeg_quality_min <= jpeg_quality_max <= 100"
      )


def noise_spec_from_config(config: Union[Mapping[str, Any], Any]) -> NoiseSpec:
  """NoiseSpec from `config.degradation` (ConfigDict or dict).

  noise_sigma is the (lower) noise level and noise_sigma_max, when larger, the
  upper end of the per-image range; jpeg_* map to the NoiseSpec fields. Kernel
  and pipeline keys are ignored, unknown keys raise ValueError.
  """
  items = _config_items(config)
  _reject_unknown(
    items, {f.name for f in dataclasses.fields(KernelSpec)} | set(NON_KERNEL_CONFIG_KEYS)
  )
  get = lambda key, kind, default: _coerce(key, items.get(key, default), kind)
  lo = get("noise_sigma", float, 0.0)
  hi = max(lo, get("noise_sigma_max", float, 0.0))
  return NoiseSpec(
    lo,
    hi,
    get("jpeg_prob", float, 0.0),
    get("jpeg_quality_min", int, 30),
    get("jpeg_quality_max", int, 95),
  )


def sample_noise_sigma(batch: Union[int, tf.Tensor], spec: NoiseSpec, seed: ArrayLike) -> tf.Tensor:
  """Per-image noise std (B,) float32 ~ U(spec.sigma_min, spec.sigma_max)."""
  return tf.random.stateless_uniform(
    [batch],
    seed=tf.convert_to_tensor(seed),
    minval=spec.sigma_min,
    maxval=spec.sigma_max,
    dtype=tf.float32,
  )


def sample_jpeg_quality(
  batch: Union[int, tf.Tensor], spec: NoiseSpec, seed: ArrayLike
) -> tf.Tensor:
  """Per-image JPEG quality (B,) int32: U{min..max} with probability jpeg_prob, else 0 (none)."""
  seed = tf.convert_to_tensor(seed)
  fold = tf.random.experimental.stateless_fold_in
  quality = tf.random.stateless_uniform(
    [batch],
    seed=fold(seed, 0),
    minval=spec.jpeg_quality_min,
    maxval=spec.jpeg_quality_max + 1,
    dtype=tf.int32,
  )
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
    return tf.cond(
      qi > 0, lambda: tf.cast(tf.image.adjust_jpeg_quality(u8, qi), tf.float32) / 255.0, lambda: img
    )

  y = tf.map_fn(one, (x, q), fn_output_signature=tf.TensorSpec(x.shape[1:], tf.float32))
  return y if batched else y[0]


def synthesize(
  hr: ArrayLike,
  kernel_spec: Union[KernelSpec, Mapping[str, Any]],
  noise_spec: NoiseSpec,
  scale: int,
  seed: ArrayLike,
  method: str = "auto",
) -> dict[str, tf.Tensor]:
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
  lr = degrade(
    x,
    kernels,
    scale,
    noise_sigma=sigma if noise_spec.sigma_max > 0 else 0.0,
    seed=fold(seed, 2),
    method=method,
  )
  if noise_spec.jpeg_prob > 0:
    quality = sample_jpeg_quality(batch, noise_spec, fold(seed, 3))
    lr = apply_jpeg(lr, quality)
  else:
    quality = tf.zeros([batch], tf.int32)
  out = dict(lr=lr, kernel=kernels, noise_sigma=sigma, jpeg_quality=quality)
  return out if batched else {k: v[0] for k, v in out.items()}
