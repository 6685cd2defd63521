"""Validation during training: scores, the bicubic baseline, TensorBoard images, PNGs.

`evaluate` runs the jitted eval step over the validation set (sharded over the mesh) and
scores it with the official protocol (Y channel, uint8, crop_border = scale).
"""

from __future__ import annotations

from typing import Any, Callable

from absl import logging
from jax.sharding import NamedSharding
import numpy as np

from dan_jax import degradation
from dan_jax import image_io
from dan_jax import metrics
from dan_jax import parallel
from dan_jax import storage

VAL_SUBDIR = "val"  # WORKDIR/val/: config.write_sr_images' PNGs
BEST_METRIC = "val_psnr_y"  # the score that picks the best checkpoint


def bicubic_baseline(val: dict, scale: int) -> dict:
  """Y-PSNR/SSIM of MATLAB-bicubic upsampling of the validation LR images (uint8)."""
  psnr, ssim = [], []
  for lr, hr in zip(val["lr"], val["hr"]):
    up = metrics.to_uint8(degradation.imresize(lr, scale).numpy())
    gt = metrics.to_uint8(hr)
    psnr.append(metrics.psnr_y(up, gt, crop_border=scale))
    ssim.append(metrics.ssim_y(up, gt, crop_border=scale))
  return {"bicubic_psnr_y": metrics.average(psnr), "bicubic_ssim_y": metrics.average(ssim)}


def evaluate(
  eval_fn: Callable, variables: dict, val: dict, scale: int, sharding: NamedSharding
) -> tuple[dict, list]:
  """Validation Y-PSNR/SSIM (uint8, crop_border=scale); returns (metrics, outputs).

  Same-sized images go through `eval_fn` together, as many per call as `sharding`'s mesh
  has devices (one image per device; the last call padded by repetition, the padding
  dropped): every host holds all validation images, so this is exact.
  outputs[i] = (sr uint8 [H,W,3], code [L], kernel [k,k] or None) of image i.
  """
  n_dev = sharding.mesh.devices.size
  results: list = [None] * len(val["lr"])
  by_shape: dict = {}
  for i, lr in enumerate(val["lr"]):
    by_shape.setdefault(np.shape(lr), []).append(i)
  for idx in by_shape.values():
    for start in range(0, len(idx), n_dev):
      part = idx[start : start + n_dev]
      lrs = parallel.pad_batch(np.stack([val["lr"][i] for i in part]), n_dev)
      sr, code, kernel = eval_fn(variables, parallel.global_from_full(lrs, sharding))
      sr, code = parallel.to_host(sr), parallel.to_host(code)
      kernel = None if kernel is None else parallel.to_host(kernel)
      for j, i in enumerate(part):
        results[i] = (metrics.to_uint8(sr[j]), code[j], None if kernel is None else kernel[j])
  scores = [metrics.score_prediction(sr, hr, scale) for (sr, _, _), hr in zip(results, val["hr"])]
  return {
    "val_psnr_y": metrics.average([s["psnr_y"] for s in scores]),
    "val_ssim_y": metrics.average([s["ssim_y"] for s in scores]),
  }, results


def _display_kernel(kernel: np.ndarray, size: int = 128) -> np.ndarray:
  return image_io.kernel_to_display(kernel, min_size=size)[..., None].repeat(3, -1)


def summary_images(val: dict, outputs: list, pca: np.ndarray, scale: int, count: int = 2) -> dict:
  """TensorBoard images: [LR (nearest) | SR | HR] and [estimated | true] kernels.

  DANv1 estimates only a code: both kernels are then shown as their PCA reconstruction
  (code @ pca^T), which is what the code can express.
  """
  images = {}
  for i, (sr, code, kernel) in enumerate(outputs[:count]):
    lr = metrics.to_uint8(val["lr"][i]).repeat(scale, 0).repeat(scale, 1)
    h, w = sr.shape[:2]
    row = np.concatenate([lr[:h, :w], sr, metrics.to_uint8(val["hr"][i])], axis=1)
    images[f"val/lr_sr_hr/{val['names'][i]}"] = row[None]
    true = val["kernel"][i]
    if kernel is None:
      k = true.shape[-1]
      kernel = (pca @ code).reshape(k, k)
      true = (pca @ val["code"][i]).reshape(k, k)
    gap = np.full((_display_kernel(true).shape[0], 4, 3), 255, np.uint8)
    images[f"val/kernel_est_true/{val['names'][i]}"] = np.concatenate(
      [_display_kernel(kernel), gap, _display_kernel(true)], axis=1
    )[None]
  return images


def write_sr_images(directory: str, val: dict, outputs: list, scale: int) -> None:
  """NAME_sr.png, NAME_bicubic.png, NAME_lr.png and NAME_hr.png for every image."""
  if not storage.is_url(directory):  # object stores have no folders to create
    storage.path(directory).mkdir(parents=True, exist_ok=True)
  for name, lr, hr, (sr, _, _) in zip(val["names"], val["lr"], val["hr"], outputs):
    bicubic = metrics.to_uint8(degradation.imresize(lr, scale).numpy())
    for suffix, img in (
      ("sr", sr),
      ("bicubic", bicubic),
      ("lr", metrics.to_uint8(lr)),
      ("hr", metrics.to_uint8(hr)),
    ):
      image_io.write_png(storage.join(directory, f"{name}_{suffix}.png"), img, overwrite=True)


def run(
  eval_fn: Callable,
  variables: dict,
  val: dict,
  scale: int,
  sharding: NamedSharding,
  step: int,
  result: dict,
  writer: Any,
  log: bool,
) -> tuple[dict, list]:
  """Scores the validation set at `step`, adds the scores to `result` and writes them.

  Returns (scores, outputs) as `evaluate`; `result` must hold the bicubic baseline.
  """
  scores, outputs = evaluate(eval_fn, variables, val, scale, sharding)
  result.update(scores)
  writer.write_scalars(
    step, {"val/" + k.replace("val_", ""): v for k, v in result.items() if k.endswith("_y")}
  )
  if log:
    logging.info(
      "step %d: validation Y-PSNR %.2f dB, SSIM %.4f (bicubic %.2f dB, %.4f)",
      step,
      scores["val_psnr_y"],
      scores["val_ssim_y"],
      result["bicubic_psnr_y"],
      result["bicubic_ssim_y"],
    )
  return scores, outputs
