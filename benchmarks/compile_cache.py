"""Launch to the end of the first training step, cold and warm compilation cache.

  nice -n 10 python benchmarks/compile_cache.py [--configs configs/x4.py:v2,configs/x4.py:dcls]

Runs `python -m dan_jax.main` for one step twice per config with one fresh
`config.compilation_cache_dir`: the first run compiles (cold), the second finds its programs
in the cache (warm), as a run resumed after a preemption does. Demo photos, no validation,
batch --batch_size (the step itself is the same in both runs); prints wall seconds.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time


def run_once(config: str, workdir: str, cache: str, batch_size: int) -> float:
  argv = [
    sys.executable,
    "-m",
    "dan_jax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    "--config.num_train_steps=1",
    f"--config.batch_size={batch_size}",
    "--config.data.source=demo",
    "--config.data.val_source=none",
    "--config.degradation.pca_samples=2000",
    f"--config.compilation_cache_dir={cache}",
  ]
  t = time.perf_counter()
  subprocess.run(argv, check=True, capture_output=True, text=True)
  return time.perf_counter() - t


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--configs", default="configs/x4.py:v2,configs/x4.py:dcls")
  p.add_argument("--batch_size", type=int, default=8)
  args = p.parse_args()
  for config in args.configs.split(","):
    with tempfile.TemporaryDirectory() as tmp:
      cache = os.path.join(tmp, "cache")
      cold = run_once(config, os.path.join(tmp, "a"), cache, args.batch_size)
      warm = run_once(config, os.path.join(tmp, "b"), cache, args.batch_size)
      print(
        f"{config}: launch to first step done: cold {cold:.1f} s, warm {warm:.1f} s", flush=True
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
