"""Trains on a SLURM cluster: one process per node, joined by jax.distributed.

  python launch/slurm.py --nodes=4 --gpus_per_node=8 --config=configs/x4.py:v2 \
      --workdir=/shared/runs/x4 [--partition=gpu] [--time=72:00:00] [--dry_run]

Writes WORKDIR/slurm/train.sbatch and submits it with sbatch. Each node runs one
`python -m dan_jax.main --distributed`; `jax.distributed.initialize()` reads the SLURM
environment (coordinator = first node), every process feeds its own shard of the global
batch, and process 0 alone logs and writes checkpoints. The workdir must be on a shared
filesystem. SLURM's SIGTERM before preemption lets training save and exit; `--requeue`
resubmits, and the run resumes from its latest checkpoint. Extra arguments are config
overrides.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dan_jax.errors import UsageError  # _common put this checkout on sys.path

import _common


def sbatch_script(args: argparse.Namespace, overrides: list[str]) -> str:
  """The batch script's text."""
  output = os.path.join(args.workdir, "slurm", "%j.out")
  lines = _common.sbatch_header(args, args.job_name, output, args.nodes, args.gpus_per_node)
  lines += ["#SBATCH --requeue", "#SBATCH --signal=TERM@120"]
  train = _common.train_command(
    args.config, args.workdir, overrides, python=args.python, distributed=True
  )
  lines += _common.srun_body(args.repo, train)
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--nodes", type=int, default=1, help="nodes (one process each)")
  parser.add_argument("--gpus_per_node", type=int, default=8, help="GPUs per node")
  parser.add_argument("--cpus_per_task", type=int, default=16, help="CPU cores per node")
  parser.add_argument("--time", default="72:00:00", help="wall-time limit")
  parser.add_argument("--partition", default="", help="SLURM partition")
  parser.add_argument("--job_name", default="dan_jax", help="job name")
  parser.add_argument("--config", default="configs/x4.py:v2", help="config file[:arg]")
  parser.add_argument("--workdir", required=True, help="workdir on a shared filesystem")
  parser.add_argument(
    "--repo",
    default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    help="checkout of dan_jax on the shared filesystem",
  )
  parser.add_argument("--python", default="python3", help="interpreter on the nodes")
  parser.add_argument("--dry_run", action="store_true", help="print, write and submit nothing")
  args, overrides = parser.parse_known_args(argv)
  if args.nodes < 1 or args.gpus_per_node < 1:
    raise UsageError("--nodes and --gpus_per_node must be positive")
  script = sbatch_script(args, overrides)
  path = os.path.join(args.workdir, "slurm", "train.sbatch")
  if args.dry_run:
    print(f"# {path}\n{script}")
    print(_common.quote(["sbatch", path]))
    return 0
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(script)
  return _common.run_all([["sbatch", path]], dry_run=False)


if __name__ == "__main__":
  sys.exit(_common.run_main(main))
