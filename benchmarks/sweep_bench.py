"""The sweep's two fixed costs: synthesizing a Set14-sized test set per kernel space, and
collecting (scoring) many finished runs.

  python benchmarks/sweep_bench.py [--scale 4] [--kernel_size 21] [--runs 50]

1. Set14-sized test set: 14 smooth random HR images of Set14's sizes (250x361 to
   768x512), one LR set per kernel space (`dan_jax.degradation.KERNEL_SPACES`) at x4 with
   21x21 kernels, as `launch/sweep.py` builds them (full images, 8-bit PNGs, a manifest);
   then the same call again, which only reads the cache.
2. Collect N finished runs: one tiny DANv2 checkpoint (configs/test.py) copied into N run
   folders (5 train spaces x N/5 seeds), scored on the demo test set and one test space
   (first collect: loads and scores every run through one compiled predictor), then
   collected again (every run already scored: reads the scores files).
Prints one line per measurement. Never run as a test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "launch"))
import sweep  # noqa: E402,I001  (launch/ on sys.path; it puts this checkout there too)
import sweep_eval  # noqa: E402
from dan_jax import runtime  # noqa: E402

SET14_SIZES = [  # (height, width) of Set14's HR images
  (480, 500),
  (576, 720),
  (512, 512),
  (288, 352),
  (361, 250),
  (276, 276),
  (362, 500),
  (288, 352),
  (512, 512),
  (512, 512),
  (512, 768),
  (512, 512),
  (529, 656),
  (391, 586),
]
SPACES = ("iso", "aniso", "generalized", "plateau", "motion")


def _set14_like(folder: str) -> None:
  import numpy as np
  from PIL import Image

  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate(SET14_SIZES):
    base = rng.random((h // 8 + 1, w // 8 + 1, 3))
    img = np.kron(base, np.ones((8, 8, 1)))[:h, :w]
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(f"{folder}/img{i:02d}.png")


def bench_test_sets(tmp: str, scale: int, kernel_size: int) -> None:
  from dan_jax import degradation

  hr = os.path.join(tmp, "set14")
  os.makedirs(hr)
  _set14_like(hr)
  quiet = lambda m: None
  for space in degradation.KERNEL_SPACES:
    noise = dataclasses.asdict(degradation.NoiseSpec())  # noise-free, as the demo configs
    opts = dict(scale=scale, kernel_size=kernel_size, noise=noise, log=quiet)
    t = time.perf_counter()
    sweep_eval.prepare_test_set("Set14", hr, space, tmp, **opts)
    built = time.perf_counter() - t
    t = time.perf_counter()
    sweep_eval.prepare_test_set("Set14", hr, space, tmp, **opts)
    cached = time.perf_counter() - t
    print(
      f"Set14-sized test set ({len(SET14_SIZES)} images), x{scale}, {kernel_size}x{kernel_size}, "
      f"{space}: synthesized in {built:.1f} s, reused from the cache in {cached:.2f} s",
      flush=True,
    )


def bench_collect(tmp: str, runs: int) -> None:
  import numpy as np

  from dan_jax import checkpoint
  from dan_jax import config as config_lib
  from dan_jax import models

  config = config_lib.load_with_overrides(os.path.join(sweep._common.REPO, "configs/test.py"), [])
  model = models.create_model(config.model)
  k2 = config.model.kernel_size**2
  pca = np.linalg.qr(np.random.default_rng(0).normal(size=(k2, config.model.code_len)))[0]
  variables = models.init_variables(model, 0, pca)
  seeds = max(1, runs // len(SPACES))
  work = os.path.join(tmp, "sweep")
  src = os.path.join(tmp, "one_run")
  checkpoint.save_model(src, variables, config.model, step=config.num_train_steps)
  for space in SPACES:
    for seed in range(seeds):
      shutil.copytree(src, os.path.join(work, f"train_{space}_seed{seed}"))
  argv = [
    f"--config={sweep._common.REPO}/configs/test.py",
    f"--workdir={work}",
    f"--train_spaces={','.join(SPACES)}",
    "--test_spaces=iso",
    f"--seeds={','.join(map(str, range(seeds)))}",
    f"--tensorboard_dir={tmp}/tb",
  ]
  for what in ("scores every run", "every run already scored"):
    args, overrides = sweep.build_parser().parse_known_args(argv)
    args.argv = argv
    s = sweep.Sweep(args, overrides, log=lambda m: None)
    s.tests()  # the test set is built once, outside the timing
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # collect prints its tables
      status = s.collect()
    took = time.perf_counter() - t
    compiled = [p._whole._cache_size() for p in s.scorer._predictors.values()]
    print(
      f"collect {len(s.runs)} finished runs ({what}; demo test set, 1 test space): "
      f"{took:.1f} s, {took / len(s.runs):.2f} s per run, exit status {status}, "
      f"compiled programs: {sum(compiled)}",
      flush=True,
    )


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--scale", type=int, default=4)
  p.add_argument("--kernel_size", type=int, default=21)
  p.add_argument("--runs", type=int, default=50)
  p.add_argument("--skip", default="", help="test_sets and/or collect")
  args = p.parse_args()
  runtime.setup_entry_point()
  with tempfile.TemporaryDirectory() as tmp:
    if "test_sets" not in args.skip:
      bench_test_sets(tmp, args.scale, args.kernel_size)
    if "collect" not in args.skip:
      bench_collect(tmp, args.runs)
  return 0


if __name__ == "__main__":
  sys.exit(main())
