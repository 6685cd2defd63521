"""The predictor: a DAN/DCLS model run on LR images, whole or tiled, with self-ensemble.

`Predictor` is the inference engine behind `python -m dan_jax.infer` (whose docstring
describes the modes: whole-image, tiled with exact receptive-field margins, and the
official test_x8 self-ensemble), `dan_jax.evaluate`, the notebooks and the benchmarks.
It works on arrays; reading and writing files is `infer`'s.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dan_jax import models
from dan_jax import parallel
from dan_jax import precision as precision_lib
from dan_jax.errors import InferenceError
from dan_jax.prediction import Prediction


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


def axis_window(
  length: int, cut_before: bool, cut_after: bool, scale: int, margin: float, width: float
) -> np.ndarray:
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
    precision: matmul/conv precision (`precision.PRECISIONS`): 'highest' (default: float32
      on every platform, the paper protocol's numbers), 'default' (the platform's fast
      float32: one bf16 pass on TPU, TF32 on GPU) or 'bfloat16' (bfloat16 activations).
    devices: the devices to shard over (default: all of this process's devices).
  """

  def __init__(
    self,
    model_config: Any,
    variables: dict,
    *,
    self_ensemble: bool = False,
    tile: int = 0,
    tile_overlap: Optional[int] = None,
    batch_size: int = 8,
    pad_to_multiple: int = 0,
    precision: str = "highest",
    devices: Optional[Sequence[Any]] = None,
  ):
    try:
      self.precision = precision_lib.check_precision(precision)
    except ValueError as e:
      raise InferenceError(str(e)) from e
    self.spec = models.spec_from_config(model_config)
    if precision_lib.compute_dtype(precision, "") == "bfloat16":
      self.spec = dataclasses.replace(self.spec, dtype=jnp.bfloat16)
    self.model = models.create_model(self.spec)
    self.self_ensemble = bool(self_ensemble)
    for name, value in (
      ("tile", tile),
      ("batch_size", batch_size),
      ("pad_to_multiple", pad_to_multiple),
    ):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InferenceError(f"{name} must be a non-negative integer, got {value!r}")
    if batch_size < 1:
      raise InferenceError(f"batch_size must be at least 1, got {batch_size}")
    if tile and self.spec.version == "DCLS":
      raise InferenceError(
        "tiled inference is not available for DCLS: its Fourier "
        "deconvolution and kernel estimate see the whole image; run "
        "whole images (--tile 0)"
      )
    self.rf_restorer, self.rf_estimator = receptive_fields(self.spec)
    if tile_overlap is None:
      tile_overlap = default_tile_overlap(self.spec) if tile else 0
    if tile and not 0 <= tile_overlap < tile:
      raise InferenceError(
        f"tile overlap {tile_overlap} must be >= 0 and smaller than the tile ({tile}); "
        f"the exact overlap for this model is {default_tile_overlap(self.spec)} "
        "(2 x the Restorer's receptive-field radius): use a larger --tile, or a smaller "
        "--tile_overlap for approximate (feathered) tiles"
      )
    self.tile, self.tile_overlap = int(tile), int(tile_overlap)
    self.mesh = parallel.local_mesh() if devices is None else parallel.create_mesh(devices)
    self.num_devices = int(self.mesh.devices.size)
    self.batch_size = parallel.round_up(batch_size, self.num_devices)
    self.pad_to_multiple = int(pad_to_multiple)
    rep, data = parallel.replicated(self.mesh), parallel.data_sharded(self.mesh)
    abstract = all(
      isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(variables)
    )  # shapes only: `dan_jax.aot` compiles the jitted pieces for devices it cannot reach
    self.variables = variables if abstract else jax.device_put(variables, rep)
    self._whole = jax.jit(self._whole_fn, in_shardings=(rep, data), out_shardings=data)
    self._restore = jax.jit(self._restore_fn, in_shardings=(rep, data, rep), out_shardings=data)
    self._pool = jax.jit(self._pool_fn, in_shardings=(rep, data, data, data), out_shardings=rep)

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
    return self._step().apply(
      {"params": variables["params"]["alternate"]},
      lr,
      code,
      method=lambda m, x, c: m.restorer(x, c).astype(jnp.float32),
    )

  def _pool_fn(self, variables, sr, lr, weights):
    """Sum over tiles of weights * the Estimator's features before its global pool."""
    feature = "tail_conv" if self.spec.version == "DANv2" else "out"

    def capture(mdl, method_name):
      return (
        method_name == "__call__"
        and mdl.name == feature
        and mdl.parent is not None
        and getattr(mdl.parent, "name", None) == "estimator"
      )

    _, state = self._step().apply(
      {"params": variables["params"]["alternate"]},
      sr,
      lr,
      method=lambda m, s, x: m.estimator(s, x),
      capture_intermediates=capture,
    )
    f = state["intermediates"]["estimator"][feature]["__call__"][0]
    return jnp.einsum("bhw,bhwc->c", weights, f.astype(jnp.float32))

  def _head(self, pooled: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Code (and kernel) from globally pooled Estimator features, as the model's head."""
    if self.spec.version == "DANv1":
      return pooled.astype(np.float32), None
    tail = self.variables["params"]["alternate"]["estimator"]["tail_kernel"]
    logits = pooled @ np.asarray(tail["kernel"], np.float64)[0, 0] + np.asarray(
      tail["bias"], np.float64
    )
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
    with precision_lib.precision_scope(self.precision):
      sr, code, kernel = jax.device_get(self._whole(self.variables, x))
    s = self.scale
    sr = np.asarray(sr[:n, : h * s, : w * s], np.float32)
    return [
      Prediction(sr[i], np.asarray(code[i]), None if kernel is None else np.asarray(kernel[i]))
      for i in range(n)
    ]

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
        cache[key] = np.outer(
          axis_window(th, key[0], key[1], scale, margin, width),
          axis_window(tw, key[2], key[3], scale, margin, width),
        ).astype(np.float32)
      return cache[key]

    total = np.zeros((h * scale, w * scale), np.float32)
    for y, x in boxes:
      total[y * scale : (y + th) * scale, x * scale : (x + tw) * scale] += raw(y, x)
    if not np.all(total > 0):
      raise AssertionError("tile windows leave pixels uncovered")  # a bug, not user input

    def window(i):
      y, x = boxes[i]
      return raw(y, x) / total[y * scale : (y + th) * scale, x * scale : (x + tw) * scale]

    return window

  def _batches(self, items: Sequence[Any]):
    for i in range(0, len(items), self.batch_size):
      yield i, items[i : i + self.batch_size]

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
    lr_tile = lambda y, x: lr[y : y + th, x : x + tw]
    pca = np.asarray(self.variables["pca"]["matrix"])
    code = np.asarray(models.delta_code(pca, self.spec.kernel_size))[None]
    kernel = None
    for _ in range(self.spec.loops):
      sr = np.zeros((h * s, w * s, 3), np.float32)
      for i, group in self._batches(boxes):
        tiles = self._pad_batch([lr_tile(y, x) for y, x in group], size)
        with precision_lib.precision_scope(self.precision):
          out = np.asarray(self._restore(self.variables, tiles, code))
        for j, (y, x) in enumerate(group):
          sr[y * s : (y + th) * s, x * s : (x + tw) * s] += out[j] * sr_win(i + j)[..., None]
      pooled = 0.0
      for i, group in self._batches(boxes):
        sr_tiles = self._pad_batch(
          [sr[y * s : (y + th) * s, x * s : (x + tw) * s] for y, x in group], size
        )
        lr_tiles = self._pad_batch([lr_tile(y, x) for y, x in group], size)
        weights = self._pad_batch([lr_win(i + j) / (h * w) for j in range(len(group))], size)
        with precision_lib.precision_scope(self.precision):
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
    kernel = (
      np.mean(kernels, axis=0, dtype=np.float64).astype(np.float32) if self.has_kernel else None
    )
    return [
      Prediction(sr[j], first[j].code, None if kernel is None else kernel[j])
      for j in range(len(lrs))
    ]

  def predict(self, lr: np.ndarray) -> Prediction:
    """Super-resolves one LR image [H, W, 3] (float in [0, 1])."""
    lr = np.asarray(lr, np.float32)
    if lr.ndim != 3:
      raise InferenceError(f"expected an LR image [H, W, 3], got shape {lr.shape}")
    return self.predict_batch(lr[None])[0]
