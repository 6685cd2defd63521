"""The kernel-space sweep: a tiny train x test grid runs here and writes its table."""

import csv
import pathlib
import shlex
import subprocess
import sys

from PIL import Image
import pytest

ROOT = pathlib.Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "launch"))
import sweep  # noqa: E402  (launch/ is put on sys.path above)


@pytest.mark.slow
def test_tiny_sweep_table_and_heatmap(tmp_path):
  status = sweep.main(
    [
      f"--config={ROOT}/configs/test.py",
      f"--workdir={tmp_path}",
      "--train_spaces=iso,motion",
      "--test_spaces=iso,aniso,motion",
      "--test_images=3",
      "--test_crop=32",
      "num_train_steps=2",
      "eval_every_steps=2",
      "checkpoint_every_steps=2",
    ]
  )
  assert status == 0
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["train_space"], r["test_space"]) for r in rows] == [
    (tr, te) for tr in ("iso", "motion") for te in ("iso", "aniso", "motion")
  ]
  for r in rows:
    assert 5 < float(r["psnr_y"]) < 60
    assert float(r["kernel_mse"]) >= 0  # the test config is DANv2: kernels are scored
  # Each run was trained on its own kernel space (and so built its own PCA).
  assert (tmp_path / "train_iso" / "checkpoints").is_dir()
  assert (tmp_path / "train_motion" / "checkpoints").is_dir()
  md = (tmp_path / "results.md").read_text()
  assert "| train \\ test | iso | aniso | motion |" in md and "| motion |" in md
  with Image.open(tmp_path / "heatmap.png") as im:
    assert im.size == (100 + 3 * 90, 100 + 2 * 90)
  # Collect mode re-evaluates the same runs without training: same table.
  assert (
    sweep.main(
      [
        f"--config={ROOT}/configs/test.py",
        f"--workdir={tmp_path}",
        "--train_spaces=iso,motion",
        "--test_spaces=iso,aniso,motion",
        "--test_images=3",
        "--test_crop=32",
        "--mode=collect",
      ]
    )
    == 0
  )
  assert (tmp_path / "results.md").read_text() == md


@pytest.mark.slow
def test_sweep_plan_prints_one_command_per_train_space(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      str(ROOT / "launch" / "sweep.py"),
      "--config=configs/x4.py:v2",
      f"--workdir={tmp_path}",
      "--train_spaces=iso,motion",
      "--mode=plan",
      "batch_size=32",
    ],
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
  )
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 2
  iso, motion = (shlex.split(l) for l in lines)
  assert iso[1:3] == ["-m", "dan_jax.main"] and f"--workdir={tmp_path}/train_iso" in iso
  assert "--config.degradation.family=gaussian" in iso
  assert "--config.degradation.family=motion" in motion and "--config.batch_size=32" in motion
  assert not any(tmp_path.iterdir())
  # The kernel space follows the launched config's kernel size (31x31 at x4 setting 2).
  out = subprocess.run(
    [
      sys.executable,
      str(ROOT / "launch" / "sweep.py"),
      "--config=configs/x4_setting2.py:v2",
      f"--workdir={tmp_path}",
      "--train_spaces=motion",
      "--mode=plan",
    ],
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
  )
  assert "--config.degradation.motion_len_max=24.0" in shlex.split(out.stdout)


def test_sweep_rejects_unknown_space(tmp_path):
  assert sweep.main([f"--workdir={tmp_path}", "--train_spaces=gaussian9"]) == 2


@pytest.mark.slow  # ~95 s on 2 cores: trains and evaluates four tiny models
def test_sweep_puts_methods_on_an_axis(tmp_path):
  # DANv2 and DCLS x 2 train spaces x 3 test spaces; 11x11 kernels for both (DCLS's
  # smallest filter stack), so both kernel estimates are scored on the same test sets.
  status = sweep.main(
    [
      f"--config={ROOT}/configs/test.py",
      f"--workdir={tmp_path}",
      "--methods=v2,dcls",
      "--train_spaces=iso,aniso",
      "--test_spaces=iso,aniso,motion",
      "--test_images=2",
      "--test_crop=32",
      "model.kernel_size=11",
      "num_train_steps=1",
      "eval_every_steps=0",
      "checkpoint_every_steps=1",
      "data.val_source=none",
    ]
  )
  assert status == 0
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["method"], r["train_space"], r["test_space"]) for r in rows] == [
    (m, tr, te)
    for m in ("DANv2", "DCLS")
    for tr in ("iso", "aniso")
    for te in ("iso", "aniso", "motion")
  ]
  assert all(5 < float(r["psnr_y"]) < 60 and float(r["kernel_mse"]) >= 0 for r in rows)
  for run in ("train_v2_iso", "train_v2_aniso", "train_dcls_iso", "train_dcls_aniso"):
    assert (tmp_path / run / "checkpoints").is_dir()
  md = (tmp_path / "results.md").read_text()
  assert "| DANv2/iso |" in md and "| DCLS/aniso |" in md and "Kernel MSE" in md
