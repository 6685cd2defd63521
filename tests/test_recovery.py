"""Recovery of unattended runs: skipped non-finite steps, rollbacks, the best checkpoint.

Faults are injected through the config (`debug.nan_at_steps`, `debug.collapse_at_step`)
into the jitted step of the tiny configs/test.py, as a bad batch or an exploding update
would hit a real run. The SIGKILL-during-a-rollback test is in test_reliability.py.
"""

import glob
import json
import logging
import os
import pathlib

import jax
import numpy as np
import pytest
import tensorflow as tf

from dan_jax import checkpoint
from dan_jax import config as config_lib
from dan_jax import errors
from dan_jax import models
from dan_jax import parallel
from dan_jax import steps
from dan_jax import train
from dan_jax import train_state

ROOT = pathlib.Path(__file__).parents[1]
TEST_CONFIG = str(ROOT / "configs" / "test.py")


def _config(**overrides):
  c = config_lib.load(TEST_CONFIG)
  for key, value in overrides.items():
    *path, name = key.split(".")
    parent = c
    for part in path:
      parent = parent[part]
    parent[name] = value
  return c


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _scalars(workdir, prefix):
  """{tag: [(step, value)]} of the TensorBoard scalars whose tag starts with prefix."""
  out = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag.startswith(prefix):
          out.setdefault(v.tag, []).append((event.step, float(tf.make_ndarray(v.tensor))))
  return out


def _meta(directory, step):
  return json.loads((pathlib.Path(directory) / str(step) / "meta" / "metadata").read_text())


# ----------------------------------------------------------------------------- the step


@pytest.mark.slow  # compiles train steps (~10 s): out of the fast lane
def test_nonfinite_step_is_skipped_on_the_device():
  config = _config()
  spec = models.spec_from_config(config.model)
  model = models.create_model(spec)
  pca = np.linalg.qr(np.random.default_rng(0).normal(size=(49, 4)))[0].astype(np.float32)
  tx = steps.create_optimizer(config, steps.create_learning_rate_fn(config))
  state = train_state.create_train_state(models.init_variables(model, 0, pca), tx, ema=True)
  rng = np.random.default_rng(1)
  batch = {
    "lr": rng.random((2, 8, 8, 3), np.float32),
    "hr": rng.random((2, 16, 16, 3), np.float32),
    "kernel": rng.random((2, 7, 7), np.float32),
    "code": rng.random((2, 4), np.float32),
  }
  step = jax.jit(
    lambda s, b: steps.train_step(
      s, b, model=model, tx=tx, ema_decay=0.5, faults=steps.Faults(nan_at_steps=(2, 3))
    )
  )
  s1, m1 = step(state, batch)  # step 1: applied
  s2, m2 = step(s1, batch)  # step 2: NaN injected
  s3, m3 = step(s2, batch)  # step 3: NaN injected
  s4, m4 = step(s3, batch)  # step 4: applied again
  assert [bool(m["finite"]) for m in (m1, m2, m3, m4)] == [True, False, False, True]
  assert np.isnan(float(m2["loss"]))
  # The skipped steps changed nothing but the counters.
  for tree in ("params", "opt_state", "ema_params"):
    for a, b in zip(_leaves(getattr(s1, tree)), _leaves(getattr(s3, tree)), strict=True):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(_leaves(s4.params)[0], _leaves(s3.params)[0])
  assert [int(s.step) for s in (s1, s2, s3, s4)] == [1, 2, 3, 4]
  assert [int(s.skipped) for s in (s1, s2, s3, s4)] == [0, 1, 2, 2]
  assert [int(s.nonfinite_run) for s in (s1, s2, s3, s4)] == [0, 1, 2, 0]


def test_clip_grad_norm_is_off_by_default_and_clips_when_set():
  config = _config()
  assert config.clip_grad_norm == 0  # the official recipe has no clipping
  params = {"w": np.zeros((4,), np.float32)}
  grads = {"w": np.full((4,), 10.0, np.float32)}  # global norm 20
  for clip, norm in ((0.0, 20.0), (1.0, 1.0)):
    config.clip_grad_norm = clip
    tx = steps.create_optimizer(config, steps.create_learning_rate_fn(config))
    _, opt_state = tx.update(grads, tx.init(params), params)
    adam = next(s for s in opt_state if hasattr(s, "nu"))
    # Adam's second moment saw the (clipped) gradient: (1 - b2) * g^2.
    seen = np.sqrt(adam.nu["w"] / (1 - config.adam_b2))
    assert np.linalg.norm(seen) == pytest.approx(norm, rel=1e-5)


# ----------------------------------------------------------------------------- rollbacks


INJECTED = {
  "num_train_steps": 14,
  "debug.nan_at_steps": (3, 4, 5, 6),
  "debug.collapse_at_step": 9,
  "max_consecutive_nonfinite": 3,
  "collapse_psnr_drop": 1.0,
  "write_sr_images": False,
}


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
  """The same run with injected NaNs and an injected collapse, twice."""
  runs = []
  for name in ("a", "b"):
    workdir = tmp_path_factory.mktemp(name)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("absl")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
      result = train.train_and_evaluate(_config(**INJECTED), str(workdir))
    finally:
      logger.removeHandler(handler)
      logger.setLevel(level)
    runs.append((workdir, result, [r.getMessage() for r in records]))
  return runs


@pytest.mark.slow
def test_injected_nans_and_collapse_roll_back_and_finish(injected):
  workdir, result, lines = injected[0]
  assert result["step"] == 14 and result["rollbacks"] == 2
  # Steps 3, 4, 5, then step 5 again on batch 6 after the first rollback (counted across
  # rollbacks).
  assert result["skipped_steps"] == 4
  rollbacks = [l for l in lines if "; rollback " in l]
  assert len(rollbacks) == 2, lines
  # Steps 3-5 NaN -> after 3 in a row, back to the checkpoint of step 4 (saved while
  # skipping: the state of step 2), the data stream one batch further on.
  assert rollbacks[0].startswith(
    "step 5: the loss or gradient is not finite for 3 consecutive steps"
  )
  assert "restored" in rollbacks[0] and rollbacks[0].endswith(
    "checkpoints/4 and moved the data stream past 1 batches (data offset now 1)"
  )
  # The collapse (step 9's batch, trained at step 8) is seen by the validation of step 8;
  # back to step 6, the last validated one.
  assert rollbacks[1].startswith("step 8: validation Y-PSNR collapsed to")
  assert rollbacks[1].endswith(
    "checkpoints/6 and moved the data stream past 2 batches (data offset now 3)"
  )
  assert any("step(s) skipped (non-finite loss or gradient" in l for l in lines)
  # One TensorBoard scalar per event, and the skip counter.
  events = _scalars(workdir, "recovery/")
  assert events["recovery/rollbacks"] == [(5, 1.0), (8, 2.0)]
  assert events["recovery/nonfinite_rollback_to_step"] == [(5, 4.0)]
  assert events["recovery/collapse_rollback_to_step"] == [(8, 6.0)]
  assert max(v for _, v in _scalars(workdir, "train/skipped_steps")["train/skipped_steps"]) == 4
  # The checkpoints record the recovery (a resumed run continues the moved stream).
  meta = _meta(workdir / "checkpoints", 14)
  assert meta["recovery"]["data_offset"] == 3 and meta["recovery"]["rollbacks"] == 2
  assert meta["data_position"] == 17
  _, variables, _ = checkpoint.load_model(str(workdir))
  assert all(np.isfinite(x).all() for x in _leaves(variables))
  # The collapsed validation was not kept as the best.
  assert result["val_psnr_y"] > 15


@pytest.mark.slow
def test_two_runs_with_the_same_injections_end_bit_identical(injected):
  (wa, ra, _), (wb, rb, _) = injected
  assert ra["val_psnr_y"] == rb["val_psnr_y"]
  for use_ema in (False, True):
    a = checkpoint.load_model(str(wa), use_ema=use_ema)[1]
    b = checkpoint.load_model(str(wb), use_ema=use_ema)[1]
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
      np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_rollbacks_that_do_not_help_stop_with_advice(tmp_path):
  config = _config(
    num_train_steps=30,
    checkpoint_every_steps=2,
    max_consecutive_nonfinite=2,
    max_rollbacks=1,
    **{"debug.nan_at_steps": tuple(range(5, 100)), "data.val_source": "none"},
  )
  with pytest.raises(errors.NonFiniteLossError) as info:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(info.value)
  # 5, 6 NaN -> back to 4; 5, 6 (batches 7, 8) NaN again -> the second rollback in a row
  # is one more than config.max_rollbacks.
  assert message.startswith(
    "training stopped at step 6: the loss or gradient is not finite for 2 consecutive steps"
  )
  assert "after 1 rollback(s) in a row (config.max_rollbacks = 1)" in message
  assert "the last good checkpoint is step 4" in message
  assert "config.clip_grad_norm" in message and "config.learning_rate" in message
  assert sorted(int(d) for d in os.listdir(tmp_path / "run" / "checkpoints") if d.isdigit()) == [
    2,
    4,
  ]


@pytest.mark.slow
def test_best_checkpoint_of_a_step_rerun_with_another_score_is_replaced(tmp_path):
  # A run validated step 4 and kept it as the best, and its latest checkpoint of step 4
  # is gone (a rerun of step 4 from step 2, as after a kill between the two saves on the
  # old order, or after a rollback). The rerun scores differently; no error.
  workdir = tmp_path / "run"
  kw = {
    "num_train_steps": 4,
    "eval_every_steps": 2,
    "checkpoint_every_steps": 2,
    "write_sr_images": False,
    "image_every_steps": 0,
  }
  first = train.train_and_evaluate(_config(**kw), str(workdir))
  best_dir = workdir / train.BEST_SUBDIR
  assert os.listdir(best_dir) == ["4"]
  assert _meta(best_dir, 4)["val_psnr_y"] == first["val_psnr_y"]
  import shutil

  shutil.rmtree(workdir / "checkpoints" / "4")
  # Other batches from step 2 on (another seed; no recompilation): another score.
  rerun = train.train_and_evaluate(_config(seed=1, **kw), str(workdir))
  assert rerun["step"] == 4 and rerun["val_psnr_y"] != first["val_psnr_y"]
  bar = _meta(workdir / "checkpoints", 2)["recovery"]["best_psnr"]
  assert sorted(os.listdir(best_dir)) == ["4"]
  want = rerun["val_psnr_y"] if rerun["val_psnr_y"] > bar else first["val_psnr_y"]
  assert _meta(best_dir, 4)["val_psnr_y"] == want
  # The latest checkpoint of step 4 exists again, with the bar it was validated against.
  assert _meta(workdir / "checkpoints", 4)["recovery"]["best_step"] in (2, 4)


@pytest.mark.slow  # compiles train steps (~10 s): out of the fast lane
def test_checkpoint_from_before_the_counters_resumes(tmp_path):
  # Write what older versions saved (no skipped / nonfinite_run / data_offset, no
  # 'recovery' meta) and resume from it.
  kw = {"data.val_source": "none", "checkpoint_every_steps": 2}
  train.train_and_evaluate(_config(num_train_steps=2, **kw), str(tmp_path / "new"))
  config = _config(num_train_steps=3, **kw)
  spec = models.spec_from_config(config.model)
  new = checkpoint.create_manager(str(tmp_path / "new" / "checkpoints"), async_save=False)
  mesh = parallel.create_mesh(jax.devices()[:1])
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  tx = steps.create_optimizer(config, steps.create_learning_rate_fn(config))
  template = train_state.state_template(spec, models.create_model(spec), tx, True)
  state = checkpoint.restore_state(new, 2, template, sharding)
  new.close()
  old = checkpoint.create_manager(str(tmp_path / "old" / "checkpoints"), async_save=False)
  old_state = {k: v for k, v in state.to_dict().items() if k not in train_state.COUNTERS}
  old.save(2, args=checkpoint.save_args(old_state, spec, {"step": 2, "data_position": 2}))
  old.wait_until_finished()
  old.close()
  result = train.train_and_evaluate(config, str(tmp_path / "old"))
  assert result["step"] == 3 and result["skipped_steps"] == 0 and result["rollbacks"] == 0
  meta = _meta(tmp_path / "old" / "checkpoints", 3)
  assert meta["recovery"]["data_offset"] == 0 and meta["data_position"] == 3
