"""A sweep whose workdir is a bucket (the fake-gcs-server of tests/test_gcs.py): it trains
into the bucket, synthesizes its test sets there, and collect writes its tables there."""

import pytest
import test_gcs

pytestmark = pytest.mark.slow

gcs = test_gcs.gcs  # the emulator fixture: a loopback-only namespace with an empty bucket


def test_sweep_with_a_bucket_workdir(gcs, tmp_path):
  cwd = tmp_path / "cwd"  # every process runs here; it must stay empty
  cwd.mkdir()
  tensorboard = tmp_path / "tb"  # TensorFlow's own GCS file system cannot be redirected
  argv = [
    str(test_gcs.ROOT / "launch" / "sweep.py"),
    f"--config={test_gcs.ROOT / 'configs' / 'test.py'}",
    f"--workdir=gs://{test_gcs.BUCKET}/sweep",
    "--train_spaces=iso",
    "--test_spaces=iso,motion",
    "--test_crop=32",
    f"--tensorboard_dir={tensorboard / 'hparams'}",
    "num_train_steps=2",
    "eval_every_steps=0",
    "checkpoint_every_steps=2",
    "data.val_source=none",
    f"tensorboard_dir={tensorboard / 'train'}",
  ]
  log = test_gcs._finish(gcs, test_gcs._start(gcs, cwd, "sweep1", *argv), "sweep1")
  assert "1 of 1 run(s) done" in log
  objects = set(test_gcs._objects(gcs))
  for name in (
    "sweep/results.csv",
    "sweep/results.md",
    "sweep/heatmap_demo.png",
    "sweep/test_sets/demo/motion/manifest.json",
    "sweep/test_sets/demo/motion/LR/coffee.png",
    "sweep/train_iso_seed0/scores.json",
    "sweep/train_iso_seed0/checkpoints/2/commit_success.txt",
  ):
    assert name in objects, sorted(objects)
  # Collect again: nothing retrained or rescored, the tables rewritten in the bucket.
  log = test_gcs._finish(
    gcs, test_gcs._start(gcs, cwd, "sweep2", *argv, "--mode=collect"), "sweep2"
  )
  assert "scoring" not in log and "synthesizing" not in log and "1 of 1 run(s) done" in log
  assert "| iso |" in log
  assert not any(cwd.iterdir())
