"""What a predictor is: one image's `Prediction` and the `SRPredictor` interface.

`predict.Predictor` (the Flax model, whole images or tiles) and `exported.ExportedPredictor`
(an exported StableHLO artifact, no model code) both implement `SRPredictor`, so `infer`,
`evaluate` and wrappers around a predictor take either.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np


@dataclasses.dataclass
class Prediction:
  """One image's result: SR [sH, sW, 3] float32, code [code_len], kernel [k, k] or None."""

  sr: np.ndarray
  code: np.ndarray
  kernel: Optional[np.ndarray]


@runtime_checkable
class SRPredictor(Protocol):
  """Super-resolves LR images; what the command lines and wrappers use of a predictor."""

  spec: Any  # the model: at least .version and .scale
  mesh: Any  # the jax.sharding.Mesh the predictions run on (reported by the CLIs)
  num_devices: int  # devices of `mesh`
  batch_size: int  # images per call that run together in `predict_batch`

  @property
  def scale(self) -> int:
    """The upscaling factor."""

  @property
  def has_kernel(self) -> bool:
    """Whether predictions carry a kernel estimate (else a code only)."""

  @property
  def tiled_is_exact(self) -> bool:
    """Whether the results equal whole-image inference (to float rounding)."""

  def predict(self, lr: np.ndarray) -> Prediction:
    """One LR image [H, W, 3] float in [0, 1] -> its Prediction."""

  def predict_batch(self, lrs: np.ndarray) -> list[Prediction]:
    """Same-sized LR images [B, H, W, 3] float in [0, 1] -> one Prediction each."""
