"""The launch scripts' dry runs print the commands they would run, and run nothing."""

import pathlib
import shlex
import subprocess
import sys

LAUNCH = pathlib.Path(__file__).parent.parent / "launch"


def _dry_run(script, *args):
  out = subprocess.run(
    [sys.executable, str(LAUNCH / script), *args, "--dry_run"],
    capture_output=True,
    text=True,
    check=True,
    timeout=60,
  )
  return out.stdout


def test_tpu_pod_dry_run():
  out = _dry_run(
    "tpu_pod.py",
    "--tpu=pod-v4-32",
    "--zone=us-central2-b",
    "--project=proj",
    "--config=configs/x4.py:v1",
    "--workdir=gs://bucket/run",
    "batch_size=128",
  )
  lines = out.strip().splitlines()
  assert len(lines) == 4
  assert lines[0].startswith("git -C") and "archive" in lines[0]
  assert "tpu-vm scp" in lines[1] and "--worker=all" in lines[1]
  install, train = shlex.split(lines[2]), shlex.split(lines[3])
  assert "--worker=all" in install and "jax[tpu]" in install[-1]
  assert "--worker=all" in train and "--project=proj" in train
  command = train[-1]
  assert command.startswith("--command=cd ~/dan_jax && ")
  argv = shlex.split(command.split("&& ", 1)[1])
  assert argv[:3] == ["python3", "-m", "dan_jax.main"]
  assert "--config=configs/x4.py:v1" in argv and "--workdir=gs://bucket/run" in argv
  assert "--distributed" in argv and "--config.batch_size=128" in argv


def test_gpu_dry_run():
  out = _dry_run(
    "gpu.py",
    "--gpus=0,1,2,3",
    "--workdir=/runs/x4",
    "--python=python3",
    "--config.num_train_steps=10",
  )
  argv = shlex.split(out.strip())
  assert argv[0] == "env" and "CUDA_VISIBLE_DEVICES=0,1,2,3" in argv
  i = argv.index("python3")
  assert argv[i : i + 3] == ["python3", "-m", "dan_jax.main"]
  assert "--workdir=/runs/x4" in argv and "--config.num_train_steps=10" in argv
  assert "--distributed" not in argv  # one process drives every GPU


def test_slurm_dry_run_writes_and_submits_nothing(tmp_path):
  workdir = tmp_path / "run"
  out = _dry_run(
    "slurm.py",
    "--nodes=4",
    "--gpus_per_node=8",
    "--partition=gpu",
    f"--workdir={workdir}",
    "batch_size=256",
  )
  assert "#SBATCH --nodes=4" in out and "#SBATCH --ntasks-per-node=1" in out
  assert "#SBATCH --gpus-per-node=8" in out and "#SBATCH --partition=gpu" in out
  srun = [l for l in out.splitlines() if l.startswith("srun ")]
  assert len(srun) == 1
  argv = shlex.split(srun[0])
  assert argv[1:4] == ["python3", "-m", "dan_jax.main"] and "--distributed" in argv
  assert "--config.batch_size=256" in argv
  assert out.strip().splitlines()[-1] == f"sbatch {workdir}/slurm/train.sbatch"
  assert not workdir.exists()


def test_slurm_rejects_bad_counts(tmp_path):
  out = subprocess.run(
    [sys.executable, str(LAUNCH / "slurm.py"), "--nodes=0", f"--workdir={tmp_path}", "--dry_run"],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert out.returncode == 2 and "error:" in out.stderr
