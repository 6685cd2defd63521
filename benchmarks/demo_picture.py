"""The README's picture: what a trained demo makes of its validation images.

  python -m dan_jax.main --config=configs/demo.py --workdir=/tmp/dan_demo
  python benchmarks/demo_picture.py --workdir=/tmp/dan_demo --out=docs/demo.png

One row per validation image: LR, bicubic, SR and HR (Y-PSNRs by the official protocol),
then the estimated and the true blur kernel. The validation set is rebuilt from the config
exactly as training built it; the weights are the checkpoint's (EMA when it has them).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dan_jax import runtime

runtime.setup_entry_point()  # before JAX starts: the XLA:CPU flag, TensorFlow off accelerators

import numpy as np
from PIL import Image

from dan_jax import checkpoint
from dan_jax import config as config_lib
from dan_jax import degradation
from dan_jax import errors
from dan_jax import input_pipeline
from dan_jax import metrics
from dan_jax import pictures
from dan_jax import predict


def demo_picture(config, workdir: str, height: int = 192) -> tuple[Image.Image, list[str]]:
  """(the picture, one summary line per image) of the checkpoint in `workdir`."""
  model_config, variables, step = checkpoint.load_model(workdir, use_ema=True)
  scale = int(model_config.scale)
  pca = np.asarray(variables["pca"]["matrix"])
  val = input_pipeline.create_validation_set(config, pca)
  if val is None:
    raise errors.ConfigError("config.data.val_source is 'none': no validation images to show")
  predictor = predict.Predictor(model_config, variables)
  y_psnr = lambda img, ref: metrics.score_prediction(img, ref, scale)["psnr_y"]
  rows, lines = [], []
  for i, name in enumerate(val["names"]):
    lr, hr = val["lr"][i], val["hr"][i]
    pred = predictor.predict(lr)
    bicubic = np.clip(degradation.imresize(lr, scale).numpy(), 0.0, 1.0)
    # A model without a kernel estimate (DANv1) shows what its code expresses.
    k = int(model_config.kernel_size)
    estimated = pred.kernel if pred.kernel is not None else (pca @ pred.code).reshape(k, k)
    true = val["kernel"][i]
    kernel_psnr = metrics.kernel_error(estimated, true)["psnr"]
    psnr_bicubic, psnr_sr = y_psnr(bicubic, hr), y_psnr(pred.sr, hr)
    rows.append(
      pictures.panel_row(
        [
          pictures.to_pil(lr),
          pictures.to_pil(bicubic),
          pictures.to_pil(pred.sr),
          pictures.to_pil(hr),
          pictures.kernel_pil(estimated, height),
          pictures.kernel_pil(true, height),
        ],
        [
          f"{name}: LR (x{scale})",
          f"bicubic\nY-PSNR {psnr_bicubic:.2f} dB",
          f"{model_config.version} (step {step})\nY-PSNR {psnr_sr:.2f} dB",
          "HR",
          f"estimated kernel\nPSNR {kernel_psnr:.1f} dB",
          f"true kernel\nsigma {config.data.val_sigma}",
        ],
        height=height,
      )
    )
    lines.append(
      f"{name}: Y-PSNR bicubic {psnr_bicubic:.2f} dB, {model_config.version} "
      f"{psnr_sr:.2f} dB; kernel PSNR {kernel_psnr:.1f} dB"
    )
  return pictures.stack(rows), lines


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="the demo's workdir (its checkpoint)")
  parser.add_argument(
    "--config",
    default="configs/demo.py",
    help="the config it was trained with (rebuilds the validation set)",
  )
  parser.add_argument("--out", default="docs/demo.png", help="the PNG to write")
  parser.add_argument("--height", type=int, default=192, help="panel height in pixels")
  parser.add_argument(
    "--colors",
    type=int,
    default=256,
    help="palette size of the PNG (256: ~130 kB, a mean error of ~1.5 grey "
    "levels; 0: full RGB, ~400 kB)",
  )
  args = parser.parse_args(argv)
  picture, lines = demo_picture(config_lib.load(args.config), args.workdir, args.height)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  if args.colors:
    picture = picture.quantize(args.colors, method=Image.Quantize.MEDIANCUT)
  picture.save(out, optimize=True)
  print("\n".join(lines))
  print(f"wrote {out} ({picture.width}x{picture.height}, {out.stat().st_size / 1e3:.0f} kB)")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except errors.Error as e:  # a bad config, checkpoint or argument: one line, not a traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
