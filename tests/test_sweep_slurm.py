"""`launch/sweep.py --mode=slurm` on a real single-node SLURM cluster (tests/slurm_cluster.py).

A tiny sweep (the test config, 2 train spaces x 2 seeds, a few steps) is submitted as one
job array plus a collect job; one array task is SIGKILLed mid-run. The collect job writes
the tables with that run missing; submitting the sweep again resubmits that run alone,
and its collect job completes the tables. Skipped (with the apt line) where the SLURM and
munge binaries are not installed.
"""

import csv
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import slurm_cluster

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  reason = slurm_cluster.missing_reason()
  if reason:
    pytest.skip(reason)
  c = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm"))
  try:
    c.start()
    yield c
  finally:
    c.stop()


def _submit(cluster, workdir: pathlib.Path) -> str:
  out = subprocess.run(
    [
      sys.executable,
      str(ROOT / "launch" / "sweep.py"),
      f"--config={ROOT}/configs/test.py",
      f"--workdir={workdir}",
      "--train_spaces=iso,motion",
      "--test_spaces=iso,motion",
      "--seeds=0,1",
      "--test_crop=32",
      "--mode=slurm",
      "--nodes=1",
      "--gpus_per_node=0",
      "--cpus_per_task=1",
      "--time=00:20:00",
      "num_train_steps=4",
      "eval_every_steps=0",
      "checkpoint_every_steps=2",
      "data.val_source=none",
    ],
    env=dict(cluster.env, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stdout + out.stderr
  return out.stdout


def _pid_of(run_dir: pathlib.Path) -> int | None:
  """The training process of one run (found by its --workdir argument)."""
  want = f"--workdir={run_dir}".encode()
  for d in os.listdir("/proc"):
    if not d.isdigit():
      continue
    try:
      argv = pathlib.Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
    except OSError:
      continue
    if want in argv and b"dan_jax.main" in argv:
      return int(d)
  return None


def _rows(workdir):
  with open(workdir / "results.csv") as f:
    return list(csv.DictReader(f))


def test_sweep_array_kill_and_resubmit(cluster, tmp_path):
  w = tmp_path / "sweep"
  out = _submit(cluster, w)
  array = re.search(r"submitted job array (\d+): 4 run\(s\)", out)
  collect = re.search(r"submitted collect job (\d+) \(after (\d+)\)", out)
  assert array and collect and collect.group(2) == array.group(1), out
  for name in ("sweep-000.sbatch", "collect-000.sbatch", "jobs.json"):
    assert (w / "slurm" / name).exists()

  # SIGKILL one run's training process once it is under way.
  victim = w / "train_motion_seed1"
  deadline = time.monotonic() + 300
  pid = None
  while pid is None:
    assert time.monotonic() < deadline, f"{victim} never started: {cluster.queue()}"
    pid = _pid_of(victim)
    time.sleep(0.2)
  time.sleep(3)
  os.kill(pid, signal.SIGKILL)
  cluster.wait_empty(timeout=600)

  rows = _rows(w)
  assert len(rows) == 4 * 2
  done = {(r["train_space"], r["seed"]) for r in rows if r["status"] == "done"}
  assert done == {("iso", "0"), ("iso", "1"), ("motion", "0")}, rows
  assert "(1/2)" in (w / "results.md").read_text()  # motion's cells: one seed of two
  assert (w / "heatmap_demo.png").exists()

  # Running the sweep again resubmits the killed run alone.
  out = _submit(cluster, w)
  assert re.search(r"submitted job array \d+: 1 run\(s\): train_motion_seed1$", out, re.M), out
  cluster.wait_empty(timeout=600)
  rows = _rows(w)
  assert all(r["status"] == "done" for r in rows), rows
  assert "(1/2)" not in (w / "results.md").read_text()
  assert list(w.glob("slurm/collect-*.out"))
