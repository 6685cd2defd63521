"""The predictor: a model of any family run on LR images, whole or tiled, with self-ensemble.

`Predictor` is the inference engine behind `python -m dan_jax.infer` (whose --help
describes the modes), `dan_jax.evaluate`, the notebooks and the benchmarks. Tiles follow
`tiling` and what the model's family supplies (`models.spec.Tiling`); self-ensemble is the
`ensemble` wrapper. It works on arrays; reading and writing files is `infer`'s.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dan_jax import ensemble
from dan_jax import models
from dan_jax import parallel
from dan_jax import precision as precision_lib
from dan_jax import tiling as tiling_lib
from dan_jax.errors import InferenceError
from dan_jax.models.spec import ModelSpec
from dan_jax.models.spec import Tiling
from dan_jax.prediction import Prediction


def default_tile_overlap(spec: ModelSpec) -> int:
  """The smallest overlap for which exact families' tiles equal whole-image inference."""
  return 2 * models.family(spec).receptive_fields(spec)[0]


def _non_negative(**values: Any) -> None:
  for name, value in values.items():
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise InferenceError(f"{name} must be a non-negative integer, got {value!r}")


def _stack_padded(arrays: list[np.ndarray], size: int) -> np.ndarray:
  """Stacked, padded with zeros to `size`: every call of one image has one batch shape."""
  x = np.stack(arrays)
  if len(arrays) < size:
    x = np.concatenate([x, np.zeros((size - len(arrays),) + x.shape[1:], x.dtype)])
  return x


def _tiling(spec: ModelSpec, tile: int, overlap: Optional[int]) -> tuple[Optional[Tiling], int]:
  """(the family's Tiling or None for whole images, the checked tile overlap)."""
  if not tile:
    return None, 0 if overlap is None else overlap
  try:
    t = models.family(spec).tiling(spec)
  except ValueError as e:  # the family cannot tile (DCLS)
    raise InferenceError(str(e)) from e
  exact = default_tile_overlap(spec)
  overlap = exact if overlap is None else overlap
  if not 0 <= overlap < tile:
    raise InferenceError(
      f"tile overlap {overlap} must be >= 0 and smaller than the tile ({tile}); "
      f"the exact overlap for this model is {exact} "
      "(2 x the Restorer's receptive-field radius): use a larger --tile, or a smaller "
      "--tile_overlap for approximate (feathered) tiles"
    )
  return t, overlap


def _approximation(spec: ModelSpec, t: Optional[Tiling], overlap: int) -> str:
  if t is not None and not t.exact:
    return t.approximate_why
  return f"--tile_overlap {overlap} < {default_tile_overlap(spec)} (2x the receptive-field radius)"


class TiledRunner:
  """One image in tiles: the family's Restorer per tile, blended; its Estimator's features
  pooled over the tiles and turned into the next code by its head, `loops` times."""

  def __init__(self, t: Tiling, mesh, scale: int, tile: int, overlap: int, batch_size: int):
    self.t, self.scale, self.tile, self.overlap = t, scale, tile, overlap
    self.batch_size, self.num_devices = batch_size, int(mesh.devices.size)
    rep, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
    self._restore = jax.jit(t.restore, in_shardings=(rep, data, rep), out_shardings=data)
    if t.features is not None:
      self._pool = jax.jit(self._pool_fn, in_shardings=(rep, data, data, data), out_shardings=rep)
      self._head = jax.jit(t.head)

  def _pool_fn(self, variables, sr, lr, weights):
    """Sum over tiles of weights * the Estimator's features before its global pool."""
    f = self.t.features(variables, sr, lr)
    return jnp.einsum("bhw,bhwc->c", weights, f.astype(jnp.float32))

  def _batches(self, boxes):
    for i in range(0, len(boxes), self.batch_size):
      yield i, boxes[i : i + self.batch_size]

  def __call__(self, variables: dict, lr: np.ndarray, precision: str) -> Prediction:
    h, w, _ = lr.shape
    s, t = self.scale, self.t
    th, tw, boxes = tiling_lib.layout(h, w, self.tile, self.overlap)
    size = parallel.round_up(min(self.batch_size, len(boxes)), self.num_devices)
    sr_win = tiling_lib.blend_windows(h, w, th, tw, boxes, s, self.overlap, t.restorer_radius)
    if t.features is not None:
      lr_win = tiling_lib.blend_windows(h, w, th, tw, boxes, 1, self.overlap, t.estimator_radius)
    lr_tile = lambda y, x: lr[y : y + th, x : x + tw]
    sr_tile = lambda sr, y, x: sr[y * s : (y + th) * s, x * s : (x + tw) * s]
    code, kernel = np.asarray(t.initial_code(variables)), None
    for _ in range(t.loops):
      sr = np.zeros((h * s, w * s, 3), np.float32)
      for i, group in self._batches(boxes):
        tiles = _stack_padded([lr_tile(y, x) for y, x in group], size)
        with precision_lib.precision_scope(precision):
          out = np.asarray(self._restore(variables, tiles, code))
        for j, (y, x) in enumerate(group):
          sr_tile(sr, y, x)[...] += out[j] * sr_win(i + j)[..., None]
      if t.features is None:  # no kernel estimate: the Restorer's one pass
        continue
      pooled = 0.0
      for i, group in self._batches(boxes):
        sr_tiles = _stack_padded([sr_tile(sr, y, x) for y, x in group], size)
        lr_tiles = _stack_padded([lr_tile(y, x) for y, x in group], size)
        weights = _stack_padded([lr_win(i + j) / (h * w) for j in range(len(group))], size)
        with precision_lib.precision_scope(precision):
          part = self._pool(variables, sr_tiles, lr_tiles, weights)
        pooled = pooled + np.asarray(part, np.float64)
      with precision_lib.precision_scope(precision):
        code_1d, kernel = jax.device_get(self._head(variables, pooled.astype(np.float32)))
      code = np.asarray(code_1d, np.float32)[None]
      kernel = None if kernel is None else np.asarray(kernel, np.float32)
    return Prediction(sr, code[0], kernel)


class Predictor:
  """Runs a model on images: whole-image (batched, jitted per shape) or tiled.

  Args:
    model_config: the model config (as stored with checkpoints).
    variables: {'params', 'pca'} (e.g. from `checkpoint.load_model`).
    self_ensemble: average the 8 flips/transposes (official test_x8; `ensemble`).
    tile: LR tile size for tiled inference (0: whole images); smaller images run whole.
    tile_overlap: overlap of neighbouring tiles in LR pixels (default: exact).
    batch_size: images (whole) or tiles (tiled) per call, rounded up to a multiple of the
      device count; calls are sharded over every local device.
    pad_to_multiple: whole mode only: pad LR images (edge replication, bottom/right) to a
      multiple of this many pixels so that sizes share a compiled program. APPROXIMATE.
    precision: matmul/conv precision (`precision.PRECISIONS`), default 'highest'.
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
    self.family = models.family(self.spec)
    self.self_ensemble = bool(self_ensemble)
    _non_negative(tile=tile, batch_size=batch_size, pad_to_multiple=pad_to_multiple)
    if batch_size < 1:
      raise InferenceError(f"batch_size must be at least 1, got {batch_size}")
    self.tiling, tile_overlap = _tiling(self.spec, tile, tile_overlap)
    self.rf_restorer, self.rf_estimator = self.family.receptive_fields(self.spec)
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
    if self.tiling is not None:
      self._tiled = TiledRunner(
        self.tiling, self.mesh, self.scale, self.tile, self.tile_overlap, self.batch_size
      )
    self._ensembled = ensemble.self_ensemble(self._predict_plain, self.has_kernel)

  def load_weights(self, variables: dict) -> None:
    """Swaps in other weights of the same model: the compiled programs are kept.
    Raises InferenceError when their tree or shapes differ from the model's."""
    shapes = lambda tree: jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), tree)
    if jax.tree_util.tree_structure(variables) != jax.tree_util.tree_structure(
      self.variables
    ) or shapes(variables) != shapes(self.variables):
      raise InferenceError(
        "the weights do not fit this predictor's model (another architecture or family): "
        "make a new Predictor for them"
      )
    self.variables = jax.device_put(variables, parallel.replicated(self.mesh))

  @property
  def scale(self) -> int:
    return self.spec.scale

  @property
  def has_kernel(self) -> bool:
    return self.family.has_kernel(self.spec)

  @property
  def tiled_is_exact(self) -> bool:
    """Whether tiled inference equals whole-image inference (to float rounding)."""
    t = self.tiling
    return t is not None and t.exact and self.tile_overlap >= 2 * self.rf_restorer

  @property
  def tiled_approximation(self) -> str:
    """Why tiled results are approximate ("" when they are exact)."""
    return "" if self.tiled_is_exact else _approximation(self.spec, self.tiling, self.tile_overlap)

  def _whole_fn(self, variables, lr):
    out = self.model.apply(variables, lr)
    return out.sr[-1], out.code[-1], None if out.kernel is None else out.kernel[-1]

  def _run_whole(self, lrs: np.ndarray) -> list[Prediction]:
    n, h, w, _ = lrs.shape
    x, m = lrs, self.pad_to_multiple
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

  def uses_tiles(self, h: int, w: int) -> bool:
    return bool(self.tile) and max(h, w) > self.tile

  def _predict_plain(self, lrs: np.ndarray) -> list[Prediction]:
    """Same-sized images, split into calls of `batch_size`, no self-ensemble."""
    out = []
    for i in range(0, len(lrs), self.batch_size):
      chunk = lrs[i : i + self.batch_size]
      if self.uses_tiles(*chunk.shape[1:3]):
        out += [self._tiled(self.variables, lr, self.precision) for lr in chunk]
      else:
        out += self._run_whole(chunk)
    return out

  def predict_batch(self, lrs: np.ndarray) -> list[Prediction]:
    """Super-resolves same-sized LR images [B, H, W, 3] (float in [0, 1]); any B."""
    lrs = np.asarray(lrs, np.float32)
    if lrs.ndim != 4 or lrs.shape[-1] != 3:
      raise InferenceError(f"expected LR images [B, H, W, 3], got shape {lrs.shape}")
    if min(lrs.shape[1:3]) < 1:
      raise InferenceError(f"empty image {lrs.shape[1:3]}")
    return (self._ensembled if self.self_ensemble else self._predict_plain)(lrs)

  def predict(self, lr: np.ndarray) -> Prediction:
    """Super-resolves one LR image [H, W, 3] (float in [0, 1])."""
    lr = np.asarray(lr, np.float32)
    if lr.ndim != 3:
      raise InferenceError(f"expected an LR image [H, W, 3], got shape {lr.shape}")
    return self.predict_batch(lr[None])[0]
