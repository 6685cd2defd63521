"""The training command line: `python -m dan_jax.main` trains on a folder; errors are one line."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

ROOT = pathlib.Path(__file__).parents[1]
# configs/x4.py shrunk to a model that compiles in seconds; everything else is x4's.
TINY = [
  "--config.model.nf=8",
  "--config.model.nb=1",
  "--config.model.ng=1",
  "--config.model.estimator_nf=8",
  "--config.model.estimator_nb=1",
  "--config.model.loops=2",
  "--config.data.hr_crop=32",
  "--config.batch_size=2",
  "--config.degradation.pca_samples=500",
  "--config.data.val_source=none",
  "--config.log_every_steps=1",
]


def _main(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "dan_jax.main", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def _one_error_line(proc):
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


@pytest.mark.slow
def test_trains_on_a_folder_of_images(tmp_path):
  folder = tmp_path / "hr"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    img = rng.integers(0, 256, size=(40 + 8 * i, 48, 3), dtype=np.uint8)
    (folder / f"img{i}.png").write_bytes(tf.io.encode_png(img).numpy())
  workdir = tmp_path / "run"
  proc = _main(
    "--config=configs/x4.py:v2",
    f"--workdir={workdir}",
    f"--config.data.train_dir={folder}",
    "--config.num_train_steps=1",
    *TINY,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "trained to step 1" in proc.stdout
  assert (workdir / "checkpoints" / "1" / "state").is_dir()
  assert list(workdir.glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
  "make,message",
  [
    (lambda p: p.mkdir(), "no .png/.jpg/.jpeg/.bmp images in"),
    (lambda p: None, "does not exist"),
  ],
)
@pytest.mark.slow
def test_empty_or_missing_train_folder_is_one_error(tmp_path, make, message):
  folder = tmp_path / "hr"
  make(folder)
  proc = _main(
    "--config=configs/x4.py",
    f"--workdir={tmp_path / 'run'}",
    f"--config.data.train_dir={folder}",
    *TINY,
  )
  assert proc.returncode == 1
  line = _one_error_line(proc)
  assert "config.data.train_dir" in line and message in line and str(folder) in line


_SLOW = pytest.mark.slow  # each case is a subprocess (~5 s); two stay in the fast lane


@pytest.mark.parametrize(
  "args,status,message",
  [
    (
      ["--config.model.scal=3"],
      2,
      "--config.model.scal: no such config field (did you mean 'scale'?)",
    ),
    pytest.param(["--config.model.scale=five"], 2, "--config.model.scale=five", marks=_SLOW),
    pytest.param(
      ["--config=configs/nonexistent.py"],
      2,
      "no such config file: configs/nonexistent.py",
      marks=_SLOW,
    ),
    pytest.param(
      ["--config=configs/x4.py:v3"],
      2,
      "config argument must be v1, v2, dcls or baseline",
      marks=_SLOW,
    ),
    (["--config.model.scale=5"], 1, "config.model.scale must be one of (2, 3, 4)"),
    pytest.param(
      ["--config.learning_rate=-0.1"],
      1,
      "config.learning_rate must be a positive number",
      marks=_SLOW,
    ),
  ],
)
def test_bad_flags_are_one_error(tmp_path, args, status, message):
  if not any(a.startswith("--config=") for a in args):
    args = ["--config=configs/x4.py", *args]
  workdir = tmp_path / "run"
  proc = _main(*args, f"--workdir={workdir}", timeout=120)
  assert proc.returncode == status, proc.stderr[-3000:]
  assert message in _one_error_line(proc)
  assert not workdir.exists()
