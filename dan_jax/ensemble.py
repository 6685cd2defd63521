"""Self-ensemble (the official test_x8): the 8 flips/transposes of the LR image are
super-resolved, transformed back and averaged; kernels likewise, the code is the
untransformed image's. A wrapper around any predict function or `SRPredictor`."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dan_jax.errors import InferenceError
from dan_jax.prediction import Prediction

PredictBatch = Callable[[np.ndarray], list[Prediction]]


def transform(x: np.ndarray, i: int) -> np.ndarray:
  """The official test_x8 order on [B, H, W, ...]: flip W (bit 0), flip H (bit 1), transpose."""
  if i & 1:
    x = x[:, :, ::-1]
  if i & 2:
    x = x[:, ::-1]
  if i & 4:
    x = x.swapaxes(1, 2)
  return np.ascontiguousarray(x)


def untransform(x: np.ndarray, i: int) -> np.ndarray:
  if i & 4:
    x = x.swapaxes(1, 2)
  if i & 2:
    x = x[:, ::-1]
  if i & 1:
    x = x[:, :, ::-1]
  return np.ascontiguousarray(x)


def self_ensemble(predict_batch: PredictBatch, has_kernel: bool) -> PredictBatch:
  """`predict_batch` ([B, H, W, 3] -> Predictions) averaged over the 8 transforms."""

  def ensembled(lrs: np.ndarray) -> list[Prediction]:
    srs, kernels, first = [], [], None
    for i in range(8):
      preds = predict_batch(transform(lrs, i))
      if i == 0:
        first = preds
      srs.append(untransform(np.stack([p.sr for p in preds]), i))
      if has_kernel:
        kernels.append(untransform(np.stack([p.kernel for p in preds]), i))
    sr = np.mean(srs, axis=0, dtype=np.float64).astype(np.float32)
    kernel = np.mean(kernels, axis=0, dtype=np.float64).astype(np.float32) if has_kernel else None
    return [
      Prediction(sr[j], first[j].code, None if kernel is None else kernel[j])
      for j in range(len(lrs))
    ]

  return ensembled


class SelfEnsemble:
  """An `SRPredictor` whose predictions are `predictor`'s, self-ensembled."""

  def __init__(self, predictor: Any):
    self.predictor = predictor
    self._predict_batch = self_ensemble(predictor.predict_batch, predictor.has_kernel)

  def __getattr__(self, name: str) -> Any:  # spec, mesh, scale, has_kernel, ...
    return getattr(self.predictor, name)

  @property
  def scale(self) -> int:
    return self.predictor.scale

  @property
  def has_kernel(self) -> bool:
    return self.predictor.has_kernel

  @property
  def tiled_is_exact(self) -> bool:
    return self.predictor.tiled_is_exact

  def predict_batch(self, lrs: np.ndarray) -> list[Prediction]:
    lrs = np.asarray(lrs, np.float32)
    if lrs.ndim != 4:
      raise InferenceError(f"expected LR images [B, H, W, 3], got shape {lrs.shape}")
    return self._predict_batch(lrs)

  def predict(self, lr: np.ndarray) -> Prediction:
    return self.predict_batch(np.asarray(lr, np.float32)[None])[0]
