"""Deterministic, resumable tf.data input pipeline: HR crops -> synthesized (LR, kernel, code).

Training batches (`create_train_iterator`) follow the official DAN recipe: a random HR crop,
the official flips/transpose, then `degradation` (random kernel, blur, MATLAB bicubic
downsampling, noise, 8-bit rounding) and the kernel's PCA code. Example j of step i is a
pure function of (config, i, j), drawn with stateless TF ops, so a resumed run and every
host's shard see exactly the data of one uninterrupted single-host run (README "Training").
Validation (`create_validation_set`): fixed LR made once from held-out HR images. Where HR
images come from is `image_sources`'.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Optional

import ml_collections
import numpy as np
import tensorflow as tf

from dan_jax import degradation
from dan_jax import models
from dan_jax.errors import DataError
from dan_jax.image_sources import demo_images
from dan_jax.image_sources import DEMO_VAL_NAMES
from dan_jax.image_sources import ImageStore
from dan_jax.image_sources import list_image_files
from dan_jax.image_sources import split_dirs
from dan_jax.image_sources import train_store
from dan_jax.image_sources import warn_list

VAL_SOURCES = ("folder", "demo", "none")

# Separates the data streams from other users of config.seed (e.g. model init).
_DATA_SALT = 0x44414E  # "DAN"


# --------------------------------------------------------------------------
# Training pipeline
# --------------------------------------------------------------------------


def kernel_spec(config: ml_collections.ConfigDict) -> degradation.KernelSpec:
  """The training kernel distribution of `config.degradation` (any kernel family)."""
  try:
    return degradation.kernel_spec_from_config(config.degradation)
  except ValueError as e:
    raise DataError(f"config.degradation: {e}") from e


def _check_train_config(
  config: ml_collections.ConfigDict, pca_matrix: np.ndarray, process_index: int, process_count: int
) -> None:
  scale, crop, k = config.model.scale, config.data.hr_crop, config.degradation.kernel_size
  is_int = lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool)
  if scale not in degradation.SUPPORTED_SCALES:
    raise DataError(
      f"config.model.scale must be one of {degradation.SUPPORTED_SCALES}, got {scale!r}"
    )
  if not is_int(crop) or crop <= 0 or crop % scale:
    raise DataError(
      f"config.data.hr_crop must be a positive multiple of the scale {scale}, got {crop!r}"
    )
  if crop < k:
    raise DataError(
      f"config.data.hr_crop = {crop} is smaller than the {k}x{k} blur kernel "
      "(config.degradation.kernel_size)"
    )
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(
      f"process_index {process_index} must be in [0, process_count = {process_count})"
    )
  bs = config.batch_size
  if not is_int(bs) or bs <= 0 or bs % process_count:
    raise DataError(
      f"config.batch_size = {bs!r} must be a positive multiple of the number of "
      f"processes ({process_count})"
    )
  pca = np.asarray(pca_matrix)
  if pca.ndim != 2 or pca.shape[0] != k * k:
    raise DataError(
      f"pca_matrix must be ({k * k}, code_len) for kernel_size {k}, got shape {pca.shape}"
    )


def _tf_autotune(value: int) -> int:
  return tf.data.AUTOTUNE if value is None or value < 0 else int(value)


@dataclasses.dataclass
class _Plan:
  """Everything the per-example map needs (also used eagerly to locate corrupt files)."""

  store: ImageStore
  seed: int
  global_batch: int
  local_batch: int
  first: int  # process_index * local_batch

  def seeds(self):
    base = tf.constant([self.seed, _DATA_SALT], tf.int64)
    fold = tf.random.experimental.stateless_fold_in
    return fold(base, tf.constant(0, tf.int64)), fold(base, tf.constant(1, tf.int64))

  def locate(self, n: tf.Tensor):
    """Local element n -> (step, global example j, example seed, image index)."""
    fold = tf.random.experimental.stateless_fold_in
    order_seed, example_seed = self.seeds()
    step = n // self.local_batch
    j = self.first + n % self.local_batch
    g = step * self.global_batch + j
    num = tf.constant(len(self.store), tf.int64)
    perm_seed = fold(order_seed, g // num)
    idx = tf.random.experimental.index_shuffle(g % num, perm_seed, num - 1)
    return step, j, fold(fold(example_seed, step), j), idx


def _example_fn(
  plan: _Plan, config: ml_collections.ConfigDict, pca_matrix: np.ndarray
) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
  crop = config.data.hr_crop
  scale = config.model.scale
  deg = config.degradation
  spec = kernel_spec(config)
  try:
    noise = degradation.noise_spec_from_config(deg)
  except ValueError as e:
    raise DataError(f"config.degradation: {e}") from e
  use_flip, use_rot = bool(config.data.use_flip), bool(config.data.use_rot)
  crop_image = plan.store.crop_fn(crop)
  heights = tf.constant(plan.store.heights, tf.int64)
  widths = tf.constant(plan.store.widths, tf.int64)
  pca = tf.constant(np.asarray(pca_matrix, np.float32))
  fold = tf.random.experimental.stateless_fold_in
  clean_pair = models.family(config.model.version).needs_clean_lr(config.model)

  def make(n):
    _, _, seed, idx = plan.locate(n)
    rand_int = lambda i, hi: tf.random.stateless_uniform(
      [], fold(seed, i), minval=tf.constant(0, tf.int64), maxval=hi, dtype=tf.int64
    )
    y0 = rand_int(0, heights[idx] - crop + 1)
    x0 = rand_int(1, widths[idx] - crop + 1)
    hr = tf.cast(crop_image(idx, y0, x0), tf.float32) / 255.0
    # Official `augment`: hflip, then vflip and transpose (use_rot), each with p = 0.5.
    coin = tf.random.stateless_uniform([3], fold(seed, 2)) < 0.5
    if use_flip:
      hr = tf.cond(coin[0], lambda: tf.reverse(hr, [1]), lambda: hr)
    if use_rot:
      hr = tf.cond(coin[1], lambda: tf.reverse(hr, [0]), lambda: hr)
      hr = tf.cond(coin[2], lambda: tf.transpose(hr, [1, 0, 2]), lambda: hr)
    hr = tf.ensure_shape(hr, [crop, crop, 3])
    kernel = degradation.sample_kernels(1, spec, fold(seed, 3))
    # A fixed noise level, or one drawn per image from [noise_sigma, noise_sigma_max].
    sigma = (
      degradation.sample_noise_sigma(1, noise, fold(seed, 5))
      if noise.sigma_max > noise.sigma_min
      else noise.sigma_min
    )
    lr = degradation.degrade(hr[None], kernel, scale, noise_sigma=sigma, seed=fold(seed, 4))
    if noise.jpeg_prob > 0:
      lr = degradation.apply_jpeg(lr, degradation.sample_jpeg_quality(1, noise, fold(seed, 6)))
    lr = lr[0]
    if deg.quantize_lr:
      lr = degradation.quantize_8bit(lr)
    out = dict(lr=lr, hr=hr, kernel=kernel[0], code=degradation.encode(kernel, pca)[0])
    if clean_pair:  # DCLS's kernel loss: noise-free bicubic LR of the blurred and clean HR
      out["lr_blurred"] = degradation.degrade(hr[None], kernel, scale)[0]
      out["lr_clean"] = degradation.imresize(hr, 1.0 / scale)
    return out

  return make


def _resolve_processes(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return int(process_index), int(process_count)


def _build(config, pca_matrix, start_step, process_index, process_count):
  process_index, process_count = _resolve_processes(process_index, process_count)
  _check_train_config(config, pca_matrix, process_index, process_count)
  if not isinstance(start_step, (int, np.integer)) or start_step < 0:
    raise DataError(f"start_step must be a non-negative int, got {start_step!r}")
  store = train_store(config, config.data.hr_crop)
  local = config.batch_size // process_count
  plan = _Plan(store, int(config.seed), int(config.batch_size), local, process_index * local)
  ds = tf.data.Dataset.counter(int(start_step) * local, dtype=tf.int64)
  # The map function is plain TF ops (Python `if`s on config values only): AutoGraph's
  # source transformation of it and of `degradation` would cost ~4 s per start, for the
  # same graph.
  make = tf.autograph.experimental.do_not_convert(_example_fn(plan, config, pca_matrix))
  ds = ds.map(
    make, num_parallel_calls=_tf_autotune(config.data.num_parallel_calls), deterministic=True
  )
  ds = ds.batch(local, drop_remainder=True)
  if config.data.prefetch:
    ds = ds.prefetch(_tf_autotune(config.data.prefetch))
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return ds, plan


def create_train_dataset(
  config: ml_collections.ConfigDict,
  pca_matrix: np.ndarray,
  *,
  start_step: int = 0,
  process_index: Optional[int] = None,
  process_count: Optional[int] = None,
) -> tf.data.Dataset:
  """The infinite tf.data.Dataset behind `create_train_iterator` (same arguments)."""
  return _build(config, pca_matrix, start_step, process_index, process_count)[0]


def _find_corrupt(plan: _Plan, step: int) -> Optional[str]:
  """Decodes the images of one step eagerly; returns 'name: error' of the first failure."""
  for n in range(step * plan.local_batch, (step + 1) * plan.local_batch):
    idx = int(plan.locate(tf.constant(n, tf.int64))[3])
    try:
      tf.io.decode_image(plan.store.read_bytes(idx), channels=3, expand_animations=False)
    except (tf.errors.OpError, OSError) as e:
      return f"{plan.store.names[idx]}: {getattr(e, 'message', e)}"
  return None


def _iterate(
  ds: tf.data.Dataset, plan: _Plan, start_step: int, lookahead: int
) -> Iterator[dict[str, np.ndarray]]:
  step = start_step
  it = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      if plan.store.pixels is None:
        # Errors surface in order, but look a little ahead in case of prefetching.
        for s in range(step, step + lookahead):
          culprit = _find_corrupt(plan, s)
          if culprit:
            raise DataError(
              f"corrupt training image {culprit} (used at step {s}); remove or repair it"
            ) from e
      raise
    yield batch
    step += 1


def create_train_iterator(
  config: ml_collections.ConfigDict,
  pca_matrix: np.ndarray,
  *,
  start_step: int = 0,
  process_index: Optional[int] = None,
  process_count: Optional[int] = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields host-local training batches for steps start_step, start_step + 1, ... (forever).

  Each batch (numpy, b = config.batch_size // process_count):
    'lr':     [b, hr_crop/scale, hr_crop/scale, 3] float32 (multiples of 1/255 when
              config.degradation.quantize_lr; not clipped unless noise is added),
    'hr':     [b, hr_crop, hr_crop, 3] float32 in [0, 1],
    'kernel': [b, k, k] float32, the true blur kernel (sums to 1),
    'code':   [b, code_len] float32 = degradation.encode(kernel, pca_matrix).
  Host p holds examples [p*b, (p+1)*b) of the global batch. Batch i is a pure function of
  (config, i): see the module docstring. Configuration and data problems raise `DataError`
  here, before the first batch; a corrupt file found while decoding raises it on `next`.
  """
  ds, plan = _build(config, pca_matrix, start_step, process_index, process_count)
  lookahead = 2 + max(int(config.data.prefetch), 0)
  return _iterate(ds, plan, int(start_step), lookahead)


# --------------------------------------------------------------------------
# Validation set
# --------------------------------------------------------------------------


def _decode_file(path: str) -> np.ndarray:
  data = tf.io.read_file(path)
  return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False).numpy()


def _val_images(config: ml_collections.ConfigDict) -> tuple[list[str], list[np.ndarray]]:
  data = config.data
  limit = int(data.val_max_images) if data.val_max_images else None
  if data.val_source == "demo":
    names, images = list(DEMO_VAL_NAMES), demo_images("val")
    return names[:limit], images[:limit]
  dirs = split_dirs(data.val_dir, "data.val_dir")
  found = [(d, p) for d in dirs for p in list_image_files(d, "data.val_dir")]
  stems = [os.path.splitext(os.path.basename(p))[0] for _, p in found]
  if len(set(stems)) < len(stems):  # same stem in two sub-folders: use relative paths
    stems = [os.path.splitext(os.path.relpath(p, d))[0].replace(os.sep, "_") for d, p in found]
  names, images, bad = [], [], []
  for (_, path), stem in zip(found, stems):
    if limit is not None and len(images) >= limit:
      break
    try:
      img = _decode_file(path)
    except tf.errors.OpError as e:
      bad.append(f"{path} ({e.message})")
      continue
    names.append(stem)
    images.append(img)
  if bad:
    warn_list(f"skipping {len(bad)} unreadable validation image(s) in {data.val_dir}", bad)
  if not images:
    raise DataError(f"config.data.val_dir: no readable image in {data.val_dir}")
  return names, images


def create_validation_set(
  config: ml_collections.ConfigDict, pca_matrix: np.ndarray
) -> Optional[dict[str, Any]]:
  """A fixed Gaussian8-style validation set, synthesized once (None for val_source "none").

  HR images come from `data.val_dir` (sorted, recursive; "folder") or the held-out demo
  photographs `DEMO_VAL_NAMES` ("demo"), at most `data.val_max_images`. Each HR image is
  centre-cropped to `data.val_crop` (when > 0; it must be a multiple of the scale, smaller
  images are skipped with a warning) or modcropped to a multiple of the scale; its LR is
  the official Gaussian8 pipeline with the single isotropic sigma `data.val_sigma`
  (kernel size `degradation.kernel_size`, reflect blur, MATLAB bicubic 1/scale, clip,
  8-bit rounding), i.e. `degradation.make_gaussian8_lr`. No noise is added.

  Returns a dict (images may differ in size, so per-image lists, in a fixed order):
    'hr':     list of [H, W, 3] float32 in [0, 1] (multiples of 1/255),
    'lr':     list of [H/scale, W/scale, 3] float32 (multiples of 1/255),
    'kernel': [N, k, k] float32 (the same isotropic kernel for every image),
    'code':   [N, code_len] float32 = encode(kernel, pca_matrix),
    'names':  list of N str (file stems, or relative paths with '_' for '/' when stems
              repeat; demo names).
  With val_crop > 0 all images have the same size: `np.stack(val['lr'])` gives a batch.
  """
  source = config.data.val_source
  if source not in VAL_SOURCES:
    raise DataError(f"config.data.val_source must be one of {VAL_SOURCES}, got {source!r}")
  if source == "none":
    return None
  scale, k = config.model.scale, config.degradation.kernel_size
  if scale not in degradation.SUPPORTED_SCALES:
    raise DataError(
      f"config.model.scale must be one of {degradation.SUPPORTED_SCALES}, got {scale!r}"
    )
  crop = int(config.data.val_crop or 0)
  if crop < 0 or crop % scale:
    raise DataError(
      f"config.data.val_crop must be 0 or a positive multiple of the scale {scale}, got {crop}"
    )
  pca = np.asarray(pca_matrix, np.float32)
  if pca.ndim != 2 or pca.shape[0] != k * k:
    raise DataError(
      f"pca_matrix must be ({k * k}, code_len) for kernel_size {k}, got shape {pca.shape}"
    )
  names, images = _val_images(config)
  kept_names, hrs, lrs, small = [], [], [], []
  for name, img in zip(names, images):
    h, w = img.shape[:2]
    if crop:
      if h < crop or w < crop:
        small.append(f"{name} ({h}x{w})")
        continue
      y0, x0 = (h - crop) // 2, (w - crop) // 2
      img = img[y0 : y0 + crop, x0 : x0 + crop]
    else:
      img = degradation.modcrop(img, scale)
    if min(img.shape[:2]) < max(k, scale):
      small.append(f"{name} ({h}x{w})")
      continue
    lr = degradation.make_gaussian8_lr(img, scale, k, sigmas=[config.data.val_sigma])[0]
    kept_names.append(name)
    hrs.append(img.astype(np.float32) / 255.0)
    lrs.append(lr.astype(np.float32) / 255.0)
  if small:
    warn_list(
      f"skipping {len(small)} validation image(s) smaller than {crop or k}x{crop or k}", small
    )
  if not hrs:
    raise DataError(f"config.data.val_crop = {crop}: no validation image is large enough")
  kernel = degradation.isotropic_gaussian_kernel(k, float(config.data.val_sigma)).numpy()
  kernels = np.repeat(kernel[None], len(hrs), axis=0)
  code = degradation.encode(kernels, pca).numpy()
  return dict(hr=hrs, lr=lrs, kernel=kernels, code=code, names=kept_names)
