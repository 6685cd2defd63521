"""The kernel-space sweep: tiny grids train here and write their tables; bad input is one
error line; the SLURM and TPU scripts are checked dry (tests/test_sweep_slurm.py runs a
real SLURM cluster)."""

import csv
import json
import os
import pathlib
import shlex
import sys

import numpy as np
from PIL import Image
import pytest

ROOT = pathlib.Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "launch"))
import sweep_eval  # noqa: E402

import sweep  # noqa: E402  (launch/ is put on sys.path above)

TINY = [
  "num_train_steps=2",
  "eval_every_steps=0",
  "checkpoint_every_steps=2",
  "data.val_source=none",
]


def _sweep(tmp_path, *flags, overrides=TINY):
  return sweep.main(
    [
      f"--config={ROOT}/configs/test.py",
      f"--workdir={tmp_path}",
      "--train_spaces=iso,motion",
      "--test_spaces=iso,motion",
      "--test_crop=48",
      *flags,
      *overrides,
    ]
  )


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow  # ~60 s on 2 cores: trains four tiny models, scores them twice
def test_tiny_sweep_with_seeds_resumes_and_collects(tmp_path, capsys):
  hr = tmp_path / "hr"
  hr.mkdir()
  rng = np.random.default_rng(0)
  for i, size in enumerate([(40, 52), (44, 44)]):
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(hr / f"im{i}.png")
  w = tmp_path / "sweep"
  sets = f"--test_sets=demo,noise={hr}"
  assert _sweep(w, "--seeds=0,1", sets) == 0
  rows = _rows(w / "results.csv")
  assert len(rows) == 2 * 2 * 2 * 2  # train spaces x seeds x test sets x test spaces
  assert {(r["train_space"], r["seed"], r["test_set"]) for r in rows} == {
    (tr, s, ts) for tr in ("iso", "motion") for s in ("0", "1") for ts in ("demo", "noise")
  }
  for r in rows:
    assert r["status"] == "done" and 3 < float(r["psnr_y"]) < 60 and 0 < float(r["ssim_y"]) <= 1
    assert float(r["kernel_mse"]) >= 0  # DANv2 with the test kernels' size: scored
  md = (w / "results.md").read_text()
  assert "noise: Y-PSNR (dB)" in md and "demo: SSIM (Y)" in md and "Kernel MSE" in md
  assert md.count(" ± ") == 1 + 2 * 3 * 2 * 2  # the header, then every cell (2 seeds)
  # The test sets: full images, one manifest each, one kernel per image.
  man = json.loads((w / "test_sets" / "noise" / "motion" / "manifest.json").read_text())
  assert (
    man["space"] == "motion"
    and man["scale"] == 2
    and set(man["files"])
    == {
      "im0.png",
      "im1.png",
    }
  )
  with Image.open(w / "test_sets" / "noise" / "iso" / "LR" / "im0.png") as im:
    assert im.size == (26, 20)
  assert np.load(w / "test_sets" / "noise" / "iso" / "kernels.npy").shape == (2, 7, 7)
  with Image.open(w / "heatmap_noise.png") as im:
    assert im.size[0] > 200
  assert len(list((w / "tensorboard").iterdir())) == 4  # one HParams session per run
  scores = {p: p.stat().st_mtime_ns for p in w.glob("train_*/scores.json")}
  assert len(scores) == 4
  capsys.readouterr()

  # Run again: nothing is retrained or rescored, the same tables come out.
  assert _sweep(w, "--seeds=0,1", sets) == 0
  out = capsys.readouterr().out
  assert "== training" not in out and "scoring" not in out
  assert {p: p.stat().st_mtime_ns for p in scores} == scores
  assert (w / "results.md").read_text() == md

  # A changed test set is rebuilt (with a message) and only it is rescored.
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(hr / "im2.png")
  assert _sweep(w, "--seeds=0,1", sets, "--mode=collect") == 0
  out = capsys.readouterr().out
  assert "noise/iso" in out and "rebuilding" in out and "on noise/iso, noise/motion" in out

  # A run whose final checkpoint is gone is pending in collect; its cells are marked.
  final = w / "train_motion_seed1" / "checkpoints" / "2"
  final.rename(w / "moved")
  (w / "train_motion_seed1" / "error.txt").write_text("error: DataError: something broke\n")
  assert _sweep(w, "--seeds=0,1", sets, "--mode=collect") == 1
  out = capsys.readouterr().out
  assert "failed: train_motion_seed1: no checkpoint; error: DataError: something broke" in out
  md = (w / "results.md").read_text()
  assert "(1/2)" in md
  rows = _rows(w / "results.csv")
  assert {r["status"] for r in rows if r["seed"] == "1" and r["train_space"] == "motion"} == {
    "failed"
  }
  (w / "moved").rename(final)

  # A finished run whose kernel size differs from the sweep's: one error, nothing lost.
  before = (w / "results.md").read_text()
  assert (
    _sweep(w, "--seeds=0,1", sets, "--mode=collect", overrides=TINY + ["model.kernel_size=9"]) == 2
  )
  err = capsys.readouterr().err
  assert "model.kernel_size=7, but this sweep trains model.kernel_size=9" in err
  assert (w / "results.md").read_text() == before
  assert (w / "test_sets" / "noise" / "iso" / "manifest.json").exists()

  # Collect compiles the model once per architecture and LR size, not per run: the demo
  # set (one LR size) x 4 runs x 2 test spaces runs one program.
  for p in w.glob("train_*/scores.json"):
    p.unlink()
  parser = sweep.build_parser()
  args, overrides = parser.parse_known_args(
    [f"--config={ROOT}/configs/test.py", f"--workdir={w}", "--train_spaces=iso,motion"]
    + ["--test_spaces=iso,motion", "--test_crop=48", "--seeds=0,1", *TINY]
  )
  s = sweep.Sweep(args, overrides, log=lambda m: None)
  assert s.collect() == 0
  (predictor,) = s.scorer._predictors.values()
  assert predictor._whole._cache_size() == 1


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
      "--test_crop=32",
      "model.kernel_size=11",
      "num_train_steps=1",
      "eval_every_steps=0",
      "checkpoint_every_steps=1",
      "data.val_source=none",
    ]
  )
  assert status == 0
  rows = _rows(tmp_path / "results.csv")
  assert [(r["method"], r["train_space"], r["test_space"]) for r in rows] == [
    (m, tr, te)
    for m in ("DANv2", "DCLS")
    for tr in ("iso", "aniso")
    for te in ("iso", "aniso", "motion")
  ]
  assert all(5 < float(r["psnr_y"]) < 60 and float(r["kernel_mse"]) >= 0 for r in rows)
  for run in ("train_v2_iso", "train_v2_aniso", "train_dcls_iso", "train_dcls_aniso"):
    assert (tmp_path / f"{run}_seed0" / "checkpoints").is_dir()
  md = (tmp_path / "results.md").read_text()
  assert "| DANv2/iso |" in md and "| DCLS/aniso |" in md and "Kernel MSE" in md


def test_sweep_plan_prints_one_command_per_run(tmp_path, capsys):
  argv = [
    "--config=configs/x4.py:v2",
    f"--workdir={tmp_path}",
    "--train_spaces=iso,motion",
    "--seeds=0,3",
    "--mode=plan",
    "batch_size=32",
  ]
  assert sweep.main(argv) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 4
  iso, _, _, motion3 = (shlex.split(l) for l in lines)
  assert iso[1:3] == ["-m", "dan_jax.main"] and f"--workdir={tmp_path}/train_iso_seed0" in iso
  assert "--config.degradation.family=gaussian" in iso and "--config.seed=0" in iso
  assert "--config.degradation.family=motion" in motion3 and "--config.seed=3" in motion3
  assert "--config.batch_size=32" in motion3
  assert not any(tmp_path.iterdir())
  # The kernel space follows the launched config's kernel size (31x31 at x4 setting 2).
  argv = ["--config=configs/x4_setting2.py:v2", f"--workdir={tmp_path}", "--mode=plan"]
  assert sweep.main(argv + ["--train_spaces=motion"]) == 0
  assert "--config.degradation.motion_len_max=24.0" in shlex.split(capsys.readouterr().out)


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--train_spaces=gaussian9"], "unknown kernel space 'gaussian9'; known: iso, aniso"),
    (["--test_spaces=iso,blob"], "unknown kernel space 'blob'"),
    (["--methods=v2,srgan"], "unknown method 'srgan'"),
    (["--seeds=0,one"], "--seeds must be comma-separated integers (0,1,2), got '0,one'"),
    (["--test_sets=Set14=/nonexistent/Set14"], "test set Set14: /nonexistent/Set14 is not a"),
    (["--test_sets=Set14"], "--test_sets entry 'Set14' must be NAME=PATH"),
  ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, flags, message):
  w = tmp_path / "w"
  assert sweep.main([f"--config={ROOT}/configs/test.py", f"--workdir={w}", *flags]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not w.exists()


def test_empty_test_set_folder_is_an_error(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("x")
  argv = [f"--workdir={tmp_path / 'w'}", f"--test_sets=S={tmp_path / 'empty'}"]
  assert sweep.main([f"--config={ROOT}/configs/test.py", *argv]) == 2
  assert "test set S: no images in" in capsys.readouterr().err


def test_known_methods_are_the_package_versions():
  from dan_jax import models

  assert sweep.known_methods() == list(getattr(models, "FAMILIES", None) or models.VERSIONS)


def _slurm_argv(tmp_path, *extra):
  return [
    f"--config={ROOT}/configs/test.py",
    f"--workdir={tmp_path}",
    "--train_spaces=iso,motion",
    "--seeds=0,1",
    "--mode=slurm",
    "--partition=gpu",
    "--time=01:00:00",
    "--nodes=2",
    "--gpus_per_node=4",
    *extra,
    "num_train_steps=3",
  ]


def test_slurm_dry_run_prints_the_array_and_the_collect_job(tmp_path, capsys):
  assert sweep.main(_slurm_argv(tmp_path, "--dry_run")) == 0
  out = capsys.readouterr().out
  assert "#SBATCH --array=0-3" in out and "#SBATCH --nodes=2" in out
  assert "#SBATCH --gpus-per-node=4" in out and "#SBATCH --partition=gpu" in out
  assert "#SBATCH --requeue" in out and "#SBATCH --signal=TERM@120" in out
  assert "#SBATCH --time=01:00:00" in out
  assert out.count("--distributed") == 4 and "--config.seed=1" in out
  assert f"--workdir={tmp_path}/train_motion_seed1" in out
  assert "--mode=collect" in out and "--dependency=afterany:<array job id>" in out
  assert "--dry_run" not in out.split("collect-NNN.sbatch")[1].split("sbatch --parsable")[0]
  assert not tmp_path.joinpath("slurm").exists()


def test_sbatch_missing_or_refusing_is_one_error(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path / "bin"))
  assert sweep.main(_slurm_argv(tmp_path / "w")) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "sbatch is not on PATH" in err[0]
  (tmp_path / "bin").mkdir()
  fake = tmp_path / "bin" / "sbatch"
  fake.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n")
  fake.chmod(0o755)
  assert sweep.main(_slurm_argv(tmp_path / "w")) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "sbatch refused the job" in err[0]
  assert "invalid partition specified: gpu" in err[0]
  # The scripts stay for inspection; nothing was recorded as submitted.
  assert (tmp_path / "w" / "slurm" / "sweep-000.sbatch").exists()
  assert not (tmp_path / "w" / "slurm" / "jobs.json").exists()


def test_tpu_dry_run_one_slice_or_one_run_per_slice(tmp_path, capsys):
  base = [
    f"--config={ROOT}/configs/test.py",
    f"--workdir={tmp_path}",
    "--train_spaces=iso,motion",
    "--mode=tpu",
    "--zone=us-central2-b",
    "--dry_run",
  ]
  assert sweep.main(base + ["--tpu=v4-8"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0] == "# slice v4-8"
  train = [l for l in lines if "dan_jax.main" in l]
  assert len(train) == 2 and "train_iso_seed0" in train[0] and "train_motion_seed0" in train[1]
  assert sum("tpu-vm scp" in l for l in lines) == 1  # the code is copied once per slice
  assert sweep.main(base + ["--tpus=a,b"]) == 0
  out = capsys.readouterr().out
  a, b = out.split("# slice b")
  assert "train_iso_seed0" in a and "train_motion_seed0" in b
  assert "tpu-vm scp" in a and "tpu-vm scp" in b
  assert sweep.main(base) == 2
  assert "--mode=tpu needs --tpu" in capsys.readouterr().err


def test_error_line_of_a_run_log(tmp_path):
  log = tmp_path / sweep_eval.LOG_FILE
  log.write_text(
    "== sweep run x\nerror: old\n== sweep run x\nI0 step 1\nTraceback (most\n  ...\n"
    "ValueError: boom\n"
  )
  assert sweep_eval.error_line(str(tmp_path)) == "ValueError: boom"
  log.write_text("== sweep run x\nI0 step 1\n")
  assert sweep_eval.error_line(str(tmp_path)) is None
  log.write_text("== sweep run x\nI0 step 1\nerror: config.model.nf must be > 0\n")
  assert sweep_eval.error_line(str(tmp_path)) == "error: config.model.nf must be > 0"


def test_large_images_are_scored_in_tiles_like_whole_images():
  import ml_collections

  from conftest import TINY_V2
  from conftest import tiny_variables

  rng = np.random.default_rng(0)
  hr = [np.kron(rng.integers(0, 255, (12, 10, 3)), np.ones((8, 8, 1))).astype(np.uint8)] * 2
  lr = [np.round(h[::2, ::2].astype(np.float32)) / 255.0 for h in hr]  # 48x40 LR
  k = rng.random((2, 11, 11)).astype(np.float32)
  test = sweep_eval.TestSet("t", "iso", "d", ["a", "b"], hr, lr, k / k.sum((1, 2), keepdims=True))
  config, variables = ml_collections.ConfigDict(TINY_V2), tiny_variables(TINY_V2)
  tiled = sweep_eval.Scorer(tile=24, batch_size=4)
  p = tiled.predictor(config, variables)
  assert p.uses_tiles(48, 40) and p.tiled_is_exact
  whole = sweep_eval.Scorer(tile=0)
  a, b = tiled.score(p, test), whole.score(whole.predictor(config, variables), test)
  assert a["n"] == 2 and a["kernel_mse"] is not None
  for m in sweep_eval.METRICS:
    assert a[m] == pytest.approx(b[m], rel=1e-4, abs=1e-6)


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys, monkeypatch):
  from dan_jax import train
  from dan_jax.errors import TrainingError

  trained = []

  def fake_train(config, workdir):
    trained.append(os.path.basename(workdir))
    raise TrainingError(f"config.seed {config.seed}: boom")

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  assert _sweep(tmp_path, "--seeds=0,1") == 1
  assert trained == [f"train_{s}_seed{n}" for s in ("iso", "motion") for n in (0, 1)]
  out = capsys.readouterr().out
  assert (
    "failed: train_motion_seed1: no checkpoint; error: TrainingError: config.seed 1: boom" in out
  )
  assert (tmp_path / "train_iso_seed0" / "error.txt").exists()
  assert {r["status"] for r in _rows(tmp_path / "results.csv")} == {"failed"}
  assert "| iso | — | — |" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "heatmap_demo.png").exists()


def test_the_collect_job_gets_absolute_test_set_folders(tmp_path, capsys, monkeypatch):
  # The jobs run in the repository: a folder given relative to where the sweep was
  # launched must reach the collect job as an absolute path (gs:// and demo unchanged).
  (tmp_path / "sets" / "S14").mkdir(parents=True)
  Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(tmp_path / "sets" / "S14" / "a.png")
  monkeypatch.chdir(tmp_path)
  argv = _slurm_argv(tmp_path / "w", "--dry_run", "--test_sets", "demo,S14=sets/S14")
  assert sweep.main(argv) == 0
  collect = capsys.readouterr().out.split("collect-NNN.sbatch")[1]
  assert f"--test_sets=demo,S14={tmp_path}/sets/S14" in collect
  assert collect.count("--test_sets") == 1  # the two-word form given is replaced
