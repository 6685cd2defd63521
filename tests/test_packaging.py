"""The wheel ships the configs: an installed (non-editable) dan_jax runs the demo."""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.slow
def test_wheel_in_fresh_virtualenv_runs_demo_without_config(tmp_path):
  # Build from a copy so that nothing (build/, *.egg-info) is written into the checkout.
  src = tmp_path / "src"
  src.mkdir()
  for name in ("setup.py", "requirements.txt", "README.md"):
    shutil.copy(ROOT / name, src / name)
  for name in ("dan_jax", "configs"):
    shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      str(src),
      "--no-deps",
      "--no-build-isolation",
      "-q",
      "-w",
      str(tmp_path / "dist"),
    ],
    check=True,
    timeout=300,
  )
  (wheel,) = (tmp_path / "dist").glob("dan_jax-*.whl")
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
  python = venv / "bin" / "python"
  # The dependencies (TensorFlow, JAX, ...) come from this interpreter's site-packages as a
  # plain path entry: its .pth files (an editable dan_jax among them) are not processed.
  site = subprocess.run(
    [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  pathlib.Path(site.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  subprocess.run(
    [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300
  )
  run_dir = tmp_path / "elsewhere"  # no configs/ in the working directory
  run_dir.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  workdir = tmp_path / "work"
  proc = subprocess.run(
    [
      str(python),
      "-m",
      "dan_jax.main",
      f"--workdir={workdir}",
      "--config.num_train_steps=2",
      "--config.eval_every_steps=2",
      "--config.checkpoint_every_steps=2",
      "--config.data.val_crop=64",
    ],
    cwd=run_dir,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "trained to step 2" in proc.stdout and "validation Y-PSNR" in proc.stdout
  installed = subprocess.run(
    [str(python), "-c", "import dan_jax; print(dan_jax.__file__)"],
    cwd=run_dir,
    env=env,
    capture_output=True,
    text=True,
  ).stdout
  assert str(venv) in installed, installed
