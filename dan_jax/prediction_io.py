"""What the inference command lines share: the predictor flags and a prediction's files.

`infer` and `evaluate` take the same predictor flags (`add_predictor_flags`, then
`build_predictor`) and write an image's SR result and kernel estimate (or code) the same
way (`output_paths`, `save_prediction`).
"""

from __future__ import annotations

import argparse
import io
import os
from typing import Any, Optional

import numpy as np

from dan_jax import image_io
from dan_jax import precision as precision_lib
from dan_jax import predict
from dan_jax import runtime
from dan_jax import storage
from dan_jax.prediction import Prediction

# ---------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------


def add_predictor_flags(parser: argparse.ArgumentParser) -> None:
  """The flags of a `predict.Predictor`: weights, self-ensemble, tiles, batching, precision."""
  parser.add_argument(
    "--use_ema",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="use the EMA weights when the checkpoint has them (default: yes)",
  )
  parser.add_argument(
    "--self_ensemble", action="store_true", help="average the 8 flips/transposes (official test_x8)"
  )
  parser.add_argument(
    "--tile", type=int, default=0, help="LR tile size for images larger than this (0: whole images)"
  )
  parser.add_argument(
    "--tile_overlap",
    type=int,
    default=None,
    help="overlap of neighbouring tiles in LR pixels (default: 2x the "
    "Restorer's receptive-field radius, which makes DANv2 tiles exact)",
  )
  parser.add_argument(
    "--batch_size",
    type=int,
    default=8,
    help="images (or tiles) per call, sharded over all devices (rounded up "
    "to a multiple of the device count)",
  )
  parser.add_argument(
    "--pad_to_multiple",
    type=int,
    default=0,
    help="pad LR to a multiple of N to share compilations across sizes "
    "(APPROXIMATE; default 0: exact sizes)",
  )
  precision_lib.add_precision_flag(parser)
  runtime.add_compilation_cache_flag(parser)


def build_predictor(
  args: argparse.Namespace, model_config: Any, variables: dict
) -> predict.Predictor:
  """The Predictor the flags of `add_predictor_flags` ask for (its compilations cached in
  --compilation_cache_dir)."""
  runtime.enable_compilation_cache(getattr(args, "compilation_cache_dir", ""))
  return predict.Predictor(
    model_config,
    variables,
    self_ensemble=args.self_ensemble,
    tile=args.tile,
    tile_overlap=args.tile_overlap,
    batch_size=args.batch_size,
    pad_to_multiple=args.pad_to_multiple,
    precision=args.precision,
  )


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
  """Alpha channel [H, W] -> [sH, sW] with MATLAB bicubic, clipped to [0, 1]."""
  runtime.require_tensorflow("Upscaling an alpha channel (MATLAB bicubic)")
  runtime.hide_accelerators_from_tensorflow()  # before TensorFlow's first op
  from dan_jax import degradation  # TensorFlow: only for images with alpha

  up = degradation.imresize(np.asarray(alpha, np.float32)[..., None], scale).numpy()[..., 0]
  return np.clip(up, 0.0, 1.0)


def output_paths(input_path: str, out_dir: str, scale: int, has_kernel: bool) -> dict:
  """{'sr', 'kernel_png', 'kernel_npy'} or {'sr', 'code_npy'} paths for one input."""
  name = storage.path(input_path).name
  stem = storage.join(out_dir, f"{os.path.splitext(name)[0]}_x{scale}")
  if has_kernel:
    return {
      "sr": stem + ".png",
      "kernel_png": stem + "_kernel.png",
      "kernel_npy": stem + "_kernel.npy",
    }
  return {"sr": stem + ".png", "code_npy": stem + "_code.npy"}


def _npy_bytes(a: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, a)
  return buf.getvalue()


def save_prediction(
  pred: Prediction,
  paths: dict,
  image: Optional[image_io.LoadedImage],
  scale: int,
  overwrite: bool = False,
) -> None:
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
