"""A real single-node SLURM cluster for tests: munged, slurmctld and slurmd in a temp folder.

Debian's packages (`apt-get install -y slurmctld slurmd slurm-client munge`), run as root
with every state, spool, log and socket file under one temporary folder, on free ports;
clients find it through `SLURM_CONF`. Daemons are started in the foreground and stopped
by their PIDs. Linux process tracking and no task plugin: no cgroups or systemd needed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import time
from typing import Optional

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")
APT_LINE = "apt-get install -y slurmctld slurmd slurm-client munge"


def missing_reason() -> Optional[str]:
  """Why a cluster cannot be started here (None: it can)."""
  missing = [
    b for b in BINARIES if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")
  ]
  if missing:
    return f"SLURM/munge binaries missing ({', '.join(missing)}); install with: {APT_LINE}"
  if os.geteuid() != 0:
    return "the single-node SLURM cluster runs its daemons as root"
  return None


def _which(name: str) -> str:
  return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Cluster:
  """A running one-node cluster; `env` points SLURM clients at it."""

  def __init__(self, root: pathlib.Path, cpus: int = 2):
    self.root = root
    self.procs: list[subprocess.Popen] = []
    host = socket.gethostname().split(".")[0]
    for d in ("state", "spool", "munge", "log"):
      (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))
    os.chmod(key, 0o600)
    self.munge_socket = root / "munge" / "munge.sock"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    self.conf = root / "slurm.conf"
    self.conf.write_text(
      "\n".join(
        [
          "ClusterName=dantest",
          f"SlurmctldHost={host}",
          "SlurmUser=root",
          "SlurmdUser=root",
          f"SlurmctldPort={_free_port()}",
          f"SlurmdPort={_free_port()}",
          "AuthType=auth/munge",
          "CredType=cred/munge",
          f"AuthInfo=socket={self.munge_socket}",
          f"StateSaveLocation={root / 'state'}",
          f"SlurmdSpoolDir={root / 'spool'}",
          f"SlurmctldPidFile={root / 'slurmctld.pid'}",
          f"SlurmdPidFile={root / 'slurmd.pid'}",
          f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
          f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
          "ProctrackType=proctrack/linuxproc",
          "TaskPlugin=task/none",
          "SelectType=select/cons_tres",
          "SelectTypeParameters=CR_Core",
          "MpiDefault=none",
          "ReturnToService=2",
          "SchedulerType=sched/backfill",
          "SchedulerParameters=sched_interval=1",
          "AccountingStorageType=accounting_storage/none",
          "JobAcctGatherType=jobacct_gather/none",
          "JobCompType=jobcomp/none",
          "MinJobAge=600",
          "SlurmctldTimeout=30",
          "SlurmdTimeout=30",
          "KillWait=5",
          f"NodeName={host} CPUs={cpus} RealMemory={mem} State=UNKNOWN",
          f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
          "",
        ]
      )
    )
    self.env = dict(os.environ, SLURM_CONF=str(self.conf))

  def _start(self, argv: list[str]) -> subprocess.Popen:
    log = open(self.root / "log" / f"{os.path.basename(argv[0])}.out", "ab")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
    self.procs.append(p)
    return p

  def start(self, timeout: float = 60) -> "Cluster":
    m = self.root / "munge"
    self._start(
      [
        _which("munged"),
        "--foreground",
        "--force",
        f"--socket={self.munge_socket}",
        f"--key-file={m / 'munge.key'}",
        f"--pid-file={m / 'munged.pid'}",
        f"--log-file={m / 'munged.log'}",
        f"--seed-file={m / 'munged.seed'}",
      ]
    )
    self._wait(lambda: self.munge_socket.exists(), timeout, "munged")
    self._start([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
    self._start([_which("slurmd"), "-D", "-f", str(self.conf)])
    self._wait(self._node_idle, timeout, "slurmd (node idle)")
    return self

  def _node_idle(self) -> bool:
    out = subprocess.run(
      ["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True, timeout=20
    )
    return out.returncode == 0 and out.stdout.strip().startswith("idle")

  def _wait(self, ready, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
      for p in self.procs:
        if p.poll() is not None:
          raise RuntimeError(f"{p.args[0]} exited ({p.returncode}); logs in {self.root / 'log'}")
      if ready():
        return
      time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout} s; logs in {self.root / 'log'}")

  def queue(self) -> list[str]:
    """`JOBID STATE` lines of the jobs still in the queue."""
    out = subprocess.run(
      ["squeue", "-h", "-o", "%i %T"], env=self.env, capture_output=True, text=True, timeout=20
    )
    return out.stdout.split("\n") if out.stdout.strip() else []

  def wait_empty(self, timeout: float) -> None:
    end = time.monotonic() + timeout
    while self.queue():
      if time.monotonic() > end:
        raise TimeoutError(f"jobs still queued after {timeout} s: {self.queue()}")
      time.sleep(1)

  def stop(self) -> None:
    """Stops the daemons by PID (newest first), slurmd's job processes with them."""
    for p in reversed(self.procs):
      if p.poll() is None:
        p.terminate()
        try:
          p.wait(timeout=20)
        except subprocess.TimeoutExpired:
          p.kill()
          p.wait()
    self.procs.clear()
