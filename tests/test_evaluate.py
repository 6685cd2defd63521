"""Evaluation: Gaussian8 sets, DIV2KRK, the protocol metrics, tables, CSV/JSON, the CLI."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import scipy.io
from skimage import data

from dan_jax import benchmark_sets
from dan_jax import degradation
from dan_jax import errors
from dan_jax import evaluate
from dan_jax import metrics
from dan_jax import predict

from conftest import TINY_V2 as V2
from conftest import tiny_variables as _variables


def _make_hr(folder):
  folder.mkdir()
  photo = data.astronaut()
  Image.fromarray(photo[:48, :40]).save(folder / "a.png")
  Image.fromarray(photo[100:145, 200:237]).save(folder / "b.png")  # 45x37: modcropped


def _make_div2krk(root, numbers=(1, 2)):
  """A DIV2KRK-shaped folder: gt/img_N_gt.png, lr_x2/im_N.png, gt_k_x2/kernel_N.mat."""
  for d in ("gt", "lr_x2", "gt_k_x2"):
    (root / d).mkdir(parents=True)
  photo = data.astronaut()
  kernels = {}
  for n in numbers:
    y, x = 50 * (n % 8), 30 * (n % 8)
    hr = photo[y : y + 40, x : x + 36]
    k = degradation.anisotropic_gaussian_kernel(11, 1.0 + 0.2 * n, 2.0, 0.3 * n).numpy()
    lr = degradation.degrade(hr.astype(np.float32) / 255, k, 2, clip=True).numpy()
    Image.fromarray(hr).save(root / "gt" / f"img_{n}_gt.png")
    Image.fromarray(np.round(lr * 255).astype(np.uint8)).save(root / "lr_x2" / f"im_{n}.png")
    scipy.io.savemat(root / "gt_k_x2" / f"kernel_{n}.mat", {"Kernel": k})
    kernels[n] = k
  (root / "lr_x2" / "Thumbs.db").write_bytes(b"\0")
  return kernels


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow  # ~6-18 s on 2 cores: out of the fast lane
def test_evaluate_end_to_end(tmp_path, ckpt_v2, capsys):
  _make_hr(tmp_path / "hr")
  kernels = _make_div2krk(tmp_path / "krk")
  work = tmp_path / "work"
  rc = evaluate.main(
    [
      "--checkpoint",
      ckpt_v2,
      "--dataset",
      f"Tiny={tmp_path / 'hr'}",
      "--div2krk",
      str(tmp_path / "krk"),
      "--out",
      str(work),
      "--save_images",
      "--batch_size",
      "4",
    ]
  )
  out, err = capsys.readouterr()
  assert rc == 0, err

  # The Gaussian8 file set: 8 sigmas, every HR image modcropped, LR = HR / 2.
  sigmas = [f"{s:.2f}" for s in degradation.gaussian8_sigmas(2)]
  g8 = work / "gaussian8" / "Tiny" / "x2"
  assert sorted(p.name for p in g8.iterdir() if p.is_dir()) == [f"sig{s}" for s in sigmas]
  for s in sigmas:
    for name, hr_size in [("a.png", (40, 48)), ("b.png", (36, 44))]:
      assert Image.open(g8 / f"sig{s}" / "HR" / name).size == hr_size
      assert Image.open(g8 / f"sig{s}" / "LR" / name).size == (hr_size[0] // 2, hr_size[1] // 2)
    assert sorted(os.listdir(g8 / f"sig{s}" / "LR")) == ["a.png", "b.png"]

  (run_dir,) = [p for p in work.iterdir() if p.name.startswith("eval-")]
  rows = _read_csv(run_dir / "metrics.csv")
  assert list(rows[0]) == list(evaluate.CSV_FIELDS)
  assert len(rows) == 8 * 2 + 2
  assert [r["subset"] for r in rows[:16]] == [s for s in sigmas for _ in range(2)]
  assert [(r["dataset"], r["image"]) for r in rows[16:]] == [
    ("DIV2KRK", "im_1"),
    ("DIV2KRK", "im_2"),
  ]

  # The protocol: Y-PSNR/SSIM of the saved uint8 SR image against the GT, border = scale.
  row = rows[5]
  sr = np.asarray(
    Image.open(run_dir / "images" / "Tiny" / f"sig{row['subset']}" / f"{row['image']}_x2.png")
  )
  gt = np.asarray(Image.open(g8 / f"sig{row['subset']}" / "HR" / f"{row['image']}.png"))
  assert float(row["psnr_y"]) == pytest.approx(metrics.psnr_y(sr, gt, 2), abs=1e-9)
  assert float(row["ssim_y"]) == pytest.approx(metrics.ssim_y(sr, gt, 2), abs=1e-9)
  # DIV2KRK: matched by number; the kernel estimate scored against the .mat kernel.
  krk = rows[17]
  est = np.load(run_dir / "images" / "DIV2KRK" / "im_2_x2_kernel.npy")
  assert float(krk["kernel_mse"]) == pytest.approx(
    metrics.kernel_error(est, kernels[2])["mse"], rel=1e-9
  )
  gt = np.asarray(Image.open(tmp_path / "krk" / "gt" / "img_2_gt.png"))
  sr = np.asarray(Image.open(run_dir / "images" / "DIV2KRK" / "im_2_x2.png"))
  assert float(krk["psnr_y"]) == pytest.approx(metrics.psnr_y(sr, gt, 2), abs=1e-9)

  summary = json.loads((run_dir / "summary.json").read_text())
  tiny = summary["datasets"]["Tiny"]
  assert tiny["all"]["n"] == 16 and sorted(tiny["subsets"]) == sigmas
  assert tiny["all"]["psnr_y"] == pytest.approx(
    np.mean([float(r["psnr_y"]) for r in rows[:16]]), abs=1e-9
  )
  assert summary["datasets"]["DIV2KRK"]["all"]["kernel_mse"] == pytest.approx(
    np.mean([float(r["kernel_mse"]) for r in rows[16:]]), rel=1e-9
  )
  assert summary["scale"] == 2 and summary["crop_border"] == 2 and summary["step"] == 0

  # The printed table: datasets as rows, the 8 sigmas (+ average) as columns.
  assert out.strip() == (run_dir / "table.txt").read_text().strip()
  lines = out.splitlines()
  header = next(l for l in lines if l.startswith("Dataset") and "sig" in l)
  assert [c.strip() for c in header.split("|")] == (
    ["Dataset"] + [f"sig {s}" for s in sigmas] + ["Average"]
  )
  tiny_row = next(l for l in lines if l.startswith("Tiny"))
  cells = [c.strip() for c in tiny_row.split("|")]
  a = tiny["subsets"][sigmas[0]]
  assert cells[1] == f"{a['psnr_y']:.2f}/{a['ssim_y']:.4f}" and len(cells) == 10
  assert any(l.startswith("DIV2KRK") for l in lines)

  # A second run reuses the cached Gaussian8 set and writes a new results folder.
  mtime = os.path.getmtime(g8 / "sig0.80" / "LR" / "a.png")
  rc = evaluate.main(
    ["--checkpoint", ckpt_v2, "--hr_dirs", f"Tiny={tmp_path / 'hr'}", "--out", str(work)]
  )
  err = capsys.readouterr().err
  assert rc == 0 and "using cached Gaussian8" in err
  assert os.path.getmtime(g8 / "sig0.80" / "LR" / "a.png") == mtime
  assert len([p for p in work.iterdir() if p.name.startswith("eval-")]) == 2
  # A cache made from other HR images is refused, and left as it was.
  Image.fromarray(data.astronaut()[:20, :20]).save(tmp_path / "hr" / "c.png")
  rc = evaluate.main(
    ["--checkpoint", ckpt_v2, "--dataset", f"Tiny={tmp_path / 'hr'}", "--out", str(work)]
  )
  err = capsys.readouterr().err
  assert rc == 2 and "other HR images" in err and "Traceback" not in err
  assert sorted(os.listdir(g8 / "sig0.80" / "LR")) == ["a.png", "b.png"]


def test_batched_same_size_images_equal_single_image_inference():
  predictor = predict.Predictor(V2, _variables(V2), batch_size=4)
  photo = data.astronaut().astype(np.float32) / 255
  lrs = np.stack([photo[i * 30 : i * 30 + 18, 40:62] for i in range(3)])
  batched = predictor.predict_batch(lrs)  # padded to a batch of 4
  for lr, got in zip(lrs, batched):
    want = predictor.predict(lr)
    np.testing.assert_allclose(got.sr, want.sr, atol=1e-5)
    np.testing.assert_allclose(got.kernel, want.kernel, atol=1e-6)


def test_div2krk_files_are_matched_by_number(tmp_path, capsys):
  root = tmp_path / "krk"
  _make_div2krk(root, numbers=(1, 10))
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "lr_x2" / "im_3.png")
  jobs = benchmark_sets.div2krk_jobs(str(root), 2)
  assert [(j.name, os.path.basename(j.gt_path), os.path.basename(j.kernel_path)) for j in jobs] == [
    ("im_1", "img_1_gt.png", "kernel_1.mat"),
    ("im_10", "img_10_gt.png", "kernel_10.mat"),
  ]
  note = capsys.readouterr().out
  assert "no ground truth" in note and "[3]" in note
  with pytest.raises(errors.EvaluationError, match="lr_x4"):
    benchmark_sets.div2krk_jobs(str(root), 4)
  # Kernels under another variable name still load when unambiguous; junk does not.
  scipy.io.savemat(tmp_path / "k.mat", {"K": np.eye(3)})
  np.testing.assert_array_equal(benchmark_sets.load_kernel(str(tmp_path / "k.mat")), np.eye(3))
  (tmp_path / "bad.mat").write_bytes(b"nonsense")
  with pytest.raises(errors.EvaluationError, match="bad.mat"):
    benchmark_sets.load_kernel(str(tmp_path / "bad.mat"))


def test_tables_report_missing_kernel_metrics_as_na():
  rows = [
    {
      "dataset": "DIV2KRK",
      "subset": "",
      "image": f"im_{i}",
      "psnr_y": 30.0 + i,
      "ssim_y": 0.8,
      "psnr_rgb": 29.0,
      "ssim_rgb": 0.7,
    }
    for i in range(2)
  ]
  table = evaluate.format_tables(evaluate.summarize(rows), 4, "DANv1 x4", 4)
  (line,) = [l for l in table.splitlines() if l.startswith("DIV2KRK")]
  assert [c.strip() for c in line.split("|")] == ["DIV2KRK", "30.50/0.8000", "n/a", "n/a", "n/a"]


def test_dataset_arguments_are_checked(tmp_path):
  assert benchmark_sets.parse_datasets([f"A={tmp_path}"], f"B={tmp_path}") == {
    "A": str(tmp_path),
    "B": str(tmp_path),
  }
  for bad, match in [
    (["Set5"], "NAME=PATH"),
    ([f"A={tmp_path}", f"A={tmp_path}"], "twice"),
    (["A=/no/such/dir"], "not a folder"),
    ([f"a b={tmp_path}"], "letters"),
  ]:
    with pytest.raises(errors.EvaluationError, match=match):
      benchmark_sets.parse_datasets(bad)


@pytest.mark.slow
def test_cli_subprocess(tmp_path, ckpt_v2):
  _make_div2krk(tmp_path / "krk", numbers=(1,))
  cmd = [
    sys.executable,
    "-m",
    "dan_jax.evaluate",
    "--checkpoint",
    ckpt_v2,
    "--div2krk",
    str(tmp_path / "krk"),
    "--out",
    str(tmp_path / "work"),
  ]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "Setting 2 (DIV2KRK x2)" in done.stdout and "DIV2KRK |" in done.stdout
  # A scale the checkpoint does not have: one clear error, no traceback, nothing written.
  done = subprocess.run(
    cmd[:-1] + [str(tmp_path / "work2"), "--scale", "4"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith("error: --scale 4")
  assert "Traceback" not in done.stderr and not (tmp_path / "work2").exists()


def test_pad_to_multiple_shares_one_compilation():
  predictor = predict.Predictor(V2, _variables(V2), pad_to_multiple=16)
  rng = np.random.default_rng(0)
  a = predictor.predict(rng.random((18, 22, 3), np.float32))
  b = predictor.predict(rng.random((20, 30, 3), np.float32))
  assert a.sr.shape == (36, 44, 3) and b.sr.shape == (40, 60, 3)  # cropped back
  assert predictor._whole._cache_size() == 1  # both ran padded to 32x32
