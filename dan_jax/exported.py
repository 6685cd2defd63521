"""An export directory's StableHLO artifact run as a predictor, without the model code.

`ExportedPredictor(directory)` reads what `python -m dan_jax.export` wrote (its manifest
and `dan.stablehlo`) and implements `prediction.SRPredictor` on whole images, so
`python -m dan_jax.infer --exported DIR` runs it as it runs a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json

from etils import epath
import jax
import numpy as np

from dan_jax import parallel
from dan_jax.errors import ExportError
from dan_jax.errors import InferenceError
from dan_jax.prediction import Prediction

MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class _Spec:
  version: str
  scale: int


class ExportedPredictor:
  """Runs the StableHLO artifact of an export directory on whole images (any batch)."""

  def __init__(self, directory: str, batch_size: int = 8):
    d = epath.Path(directory)
    try:
      self.manifest = json.loads((d / MANIFEST).read_text())
      blob = (d / self.manifest["artifacts"]["stablehlo"]["file"]).read_bytes()
      self.exported = jax.export.deserialize(bytearray(blob))
    except Exception as e:  # a missing or foreign manifest, a truncated artifact
      raise ExportError(
        f"{directory} holds no readable StableHLO export (write one "
        "with `python -m dan_jax.export --format stablehlo`): "
        f"{type(e).__name__}: {e}"
      ) from e
    here = jax.default_backend()
    if not ({here} | ({"cuda", "rocm"} if here == "gpu" else set())) & set(self.exported.platforms):
      raise ExportError(
        f"{directory}: the StableHLO artifact was exported for "
        f"{list(self.exported.platforms)}, not {here} (export again "
        f"with --platforms {here})"
      )
    config = self.manifest["model_config"]
    self.spec = _Spec(config["version"], int(config["scale"]))
    self.step = self.manifest.get("step", 0)
    self.has_kernel = "kernel" in self.manifest["outputs"]
    self.tiled_is_exact = True  # never tiled
    # What the command lines report as the devices used: jit runs on the default device.
    self.mesh = parallel.create_mesh(jax.local_devices()[:1])
    self.num_devices = 1
    self.batch_size = int(batch_size)  # the artifact's batch is symbolic: any size runs
    self.input_dtype = self.manifest["input"]["dtype"]
    # (H, W) when the artifact takes one LR size only (DCLS), else None.
    h, w = self.manifest["artifacts"]["stablehlo"]["input_shape"][1:3]
    self.fixed_size = (h, w) if isinstance(h, int) else None
    self._call = jax.jit(self.exported.call)

  @property
  def scale(self) -> int:
    return self.spec.scale

  def predict_batch(self, lrs: np.ndarray) -> list[Prediction]:
    """Same-sized LR images [B, H, W, 3] float in [0, 1] -> one Prediction each."""
    lrs = np.asarray(lrs, np.float32)
    if lrs.ndim != 4 or lrs.shape[-1] != 3:
      raise InferenceError(f"expected LR images [B, H, W, 3], got shape {lrs.shape}")
    if self.fixed_size is not None and tuple(lrs.shape[1:3]) != self.fixed_size:
      h, w = self.fixed_size
      raise InferenceError(
        f"this {self.spec.version} artifact takes {h}x{w} LR images only, got "
        f"{lrs.shape[1]}x{lrs.shape[2]} (export again with --size "
        f"{lrs.shape[1]}x{lrs.shape[2]}, or use --checkpoint)"
      )
    if self.input_dtype == "uint8":
      lrs = np.round(np.clip(lrs, 0, 1) * 255.0).astype(np.uint8)
    preds = []
    for start in range(0, len(lrs), self.batch_size):
      out = jax.device_get(self._call(lrs[start : start + self.batch_size]))
      preds += [
        Prediction(
          np.asarray(out["sr"][i]),
          np.asarray(out["code"][i]),
          np.asarray(out["kernel"][i]) if "kernel" in out else None,
        )
        for i in range(len(out["sr"]))
      ]
    return preds

  def predict(self, lr: np.ndarray) -> Prediction:
    """One LR image [H, W, 3] float in [0, 1] -> its Prediction."""
    lr = np.asarray(lr, np.float32)
    if lr.ndim != 3:
      raise InferenceError(f"expected an LR image [H, W, 3], got shape {lr.shape}")
    return self.predict_batch(lr[None])[0]
