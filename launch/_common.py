"""Shared pieces of the launch scripts: quoting, printing and running commands."""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Sequence


def quote(cmd: Sequence[str]) -> str:
  """One shell line for an argv list."""
  return " ".join(shlex.quote(c) for c in cmd)


def train_command(config: str, workdir: str, overrides: Sequence[str],
                  python: str = "python3", distributed: bool = False) -> list[str]:
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
      print(f"error: command failed with exit status {status}: {quote(cmd)}",
            file=sys.stderr)
      return status
  return 0
