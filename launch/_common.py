"""Shared pieces of the launch scripts: quoting, printing and running commands."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Callable, Sequence

# The checkout these scripts belong to: its dan_jax is the one they launch.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, REPO)
from dan_jax.errors import Error  # noqa: E402  (a leaf: the standard library only)


def run_main(main: Callable[[], int]) -> int:
  """Runs a launcher's main; an errors.Error is one `error:` line and exit status 2."""
  try:
    return main()
  except Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def quote(cmd: Sequence[str]) -> str:
  """One shell line for an argv list."""
  return " ".join(shlex.quote(c) for c in cmd)


def sbatch_header(args, job_name: str, output: str, nodes: int, gpus: int) -> list[str]:
  """#SBATCH lines of one job: `args` gives cpus_per_task, time and partition (if any)."""
  lines = [
    "#!/bin/bash",
    f"#SBATCH --job-name={job_name}",
    f"#SBATCH --nodes={nodes}",
    "#SBATCH --ntasks-per-node=1",
    f"#SBATCH --cpus-per-task={args.cpus_per_task}",
    f"#SBATCH --time={args.time}",
    f"#SBATCH --output={output}",
  ]
  if gpus:
    lines.append(f"#SBATCH --gpus-per-node={gpus}")
  if args.partition:
    lines.append(f"#SBATCH --partition={args.partition}")
  return lines


def srun_body(repo: str, cmd: Sequence[str]) -> list[str]:
  """The script's body: strict shell, the checkout, `srun` of one command."""
  return ["", "set -euo pipefail", f"cd {quote([repo])}", "srun " + quote(cmd), ""]


def train_command(
  config: str,
  workdir: str,
  overrides: Sequence[str],
  python: str = "python3",
  distributed: bool = False,
) -> list[str]:
  """The argv that runs training on one host."""
  cmd = [python, "-m", "dan_jax.main", f"--config={config}", f"--workdir={workdir}"]
  if distributed:
    cmd.append("--distributed")
  cmd += [o if o.startswith("--") else f"--config.{o}" for o in overrides]
  return cmd


def run_all(commands: Sequence[Sequence[str]], dry_run: bool) -> int:
  """Prints each command; runs them in order unless dry_run. Returns the exit status."""
  for cmd in commands:
    print(quote(cmd), flush=True)
    if dry_run:
      continue
    status = subprocess.call(list(cmd))
    if status:
      print(f"error: command failed with exit status {status}: {quote(cmd)}", file=sys.stderr)
      return status
  return 0
