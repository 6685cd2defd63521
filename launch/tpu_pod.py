"""Trains on a Cloud TPU VM pod slice: copies the code to every worker, installs, runs.

  python launch/tpu_pod.py --tpu=my-v4-32 --zone=us-central2-b --project=my-proj \
      --config=configs/x4.py:v2 --workdir=gs://my-bucket/dan/x4_v2 [--dry_run]

Every worker runs `python -m dan_jax.main --distributed`: `jax.distributed.initialize()`
finds the pod's other hosts by itself on Cloud TPU, each host feeds its own shard, and
process 0 alone logs and writes (the workdir on a bucket is shared by all hosts).
Extra arguments are config overrides: `batch_size=256` or `--config.batch_size=256`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commands(args: argparse.Namespace, overrides: list[str], archive: str) -> list[list[str]]:
  """The gcloud commands, in order: package, copy, install, train."""
  where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, *where, "--worker=all"]
  remote = "~/dan_jax"
  install = (
    f"mkdir -p {remote} && tar -xzf ~/dan_jax.tar.gz -C {remote} && cd {remote} && "
    f"pip install -q -U 'jax[tpu]' && pip install -q -e ."
  )
  train = _common.quote(
    _common.train_command(args.config, args.workdir, overrides, distributed=True)
  )
  return [
    ["git", "-C", REPO, "archive", "--format=tar.gz", "-o", archive, "HEAD"],
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "scp",
      archive,
      f"{args.tpu}:~/dan_jax.tar.gz",
      *where,
      "--worker=all",
    ],
    [*ssh, f"--command={install}"],
    [*ssh, f"--command=cd {remote} && {train}"],
  ]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tpu", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True, help="its zone")
  parser.add_argument("--project", default="", help="GCP project (default: gcloud's)")
  parser.add_argument("--config", default="configs/x4.py:v2", help="config file[:arg]")
  parser.add_argument("--workdir", required=True, help="shared workdir, e.g. gs://bucket/run")
  parser.add_argument("--dry_run", action="store_true", help="print the commands only")
  args, overrides = parser.parse_known_args(argv)
  if not args.workdir.startswith("gs://"):
    print("warning: a pod's hosts need a shared workdir (gs://...)", file=sys.stderr)
  archive = os.path.join(tempfile.gettempdir(), "dan_jax.tar.gz")
  return _common.run_all(commands(args, overrides, archive), args.dry_run)


if __name__ == "__main__":
  sys.exit(_common.run_main(main))
