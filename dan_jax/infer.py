"""Super-resolve images with a trained or converted DAN checkpoint.

  python -m dan_jax.infer --checkpoint DIR --input PATH_OR_FOLDER --output FOLDER
  python -m dan_jax.infer --exported DIR --input ... --output ...   # a dan_jax.export dir

`--checkpoint` is a training workdir (its latest checkpoint), one step's directory, or a
converted official checkpoint; the model config is stored with every checkpoint.
`--exported` runs the StableHLO artifact of `python -m dan_jax.export` instead (whole
images; no model code, same results).

Whole-image inference (default) runs the model's full alternating loop on each image, as
the official `inference.py` does: the SR image is the last iteration's, the kernel (DANv2)
or code (DANv1) the last estimate.

Tiled inference (`--tile T`) runs the *same* alternating loop tile by tile, so it gives the
whole-image result for images too large for the accelerator:
  * Restorer: tiles of T x T LR pixels, neighbours overlapping by `--tile_overlap` O pixels;
    every tile's SR output is weighted by a window that is zero within `margin` LR pixels of
    a cut edge (image borders are not cut edges), rises with a raised cosine across the rest
    of the overlap and is one elsewhere; the SR image is the normalised weighted sum.
  * Estimator: DAN's Estimator is convolutional up to one global average pool, so the pool
    is computed exactly as the same weighted sum of per-tile features (of the SR image
    assembled above), and the code/kernel head is applied to the pooled features.
  * With O >= 2 x the receptive-field radius R of the Restorer (`receptive_fields`), the
    margin is R and every pixel that counts was computed with its whole receptive field
    inside its tile: DANv2 results then equal whole-image inference to float rounding, at
    every iteration (this is the default overlap). With a smaller O the margin is 0 and
    tiles are feathered over the whole overlap: approximate, seams hidden.
  * DANv1 is always approximate when tiled: its channel attention pools every block's
    features over the image, which a tile sees only part of.
The code is therefore estimated from the whole image in both modes (no representative-tile
heuristic), and each alternating iteration costs one tiled pass of each network.

Self-ensemble (`--self_ensemble`): the official test_x8 (EDSR's): the 8 flips/transposes of
the LR image are super-resolved, transformed back and averaged. DANv2 kernels are
transformed back the same way and averaged; DANv1 reports the code of the untransformed
image (a PCA code has no flip).

Files: PNG, JPEG, BMP, TIFF, WebP in; 8- and 16-bit; grayscale is processed as 3 channels
and written back as grayscale; an alpha channel is upscaled separately with MATLAB bicubic
(`degradation.imresize`) and written back; EXIF orientation is applied. Results are PNG
(`{stem}_x{scale}.png`, 16-bit for 16-bit input) with the estimated kernel beside them
(DANv2: `{stem}_x{scale}_kernel.png` scaled for display and `_kernel.npy` with the values;
DANv1: `{stem}_x{scale}_code.npy`). Existing files are never replaced without
`--overwrite`, inputs never, and an output folder equal to the input folder is refused.

Exit status: 0 when every image was written; 1 when some failed (corrupt or unreadable
images, existing outputs; each gets one `error:` line and the others are still processed);
2 when nothing could be done (bad arguments, no images, bad checkpoint). Files in an input
folder without an image extension are skipped with a note and do not fail the run.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dan_jax import image_io
from dan_jax import models
from dan_jax import storage
from dan_jax import parallel
from dan_jax import runtime


class InferenceError(ValueError):
  """Inference cannot be run as asked (bad options, or an image the model cannot take)."""


@dataclasses.dataclass
class Prediction:
  """One image's result: SR [sH, sW, 3] float32, code [code_len], kernel [k, k] or None."""

  sr: np.ndarray
  code: np.ndarray
  kernel: Optional[np.ndarray]


def receptive_fields(spec: models.ModelSpec) -> tuple[int, int]:
  """(Restorer, Estimator-features) receptive-field radii in LR pixels, rounded up.

  Restorer: 3x3 head, two 3x3 convs per block, 3x3 fusion, then the upsampler's convs
  (the ones after a PixelShuffle count a fraction of an LR pixel); +1 covers the SR-to-LR
  pixel-centre offset. Estimator (up to its global pool): LR head (5x5 in v2, 1x1 in v1)
  and the strided SR head (radius 2 LR pixels), two 3x3 convs per block, a 3x3 tail.
  """
  if spec.version == "DANv2":
    restorer = 1 + 2 * spec.nb * spec.ng + 1 + 2 + 1
    estimator = 2 + 2 * spec.estimator_nb + 1 + 1
  elif spec.version == "DCLS":  # convolutions only: its Fourier deconvolution is global
    restorer = 1 + 6 + 3 * spec.nb * spec.ng + 1 + 2 + 1
    estimator = 3 + 2 * spec.estimator_nb + 2
  else:
    restorer = 1 + 2 * spec.nb + 1 + 2 + 1
    estimator = math.ceil(4 / spec.scale) + 1 + 2 * spec.estimator_nb + 1 + 1
  return restorer, estimator


def default_tile_overlap(spec: models.ModelSpec) -> int:
  """The smallest overlap for which tiled DANv2 equals whole-image inference."""
  return 2 * receptive_fields(spec)[0]


# ---------------------------------------------------------------------------------------
# Flips and transposes (self-ensemble)
# ---------------------------------------------------------------------------------------


def _transform(x: np.ndarray, i: int) -> np.ndarray:
  """The official test_x8 order on [B, H, W, ...]: flip W (bit 0), flip H (bit 1), transpose."""
  if i & 1:
    x = x[:, :, ::-1]
  if i & 2:
    x = x[:, ::-1]
  if i & 4:
    x = x.swapaxes(1, 2)
  return np.ascontiguousarray(x)


def _untransform(x: np.ndarray, i: int) -> np.ndarray:
  if i & 4:
    x = x.swapaxes(1, 2)
  if i & 2:
    x = x[:, ::-1]
  if i & 1:
    x = x[:, :, ::-1]
  return np.ascontiguousarray(x)


# ---------------------------------------------------------------------------------------
# Tiles
# ---------------------------------------------------------------------------------------


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
  """Tile origins along one axis: stride tile - overlap, the last tile flush with the end."""
  if n <= tile:
    return [0]
  starts = list(range(0, n - tile, tile - overlap))
  return starts + [n - tile]


def _ramp(d: np.ndarray, margin: float, width: float) -> np.ndarray:
  if width <= 0:
    return (d >= margin).astype(np.float64)
  t = np.clip((d - margin) / width, 0.0, 1.0)
  return 0.5 - 0.5 * np.cos(np.pi * t)


def axis_window(length: int, cut_before: bool, cut_after: bool, scale: int, margin: float,
                width: float) -> np.ndarray:
  """Blend weights along one axis of a tile, sampled at scale x its LR length.

  Distances are from pixel centres to the tile's cut edges, in LR pixels; an axis end that
  is an image border is no cut and keeps weight one.
  """
  pos = (np.arange(length * scale) + 0.5) / scale
  w = np.ones_like(pos)
  if cut_before:
    w *= _ramp(pos, margin, width)
  if cut_after:
    w *= _ramp(length - pos, margin, width)
  return w


def _margin_and_width(overlap: int, radius: int) -> tuple[int, int]:
  if overlap >= 2 * radius:
    return radius, overlap - 2 * radius  # exact: nothing within `radius` of a cut counts
  return 0, overlap  # approximate: feather over the whole overlap


# ---------------------------------------------------------------------------------------
# The predictor
# ---------------------------------------------------------------------------------------


class Predictor:
  """Runs a DAN model on images: whole-image (batched, jitted per shape) or tiled.

  Args:
    model_config: the model config (as stored with checkpoints).
    variables: {'params', 'pca'} (e.g. from `checkpoint.load_model`).
    self_ensemble: average the 8 flips/transposes (official test_x8).
    tile: LR tile size for tiled inference (0: whole images). Images no larger than the
      tile in both dimensions run whole.
    tile_overlap: overlap of neighbouring tiles in LR pixels (default: exact, see module
      docstring).
    batch_size: images (whole mode) or tiles (tiled mode) per call, rounded up to a
      multiple of the device count: calls are sharded over every local device (padded
      by repetition, the padding dropped: exact, images and tiles are independent).
    pad_to_multiple: whole mode only: pad LR images (edge replication, bottom/right) to a
      multiple of this many pixels so that differently sized images share a compiled
      program. APPROXIMATE: padding changes the borders and the estimator's global pool.
      0 (default) runs every image at its exact size (one compilation per distinct size).
    precision: matmul/conv precision (`runtime.PRECISIONS`): 'highest' (default: float32
      on every platform, the paper protocol's numbers), 'default' (the platform's fast
      float32: one bf16 pass on TPU, TF32 on GPU) or 'bfloat16' (bfloat16 activations).
    devices: the devices to shard over (default: all of this process's devices).
  """

  def __init__(self, model_config: Any, variables: dict, *, self_ensemble: bool = False,
               tile: int = 0, tile_overlap: Optional[int] = None, batch_size: int = 8,
               pad_to_multiple: int = 0, precision: str = "highest",
               devices: Optional[Sequence[Any]] = None):
    try:
      self.precision = runtime.check_precision(precision)
    except ValueError as e:
      raise InferenceError(str(e)) from e
    self.spec = models.spec_from_config(model_config)
    if runtime.compute_dtype(precision, "") == "bfloat16":
      self.spec = dataclasses.replace(self.spec, dtype=jnp.bfloat16)
    self.model = models.create_model(self.spec)
    self.self_ensemble = bool(self_ensemble)
    for name, value in (("tile", tile), ("batch_size", batch_size),
                        ("pad_to_multiple", pad_to_multiple)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InferenceError(f"{name} must be a non-negative integer, got {value!r}")
    if batch_size < 1:
      raise InferenceError(f"batch_size must be at least 1, got {batch_size}")
    if tile and self.spec.version == "DCLS":
      raise InferenceError("tiled inference is not available for DCLS: its Fourier "
                           "deconvolution and kernel estimate see the whole image; run "
                           "whole images (--tile 0)")
    self.rf_restorer, self.rf_estimator = receptive_fields(self.spec)
    if tile_overlap is None:
      tile_overlap = default_tile_overlap(self.spec) if tile else 0
    if tile and not 0 <= tile_overlap < tile:
      raise InferenceError(
          f"tile overlap {tile_overlap} must be >= 0 and smaller than the tile ({tile}); "
          f"the exact overlap for this model is {default_tile_overlap(self.spec)} "
          "(2 x the Restorer's receptive-field radius): use a larger --tile, or a smaller "
          "--tile_overlap for approximate (feathered) tiles")
    self.tile, self.tile_overlap = int(tile), int(tile_overlap)
    self.mesh = parallel.local_mesh() if devices is None else parallel.create_mesh(devices)
    self.num_devices = int(self.mesh.devices.size)
    self.batch_size = parallel.round_up(batch_size, self.num_devices)
    self.pad_to_multiple = int(pad_to_multiple)
    rep, data = parallel.replicated(self.mesh), parallel.data_sharded(self.mesh)
    self.variables = jax.device_put(variables, rep)
    self._whole = jax.jit(self._whole_fn, in_shardings=(rep, data), out_shardings=data)
    self._restore = jax.jit(self._restore_fn, in_shardings=(rep, data, rep),
                            out_shardings=data)
    self._pool = jax.jit(self._pool_fn, in_shardings=(rep, data, data, data),
                         out_shardings=rep)

  @property
  def scale(self) -> int:
    return self.spec.scale

  @property
  def has_kernel(self) -> bool:
    return self.spec.version in ("DANv2", "DCLS")

  @property
  def tiled_is_exact(self) -> bool:
    """Whether tiled inference equals whole-image inference (to float rounding)."""
    return self.spec.version == "DANv2" and self.tile_overlap >= 2 * self.rf_restorer

  # ---- jitted pieces ----

  def _whole_fn(self, variables, lr):
    out = self.model.apply(variables, lr)
    kernel = None if out.kernel is None else out.kernel[-1]
    return out.sr[-1], out.code[-1], kernel

  def _step(self):
    return models.AlternatingStep(self.spec)

  def _restore_fn(self, variables, lr, code):
    code = jnp.broadcast_to(code, (lr.shape[0], code.shape[-1]))
    return self._step().apply({"params": variables["params"]["alternate"]}, lr, code,
                              method=lambda m, x, c: m.restorer(x, c).astype(jnp.float32))

  def _pool_fn(self, variables, sr, lr, weights):
    """Sum over tiles of weights * the Estimator's features before its global pool."""
    feature = "tail_conv" if self.spec.version == "DANv2" else "out"

    def capture(mdl, method_name):
      return (method_name == "__call__" and mdl.name == feature and
              mdl.parent is not None and getattr(mdl.parent, "name", None) == "estimator")

    _, state = self._step().apply(
        {"params": variables["params"]["alternate"]}, sr, lr,
        method=lambda m, s, x: m.estimator(s, x), capture_intermediates=capture)
    f = state["intermediates"]["estimator"][feature]["__call__"][0]
    return jnp.einsum("bhw,bhwc->c", weights, f.astype(jnp.float32))

  def _head(self, pooled: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Code (and kernel) from globally pooled Estimator features, as the model's head."""
    if self.spec.version == "DANv1":
      return pooled.astype(np.float32), None
    tail = self.variables["params"]["alternate"]["estimator"]["tail_kernel"]
    logits = pooled @ np.asarray(tail["kernel"], np.float64)[0, 0] + np.asarray(
        tail["bias"], np.float64)
    kernel = np.exp(logits - logits.max())
    kernel /= kernel.sum()
    code = kernel @ np.asarray(self.variables["pca"]["matrix"], np.float64)
    k = self.spec.kernel_size
    return code.astype(np.float32), kernel.reshape(k, k).astype(np.float32)

  # ---- whole images ----

  def _run_whole(self, lrs: np.ndarray) -> list[Prediction]:
    n, h, w, _ = lrs.shape
    x = lrs
    m = self.pad_to_multiple
    if m > 1 and (h % m or w % m):
      x = np.pad(x, ((0, 0), (0, -h % m), (0, -w % m), (0, 0)), mode="edge")
    # Batch sizes are powers of two (few compilations) and multiples of the device count.
    x = parallel.pad_batch(x, parallel.round_up(1 << (n - 1).bit_length(), self.num_devices))
    with runtime.precision_scope(self.precision):
      sr, code, kernel = jax.device_get(self._whole(self.variables, x))
    s = self.scale
    sr = np.asarray(sr[:n, :h * s, :w * s], np.float32)
    return [Prediction(sr[i], np.asarray(code[i]),
                       None if kernel is None else np.asarray(kernel[i]))
            for i in range(n)]

  # ---- tiles ----

  def _tiles(self, h: int, w: int):
    t, o = self.tile, self.tile_overlap
    th, tw = min(t, h), min(t, w)
    boxes = [(y, x) for y in tile_starts(h, t, o) for x in tile_starts(w, t, o)]
    return th, tw, boxes

  def _windows(self, h, w, th, tw, boxes, scale, radius) -> Callable[[int], np.ndarray]:
    """Tile i's blend weights, normalised to sum to one over tiles at every pixel.

    Windows depend only on which tile edges are cuts, so a few are built and shared;
    only the normaliser is image-sized.
    """
    margin, width = _margin_and_width(self.tile_overlap, radius)
    cache: dict[tuple, np.ndarray] = {}

    def raw(y, x):
      key = (y > 0, y + th < h, x > 0, x + tw < w)
      if key not in cache:
        cache[key] = np.outer(axis_window(th, key[0], key[1], scale, margin, width),
                              axis_window(tw, key[2], key[3], scale, margin, width)
                              ).astype(np.float32)
      return cache[key]

    total = np.zeros((h * scale, w * scale), np.float32)
    for y, x in boxes:
      total[y * scale:(y + th) * scale, x * scale:(x + tw) * scale] += raw(y, x)
    if not np.all(total > 0):
      raise AssertionError("tile windows leave pixels uncovered")  # a bug, not user input

    def window(i):
      y, x = boxes[i]
      return raw(y, x) / total[y * scale:(y + th) * scale, x * scale:(x + tw) * scale]

    return window

  def _batches(self, items: Sequence[Any]):
    for i in range(0, len(items), self.batch_size):
      yield i, items[i:i + self.batch_size]

  def _pad_batch(self, arrays: list[np.ndarray], size: int) -> np.ndarray:
    x = np.stack(arrays)
    if len(arrays) < size:  # every call of one image has one batch shape: one compilation
      x = np.concatenate([x, np.zeros((size - len(arrays),) + x.shape[1:], x.dtype)])
    return x

  def _run_tiled(self, lr: np.ndarray) -> Prediction:
    h, w, _ = lr.shape
    s = self.scale
    th, tw, boxes = self._tiles(h, w)
    size = parallel.round_up(min(self.batch_size, len(boxes)), self.num_devices)
    sr_win = self._windows(h, w, th, tw, boxes, s, self.rf_restorer)
    lr_win = self._windows(h, w, th, tw, boxes, 1, self.rf_estimator)
    lr_tile = lambda y, x: lr[y:y + th, x:x + tw]
    pca = np.asarray(self.variables["pca"]["matrix"])
    code = np.asarray(models.delta_code(pca, self.spec.kernel_size))[None]
    kernel = None
    for _ in range(self.spec.loops):
      sr = np.zeros((h * s, w * s, 3), np.float32)
      for i, group in self._batches(boxes):
        tiles = self._pad_batch([lr_tile(y, x) for y, x in group], size)
        with runtime.precision_scope(self.precision):
          out = np.asarray(self._restore(self.variables, tiles, code))
        for j, (y, x) in enumerate(group):
          sr[y * s:(y + th) * s, x * s:(x + tw) * s] += out[j] * sr_win(i + j)[..., None]
      pooled = 0.0
      for i, group in self._batches(boxes):
        sr_tiles = self._pad_batch([sr[y * s:(y + th) * s, x * s:(x + tw) * s]
                                    for y, x in group], size)
        lr_tiles = self._pad_batch([lr_tile(y, x) for y, x in group], size)
        weights = self._pad_batch([lr_win(i + j) / (h * w) for j in range(len(group))], size)
        with runtime.precision_scope(self.precision):
          part = self._pool(self.variables, sr_tiles, lr_tiles, weights)
        pooled = pooled + np.asarray(part, np.float64)
      code_1d, kernel = self._head(pooled)
      code = code_1d[None]
    return Prediction(sr, code[0], kernel)

  # ---- public ----

  def uses_tiles(self, h: int, w: int) -> bool:
    return bool(self.tile) and max(h, w) > self.tile

  def _run(self, lrs: np.ndarray) -> list[Prediction]:
    h, w = lrs.shape[1:3]
    if self.uses_tiles(h, w):
      return [self._run_tiled(lr) for lr in lrs]
    return self._run_whole(lrs)

  def predict_batch(self, lrs: np.ndarray) -> list[Prediction]:
    """Super-resolves same-sized LR images [B, H, W, 3] (float in [0, 1]).

    B may exceed `batch_size`; it is split. Returns one Prediction per image.
    """
    lrs = np.asarray(lrs, np.float32)
    if lrs.ndim != 4 or lrs.shape[-1] != 3:
      raise InferenceError(f"expected LR images [B, H, W, 3], got shape {lrs.shape}")
    if min(lrs.shape[1:3]) < 1:
      raise InferenceError(f"empty image {lrs.shape[1:3]}")
    out = []
    for _, chunk in self._batches(lrs):
      out.extend(self._predict_chunk(chunk))
    return out

  def _predict_chunk(self, lrs: np.ndarray) -> list[Prediction]:
    if not self.self_ensemble:
      return self._run(lrs)
    srs, kernels, first = [], [], None
    for i in range(8):
      preds = self._run(_transform(lrs, i))
      if i == 0:
        first = preds
      srs.append(_untransform(np.stack([p.sr for p in preds]), i))
      if self.has_kernel:
        kernels.append(_untransform(np.stack([p.kernel for p in preds]), i))
    sr = np.mean(srs, axis=0, dtype=np.float64).astype(np.float32)
    kernel = (np.mean(kernels, axis=0, dtype=np.float64).astype(np.float32)
              if self.has_kernel else None)
    return [Prediction(sr[j], first[j].code, None if kernel is None else kernel[j])
            for j in range(len(lrs))]

  def predict(self, lr: np.ndarray) -> Prediction:
    """Super-resolves one LR image [H, W, 3] (float in [0, 1])."""
    lr = np.asarray(lr, np.float32)
    if lr.ndim != 3:
      raise InferenceError(f"expected an LR image [H, W, 3], got shape {lr.shape}")
    return self.predict_batch(lr[None])[0]


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
  """Alpha channel [H, W] -> [sH, sW] with MATLAB bicubic, clipped to [0, 1]."""
  from dan_jax import degradation  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from dan_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.hide_accelerators_from_tensorflow()  # before TensorFlow's first op
  up = degradation.imresize(np.asarray(alpha, np.float32)[..., None], scale).numpy()[..., 0]
  return np.clip(up, 0.0, 1.0)


def output_paths(input_path: str, out_dir: str, scale: int, has_kernel: bool) -> dict:
  """{'sr', 'kernel_png', 'kernel_npy'} or {'sr', 'code_npy'} paths for one input."""
  name = storage.path(input_path).name
  stem = storage.join(out_dir, f"{os.path.splitext(name)[0]}_x{scale}")
  if has_kernel:
    return {"sr": stem + ".png", "kernel_png": stem + "_kernel.png",
            "kernel_npy": stem + "_kernel.npy"}
  return {"sr": stem + ".png", "code_npy": stem + "_code.npy"}


def _npy_bytes(a: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, a)
  return buf.getvalue()


def save_prediction(pred: Prediction, paths: dict, image: Optional[image_io.LoadedImage],
                    scale: int, overwrite: bool = False) -> None:
  """Writes the SR image (in the input's form when `image` is given) and kernel/code."""
  if image is None:
    pixels = image_io.quantize(pred.sr, 8)
  else:
    alpha = None if image.alpha is None else upscale_alpha(image.alpha, scale)
    pixels = image_io.to_output(pred.sr, alpha, image.gray, image.bit_depth)
  image_io.write_png(paths["sr"], pixels, overwrite)
  if "kernel_png" in paths and pred.kernel is not None:
    image_io.write_png(paths["kernel_png"], image_io.kernel_to_display(pred.kernel), overwrite)
    image_io.write_bytes(paths["kernel_npy"], _npy_bytes(pred.kernel), overwrite)
  if "code_npy" in paths:
    image_io.write_bytes(paths["code_npy"], _npy_bytes(pred.code), overwrite)


def list_inputs(input_path: str) -> tuple[list[str], list[str]]:
  """(image files, skipped non-image files) of a file or a folder (not recursive).

  Raises:
    InferenceError: the path does not exist, or a folder holds no image files.
  """
  folder = storage.path(input_path)
  if folder.is_file():
    return [input_path], []
  if not folder.is_dir():
    raise InferenceError(f"input {input_path} does not exist")
  files = sorted(storage.join(input_path, f.name) for f in folder.iterdir()
                 if not f.name.startswith(".") and f.is_file())
  images = [f for f in files if image_io.is_image_name(f)]
  skipped = [f for f in files if not image_io.is_image_name(f)]
  if not images:
    what = f" (only non-image files: {', '.join(os.path.basename(f) for f in skipped[:5])})" \
        if skipped else ""
    raise InferenceError(f"no images in {input_path}{what}; supported extensions: "
                         f"{', '.join(image_io.IMAGE_EXTENSIONS)}")
  return images, skipped


def _same_path(a: str, b: str) -> bool:
  return storage.canonical(a) == storage.canonical(b)


def _build_parser():
  import argparse  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(
      prog="python -m dan_jax.infer",
      description="Blind super-resolution of images with a DAN checkpoint.",
      epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", default=None,
                 help="training workdir (latest checkpoint), step directory or converted "
                      "official checkpoint")
  p.add_argument("--exported", default=None,
                 help="instead of --checkpoint: a `python -m dan_jax.export` directory; "
                      "runs its StableHLO artifact (whole images, no model code)")
  p.add_argument("--input", required=True, help="an image file or a folder of images")
  p.add_argument("--output", required=True, help="output folder (created if missing)")
  p.add_argument("--tile", type=int, default=0,
                 help="LR tile size for images larger than this (0: whole images)")
  p.add_argument("--tile_overlap", type=int, default=None,
                 help="overlap of neighbouring tiles in LR pixels (default: 2x the "
                      "Restorer's receptive-field radius, which makes DANv2 tiles exact)")
  p.add_argument("--self_ensemble", action="store_true",
                 help="average the 8 flips/transposes (official test_x8)")
  p.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True,
                 help="use the EMA weights when the checkpoint has them (default: yes)")
  p.add_argument("--pad_to_multiple", type=int, default=0,
                 help="pad LR to a multiple of N to share compilations across sizes "
                      "(approximate; default 0: exact sizes)")
  p.add_argument("--batch_size", type=int, default=8,
                 help="tiles per call, sharded over all devices (rounded up to a multiple "
                      "of the device count)")
  p.add_argument("--precision", default="highest", choices=("highest", "default", "bfloat16"),
                 help="matmul/convolution precision: highest (default) = float32 on every "
                      "platform, the paper protocol's numbers; default = the platform's fast "
                      "float32 (one bf16 pass on TPU, TF32 on GPU); bfloat16 = bfloat16 "
                      "activations")
  p.add_argument("--overwrite", action="store_true",
                 help="replace existing output files (never the inputs)")
  return p


def _exported_predictor(args) -> tuple[Any, int]:
  """`--exported DIR`: the StableHLO artifact's predictor (whole images only)."""
  from dan_jax import export  # pylint: disable=g-import-not-at-top
  given = [f"--{n}" for n in ("tile", "self_ensemble", "pad_to_multiple", "tile_overlap")
           if getattr(args, n)]
  if given:
    raise InferenceError(f"{', '.join(given)} cannot be used with --exported (the "
                         "artifact runs whole images as exported)")
  predictor = export.ExportedPredictor(args.exported)
  return predictor, predictor.step


def main(argv: Optional[list[str]] = None) -> int:
  """The command line; returns the exit status (0 ok, 1 some images failed, 2 fatal)."""
  args = _build_parser().parse_args(argv)
  from dan_jax import runtime  # pylint: disable=g-import-not-at-top
  # Before JAX starts. TensorFlow is imported only for alpha channels (upscale_alpha,
  # which hides the accelerators from it first), so it is not imported here.
  runtime.setup_entry_point(tensorflow=False)
  from dan_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  try:
    inputs, skipped = list_inputs(args.input)
    output = storage.path(args.output)
    if storage.path(args.input).is_dir() and output.exists() and _same_path(
        args.input, args.output):
      raise InferenceError(f"--output {args.output} is the input folder; choose another "
                           "folder (inputs are never overwritten)")
    if output.exists() and not output.is_dir():
      raise InferenceError(f"--output {args.output} exists and is not a folder")
    if (args.checkpoint is None) == (args.exported is None):
      raise InferenceError("give exactly one of --checkpoint and --exported")
    if args.exported is not None:
      predictor, step = _exported_predictor(args)
    else:
      model_config, variables, step = checkpoint_lib.load_model(args.checkpoint,
                                                                use_ema=args.use_ema)
      predictor = Predictor(model_config, variables, self_ensemble=args.self_ensemble,
                            tile=args.tile, tile_overlap=args.tile_overlap,
                            batch_size=args.batch_size,
                            pad_to_multiple=args.pad_to_multiple,
                            precision=args.precision)
    if not storage.is_url(output):  # object stores have no folders to create
      output.mkdir(parents=True, exist_ok=True)
  except (ValueError, OSError) as e:  # CheckpointError, InferenceError, ImageError
    print(f"error: {e}", file=sys.stderr)
    return 2
  spec = predictor.spec
  print(f"{spec.version} x{spec.scale} (step {step}) on {len(inputs)} image(s) -> "
        f"{args.output}; {parallel.describe(predictor.mesh)}, precision {args.precision}",
        file=sys.stderr)
  for f in skipped:
    print(f"note: skipping {f}: not an image file (supported: "
          f"{', '.join(image_io.IMAGE_EXTENSIONS)})", file=sys.stderr)
  if args.tile and not predictor.tiled_is_exact:
    why = ("DANv1's channel attention pools over the whole image" if spec.version == "DANv1"
           else f"--tile_overlap {predictor.tile_overlap} < "
                f"{default_tile_overlap(spec)} (2x the receptive-field radius)")
    print(f"note: tiled results are approximate: {why}", file=sys.stderr)
  if args.pad_to_multiple > 1:
    print("note: --pad_to_multiple results are approximate (padding changes borders and "
          "the kernel estimate)", file=sys.stderr)

  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  input_set = {storage.canonical(f) for f in inputs}
  claimed: dict[str, str] = {}
  failed, done, times, megapixels = 0, 0, [], []
  for path in tqdm(inputs, unit="img", file=sys.stderr, disable=None):
    start = time.perf_counter()
    try:
      paths = output_paths(path, args.output, spec.scale, predictor.has_kernel)
      for p in paths.values():
        if storage.canonical(p) in input_set:
          raise InferenceError(f"{path}: output {p} would replace an input file")
        if storage.canonical(p) in claimed:
          raise InferenceError(f"{path}: output {p} is already written for "
                               f"{claimed[storage.canonical(p)]} (same file stem)")
        if not args.overwrite and storage.path(p).exists():
          raise InferenceError(f"{path}: output {p} exists (pass --overwrite to replace)")
      image = image_io.read_image(path)
      pred = predictor.predict(image.rgb)
      save_prediction(pred, paths, image, spec.scale, args.overwrite)
      for p in paths.values():
        claimed[storage.canonical(p)] = path
    except (image_io.ImageError, InferenceError) as e:
      tqdm.write(f"error: {e}", file=sys.stderr)
      failed += 1
      continue
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      tqdm.write(f"error: {path}: out of accelerator memory for a {image.height}x"
                 f"{image.width} image; use --tile (e.g. --tile 256)", file=sys.stderr)
      failed += 1
      continue
    done += 1
    times.append(time.perf_counter() - start)
    megapixels.append(pred.sr.shape[0] * pred.sr.shape[1] / 1e6)
  if done:
    total_t, total_mp = sum(times), sum(megapixels)
    line = (f"wrote {done} of {len(inputs)} image(s) to {args.output} in {total_t:.1f} s: "
            f"{total_t / total_mp:.2f} s per output megapixel")
    if done > 1:
      line += (f" ({sum(times[1:]) / sum(megapixels[1:]):.2f} s/MP after the first image, "
               "which includes compilation)")
    print(line, file=sys.stderr)
  if failed:
    print(f"error: {failed} of {len(inputs)} image(s) failed", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
