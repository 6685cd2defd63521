"""Trains on one host with several GPUs: one process drives every visible GPU.

  python launch/gpu.py --gpus=0,1,2,3 --config=configs/x4.py:v2 --workdir=/runs/x4 [--dry_run]

JAX data-parallelises the train step over all GPUs of the process (the global batch must
divide the GPU count). Extra arguments are config overrides (`batch_size=32`).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common


def commands(args: argparse.Namespace, overrides: list[str]) -> list[list[str]]:
  env = []
  if args.gpus:
    env = ["env", f"CUDA_VISIBLE_DEVICES={args.gpus}"]
  # TensorFlow (the input pipeline) must not grab GPU memory: main.py hides GPUs from it.
  env = (env or ["env"]) + ["XLA_PYTHON_CLIENT_MEM_FRACTION=0.9"]
  return [env + _common.train_command(args.config, args.workdir, overrides, python=args.python)]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gpus", default="", help="CUDA_VISIBLE_DEVICES (default: all)")
  parser.add_argument("--config", default="configs/x4.py:v2", help="config file[:arg]")
  parser.add_argument("--workdir", required=True, help="workdir")
  parser.add_argument("--python", default=sys.executable or "python3", help="interpreter")
  parser.add_argument("--dry_run", action="store_true", help="print the command only")
  args, overrides = parser.parse_known_args(argv)
  return _common.run_all(commands(args, overrides), args.dry_run)


if __name__ == "__main__":
  sys.exit(_common.run_main(main))
