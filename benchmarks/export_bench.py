"""Export a real-size DANv2 x4 (random weights) to every format and time each runtime.

  python benchmarks/export_bench.py [--size 180x320] [--repeats 1] [--out /tmp/dan_export]

Builds a checkpoint of configs/x4.py:v2 (nf 64, nb 10, ng 5, 4 iterations, 21x21 kernels)
with PyTorch-default random weights and a random orthonormal PCA, runs
`dan_jax.export.export` to all four formats (each checked there on two photographs), then
times one LR image of --size (a crop of skimage's astronaut) with `model.apply` (jitted)
and with each artifact's own runtime: the deserialized StableHLO (XLA), TensorFlow
(XlaCallModule), the LiteRT interpreter (XNNPACK, all cores) and onnxruntime (CPU). Prints
max |difference| from model.apply at that size, file sizes and seconds (median of
--repeats after one warm-up run that includes compilation). Never run as a test.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from etils import epath
import jax

from dan_jax import checkpoint
from dan_jax import config as config_lib
from dan_jax import errors
from dan_jax import export
from dan_jax import models


def _time(fn, x, repeats):
  start = time.perf_counter()
  out = fn(x)
  jax.block_until_ready(out)
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - start)
  return out, first, statistics.median(times)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="180x320", help="LR HxW timed (and TFLite's fixed size)")
  p.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up")
  p.add_argument("--out", default=None, help="export directory (default: a temporary one)")
  args = p.parse_args()
  size = export.parse_size(args.size)
  config = config_lib.load(
    str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "x4.py") + ":v2"
  ).model
  model = models.create_model(config)
  k2, n = config.kernel_size**2, config.code_len
  pca = np.linalg.qr(np.random.default_rng(0).normal(size=(k2, n)))[0]
  variables = models.init_variables(model, 0, pca)
  print(
    f"DANv2 x4: {models.count_params(variables['params']):,} parameters, "
    f"{config.loops} iterations, LR {size[0]}x{size[1]}, {os.cpu_count()} CPU(s), "
    f"jax {jax.__version__}"
  )

  with tempfile.TemporaryDirectory() as tmp:
    ckpt = checkpoint.save_model(os.path.join(tmp, "ckpt"), variables, config)
    out = args.out or os.path.join(tmp, "export")
    start = time.perf_counter()
    manifest = export.export(ckpt, out, export.FORMATS, size=size, overwrite=True)
    print(f"export + checks of all formats: {time.perf_counter() - start:.0f} s")

    x = export.check_images([size], "float32")[0]
    reference = jax.jit(export.serving_fn(model, variables))
    want, first, jax_s = _time(reference, x, args.repeats)
    want = jax.device_get(want)
    rows = [("model.apply (jax.jit)", "-", "-", first, jax_s)]
    for fmt in export.FORMATS:
      a = manifest["artifacts"][fmt]
      run = export.load_runner(fmt, epath.Path(out) / a["file"])
      got, first, secs = _time(run, x, args.repeats)
      diff = max(float(np.max(np.abs(np.asarray(got[k]) - want[k]))) for k in want)
      rows.append((fmt, f"{a['bytes'] / 1e6:.1f}", f"{diff:.1e}", first, secs))

  print(f"\n| runtime | file (MB) | max diff at {args.size} | first run (s) | time (s) | vs JAX |")
  print("|---|---|---|---|---|---|")
  for name, mb, diff, first, secs in rows:
    print(f"| {name} | {mb} | {diff} | {first:.2f} | {secs:.2f} | {secs / jax_s:.2f}x |")
  print("\nmax diff on the two check photographs (export):")
  for fmt in export.FORMATS:
    a = manifest["artifacts"][fmt]
    print(
      f"  {fmt}: {a['checked_input_shapes']}: "
      + ", ".join(f"{k} {v:.1e}" for k, v in a["max_abs_diff"].items())
    )


if __name__ == "__main__":
  try:
    main()
  except errors.Error as e:  # a bad config, checkpoint or argument: one line, not a traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
