"""Tests of dan_jax.train: learning, sharding, resumption, logs, NaN handling, errors.

Everything runs the tiny configs/test.py (a ~7k-parameter DANv2 on 16x16 crops of the demo
photos); jitted steps are shared between runs of the same setup, so most runs here reuse
one compilation.
"""

import glob
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf

from dan_jax import checkpoint
from dan_jax import config as config_lib
from dan_jax import errors
from dan_jax import image_sources
from dan_jax import input_pipeline
from dan_jax import models
from dan_jax import parallel
from dan_jax import steps
from dan_jax import train
from dan_jax import train_config
from dan_jax import train_state

ROOT = pathlib.Path(__file__).parents[1]
TEST_CONFIG = str(ROOT / "configs" / "test.py")


def _config(**overrides):
  """configs/test.py with dotted overrides, e.g. _config(**{"data.source": "tfds"})."""
  return config_lib.load_with_overrides(TEST_CONFIG, overrides)


def _params(workdir, use_ema=False):
  _, variables, step = checkpoint.load_model(str(workdir), use_ema=use_ema)
  return variables["params"], step


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _events(workdir):
  """{tag: (plugin, [(step, value or encoded image)])} from the TensorBoard event files."""
  out = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        plugin = v.metadata.plugin_data.plugin_name
        value = tf.make_ndarray(v.tensor)
        if plugin == "scalars":
          value = float(value)
        out.setdefault(v.tag, (plugin, []))[1].append((event.step, value))
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """30 steps of the tiny config, validating and logging (shared by several tests)."""
  workdir = tmp_path_factory.mktemp("trained")
  config = _config(
    num_train_steps=30,
    log_every_steps=5,
    eval_every_steps=15,
    image_every_steps=15,
    checkpoint_every_steps=10,
    keep_checkpoints=2,
  )
  result = train.train_and_evaluate(config, str(workdir))
  return config, workdir, result


# ----------------------------------------------------------------------------- learning


def test_loss_decreases(trained):
  _, _, result = trained
  assert result["step"] == 30
  # Mean loss of steps 26-30 against that of steps 1-5 (the untrained network's output
  # is far from the image).
  assert result["train_loss"] < 0.6 * result["first_train_loss"], result
  for key in ("val_psnr_y", "val_ssim_y", "bicubic_psnr_y", "bicubic_ssim_y"):
    assert np.isfinite(result[key])
  assert result["steps_per_sec"] > 0


def test_tensorboard_events_hold_scalars_and_images(trained):
  config, workdir, _ = trained
  events = _events(str(workdir))
  for i in range(config.model.loops):
    assert events[f"train/l_pix{i}"][0] == "scalars"
    assert [s for s, _ in events[f"train/l_ker{i}"][1]] == [5, 10, 15, 20, 25, 30]
  for tag in (
    "train/loss",
    "train/learning_rate",
    "train/grad_norm",
    "train/steps_per_sec",
    "train/samples_per_sec",
    "val/psnr_y",
    "val/ssim_y",
    "val/bicubic_psnr_y",
    "val/bicubic_ssim_y",
  ):
    assert events[tag][0] == "scalars", tag
  assert [s for s, _ in events["val/psnr_y"][1]] == [15, 30]
  # MultiStep: lr 3e-3 for steps 1-3 (configs/test.py milestone 3), then halved.
  assert events["train/learning_rate"][1][-1][1] == pytest.approx(1.5e-3)
  triplet = events["val/lr_sr_hr/chelsea"]
  kernels = events["val/kernel_est_true/chelsea"]
  assert triplet[0] == kernels[0] == "images"
  assert [s for s, _ in triplet[1]] == [15, 30]
  # The image summary holds (width, height, PNG bytes...): LR | SR | HR side by side.
  w, h = (int(x) for x in triplet[1][-1][1][:2])
  assert (h, w) == (32, 96)
  png = tf.io.decode_png(triplet[1][-1][1][2]).numpy()
  assert png.shape == (32, 96, 3) and png.std() > 0


def test_checkpoints_and_images_written(trained):
  config, workdir, result = trained
  steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert steps == [20, 30]  # keep_checkpoints = 2
  best = [int(d) for d in os.listdir(workdir / "checkpoints_best") if d.isdigit()]
  assert len(best) == 1 and best[0] in (15, 30)
  model_config, variables, step = checkpoint.load_model(str(workdir))
  assert step == 30 and model_config.version == "DANv2" and model_config.scale == 2
  checkpoint.check_variables(variables, config.model)
  meta = json.loads((workdir / "checkpoints" / "30" / "meta" / "metadata").read_text())
  assert meta["step"] == meta["data_position"] == 30
  assert json.loads(meta["config"])["num_train_steps"] == 30
  for suffix in ("sr", "bicubic", "lr", "hr"):
    assert (workdir / "val" / f"chelsea_{suffix}.png").is_file()
  # The saved SR image is the one the final validation scored.
  from dan_jax import metrics

  sr = tf.io.decode_png((workdir / "val" / "chelsea_sr.png").read_bytes()).numpy()
  hr = tf.io.decode_png((workdir / "val" / "chelsea_hr.png").read_bytes()).numpy()
  assert metrics.psnr_y(sr, hr, crop_border=2) == pytest.approx(result["val_psnr_y"])


# ----------------------------------------------------------------------------- loss / step


def _tiny(version="DANv2"):
  config = _config()
  if version == "DANv1":
    config.model.update(version="DANv1", nf=16, estimator_nf=32)
  spec = models.spec_from_config(config.model)
  model = models.create_model(spec)
  rng = np.random.default_rng(0)
  k, b = spec.kernel_size, 2
  pca = rng.normal(size=(k * k, spec.code_len)).astype(np.float32) * 0.2
  variables = models.init_variables(model, 0, pca)
  kernel = rng.dirichlet(np.ones(k * k), size=b).astype(np.float32)
  batch = {
    "lr": rng.uniform(size=(b, 8, 8, 3)).astype(np.float32),
    "hr": rng.uniform(size=(b, 16, 16, 3)).astype(np.float32),
    "kernel": kernel.reshape(b, k, k),
    "code": kernel @ pca,
  }
  return model, variables, batch


@pytest.mark.slow
@pytest.mark.parametrize("version", ["DANv2", "DANv1"])
def test_cheap_gradient_equals_full_gradient(version):
  """Kernel term on the kernel (v2) or on the code (v1); same loss, same gradient."""
  model, variables, batch = _tiny(version)

  def value_and_grad(cheap, supervise_all=False):
    fn = lambda p: steps.compute_losses(
      model,
      p,
      variables["pca"],
      batch,
      kernel_loss_weight=0.5,
      cheap_gradient=cheap,
      supervise_all=supervise_all,
    )
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(variables["params"])

  (loss, aux), grads = value_and_grad(True)
  (full_loss, full_aux), full_grads = value_and_grad(False)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
  np.testing.assert_allclose(aux["l_pix"], full_aux["l_pix"], rtol=1e-5)
  np.testing.assert_allclose(aux["l_ker"], full_aux["l_ker"], rtol=1e-5)
  np.testing.assert_allclose(loss, aux["l_pix"][-1] + 0.5 * aux["l_ker"][-1], rtol=1e-6)
  for g, h in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(full_grads)):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-6)
  assert sum(float(np.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads)) > 0
  if version == "DANv1":
    return
  # Every iteration supervised: the sum of the per-iteration losses.
  (all_loss, all_aux), _ = value_and_grad(True, supervise_all=True)
  np.testing.assert_allclose(all_loss, np.sum(all_aux["l_pix"] + 0.5 * all_aux["l_ker"]), rtol=1e-5)


def test_learning_rate_schedule_is_multistep():
  config = _config(learning_rate=4e-4, lr_milestones=(2, 5, 5), lr_gamma=0.5)
  fn = steps.create_learning_rate_fn(config)
  assert [float(fn(s)) for s in (0, 1, 2, 4, 5, 9)] == pytest.approx(
    [4e-4, 4e-4, 2e-4, 2e-4, 5e-5, 5e-5]
  )


def test_init_checkpoint_starts_from_its_weights(trained, tmp_path):
  _, trained_dir, _ = trained
  config = _config(
    num_train_steps=1, init_checkpoint=str(trained_dir), **{"data.val_source": "none"}
  )
  train.train_and_evaluate(config, str(tmp_path / "finetune"))
  _, start, _ = checkpoint.load_model(str(trained_dir), use_ema=True)
  _, after, step = checkpoint.load_model(str(tmp_path / "finetune"), use_ema=False)
  assert step == 1
  np.testing.assert_array_equal(after["pca"]["matrix"], start["pca"]["matrix"])
  # One Adam step moves each weight by at most about the learning rate (3e-3).
  for x, y in zip(
    jax.tree_util.tree_leaves(start["params"]), jax.tree_util.tree_leaves(after["params"])
  ):
    assert np.abs(x - y).max() <= 3.1e-3


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params(tmp_path):
  config = _config(num_train_steps=2, **{"model.dtype": "bfloat16", "data.val_source": "none"})
  result = train.train_and_evaluate(config, str(tmp_path / "bf16"))
  assert np.isfinite(result["train_loss"])
  params, _ = _params(tmp_path / "bf16")
  assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {np.dtype(np.float32)}


# ----------------------------------------------------------------------------- resume


@pytest.mark.slow  # ~6-18 s on 2 cores: out of the fast lane
def test_resumed_run_matches_uninterrupted_run(tmp_path):
  # configs/test.py has EMA on, so its state must be resumed too. No validation (quick).
  assert _config().ema_decay > 0
  kw = {"data.val_source": "none", "checkpoint_every_steps": 0}
  straight = train.train_and_evaluate(_config(num_train_steps=6, **kw), str(tmp_path / "straight"))
  first = train.train_and_evaluate(_config(num_train_steps=3, **kw), str(tmp_path / "resumed"))
  assert first["step"] == 3
  resumed = train.train_and_evaluate(_config(num_train_steps=6, **kw), str(tmp_path / "resumed"))
  assert straight["step"] == resumed["step"] == 6
  assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)
  for use_ema in (False, True):
    a, step_a = _params(tmp_path / "straight", use_ema)
    b, step_b = _params(tmp_path / "resumed", use_ema)
    assert step_a == step_b == 6
    _assert_trees_equal(a, b)
  ema, _ = _params(tmp_path / "straight", use_ema=True)
  raw, _ = _params(tmp_path / "straight")
  assert not np.array_equal(
    ema["alternate"]["restorer"]["head_lr"]["kernel"],
    raw["alternate"]["restorer"]["head_lr"]["kernel"],
  )
  # A run that is already complete trains nothing and reports the same step.
  again = train.train_and_evaluate(_config(num_train_steps=6, **kw), str(tmp_path / "resumed"))
  assert again["step"] == 6 and "train_loss" not in again


def test_checkpoint_of_another_model_is_not_resumed(tmp_path):
  workdir = tmp_path / "run"
  train.train_and_evaluate(_config(num_train_steps=1, **{"data.val_source": "none"}), str(workdir))
  before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
  other = _config(num_train_steps=2, **{"model.scale": 4, "data.val_source": "none"})
  with pytest.raises(errors.TrainingError, match=r"DANv2 x2 .* DANv2 x4 .*refusing"):
    train.train_and_evaluate(other, str(workdir))
  assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


# ----------------------------------------------------------------------------- NaN


def test_nan_batch_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
  real = input_pipeline.create_train_iterator

  def poisoned(config, pca, *, start_step=0, **kw):
    for i, batch in enumerate(real(config, pca, start_step=start_step, **kw), start_step):
      if i == 4:  # the batch of step 5
        batch = dict(batch, hr=np.full_like(batch["hr"], np.nan))
      yield batch

  monkeypatch.setattr(input_pipeline, "create_train_iterator", poisoned)
  workdir = tmp_path / "run"
  config = _config(
    num_train_steps=8, checkpoint_every_steps=2, keep_checkpoints=10, **{"data.val_source": "none"}
  )
  result = train.train_and_evaluate(config, str(workdir))
  assert result["step"] == 8 and result["skipped_steps"] == 1
  assert result["rollbacks"] == 0 and np.isfinite(result["train_loss"])
  # Step 5 changed nothing; step 6 trained again. Every checkpoint is finite.
  for step in (4, 6, 8):
    params, _ = _params(workdir / "checkpoints" / str(step))
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
  events = _events(workdir)
  assert dict(events["train/skipped_in_window"][1])[5] == 1.0
  assert dict(events["train/skipped_steps"][1])[8] == 1.0
  assert np.isfinite(dict(events["train/loss"][1])[6])


# ----------------------------------------------------------------------------- data sources


def test_tfds_source_trains(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = _config(
    num_train_steps=2,
    **{"data.source": "tfds", "data.tfds_name": "div2k", "data.val_source": "none"},
  )
  with tfds.testing.mock_data(num_examples=8):
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 2 and np.isfinite(result["train_loss"])


def _tiny_official(name="x4"):
  """An official config (data.source "auto", no train_dir) shrunk to a few seconds."""
  return config_lib.load_with_overrides(
    str(ROOT / "configs" / f"{name}.py"),
    {
      "model.nf": 8,
      "model.nb": 1,
      "model.ng": 1,
      "model.estimator_nf": 8,
      "model.estimator_nb": 1,
      "model.loops": 2,
      "model.kernel_size": 11,
      "model.code_len": 5,
      "data.hr_crop": 16,
      "batch_size": 2,
      "degradation.pca_samples": 500,
      "data.val_source": "none",
      "num_train_steps": 1,
      "data.num_parallel_calls": 2,
    },
  )


@pytest.mark.slow
def test_official_config_without_folder_trains_on_tfds_div2k(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = _tiny_official()
  assert config.data.source == "auto" and image_sources.train_source(config.data) == "tfds"
  config.data.train_dir = "/data/DIV2K_train_HR"
  assert image_sources.train_source(config.data) == "folder"
  config.data.train_dir = ""
  with tfds.testing.mock_data(num_examples=4):
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 1 and np.isfinite(result["train_loss"])


def test_tfds_download_without_internet_names_cause_and_folder(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  requests = pytest.importorskip("requests")

  def offline(*args, **kwargs):
    raise requests.exceptions.ConnectionError(
      "HTTPSConnectionPool(host='data.vision.ee.ethz.ch', port=443): Max retries exceeded"
    )

  # What tfds' download manager raises on a machine without internet (after its retries).
  monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", offline)
  config = _tiny_official()
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  pca = np.eye(11 * 11, 5, dtype=np.float32)
  with pytest.raises(errors.DataError) as e:
    input_pipeline.create_train_iterator(config, pca, process_index=0, process_count=1)
  message = str(e.value)
  assert "\n" not in message and "no internet" in message and "ConnectionError" in message
  assert "--config.data.train_dir=FOLDER" in message and "div2k" in message


# ----------------------------------------------------------------------------- devices


_SHARDED_RUN = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    from dan_jax import config as config_lib, parallel, train
    from dan_jax.errors import TrainingError
    assert jax.device_count() == 8, jax.devices()
    config = config_lib.load(sys.argv[1])
    config.num_train_steps = 2
    config.data.val_source = "none"
    result = train.train_and_evaluate(config, sys.argv[2])
    mesh = parallel.create_mesh()
    errors = []
    for batch_size in (12, 4):
      try:
        train.check_batch_size(batch_size, mesh)
      except TrainingError as e:
        errors.append(str(e))
    print("RESULT " + json.dumps({"loss": result["train_loss"], "errors": errors}))
""")


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", _SHARDED_RUN, TEST_CONFIG, str(tmp_path / "eight")],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  eight = json.loads(line[len("RESULT ") :])
  assert len(eight["errors"]) == 2
  assert "config.batch_size = 12 does not divide over the 8 devices" in eight["errors"][0]

  one = train.train_and_evaluate(
    _config(num_train_steps=2, **{"data.val_source": "none"}), str(tmp_path / "one")
  )
  assert one["train_loss"] == pytest.approx(eight["loss"], rel=1e-5)
  a, _ = _params(tmp_path / "one")
  b, _ = _params(tmp_path / "eight")
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
  "name,scale,kernel,sig_max",
  [
    ("x2", 2, 21, 4.0),
    ("x3", 3, 21, 4.0),
    ("x4", 4, 21, 4.0),
    ("x2_setting2", 2, 11, 5.0),
    ("x4_setting2", 4, 31, 5.0),
  ],
)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_config_variants_follow_the_official_recipes(name, scale, kernel, sig_max, version):
  c = config_lib.load(str(ROOT / "configs" / f"{name}.py:{version}"))
  spec = train_config.validate_config(c)
  assert spec.version == {"v1": "DANv1", "v2": "DANv2"}[version] and spec.scale == scale
  assert (spec.nf, spec.loops, spec.code_len) == (64, 4, 10)
  assert (spec.nb, spec.ng) == ((40, 5) if version == "v1" else (10, 5))
  assert spec.kernel_size == c.degradation.kernel_size == kernel
  assert c.degradation.sig_max == sig_max and c.degradation.random_disturb == (sig_max == 5)
  assert c.batch_size == 64 and c.data.hr_crop == 64 * scale
  assert c.data.use_flip and c.data.use_rot
  assert (c.learning_rate, c.adam_b1, c.adam_b2, c.lr_gamma) == (4e-4, 0.9, 0.99, 0.5)
  if version == "v2" and "setting2" not in name:
    assert c.num_train_steps == 800_000
    assert tuple(c.lr_milestones) == (200_000, 400_000, 600_000)
  else:
    assert (c.num_train_steps, tuple(c.lr_milestones)) == (400_000, (200_000,))
  # The default version is v2.
  default = config_lib.load(str(ROOT / "configs" / f"{name}.py"))
  assert default.model.version == "DANv2"


def test_demo_and_test_configs_validate():
  for name in ("demo", "test", "default"):
    c = config_lib.load(str(ROOT / "configs" / f"{name}.py"))
    train_config.validate_config(c)
    assert c.data.source == ("auto" if name == "default" else "demo")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("model.scale", 5, "config.model.scale must be one of"),
    ("learning_rate", -1.0, "config.learning_rate must be a positive number"),
    ("lr_milestones", (5, 2), "config.lr_milestones must be increasing"),
    ("ema_decay", 1.0, r"config.ema_decay must be in \[0, 1\)"),
    ("batch_size", 0, "config.batch_size must be a positive integer"),
    ("degradation.kernel_size", 9, "config.degradation.kernel_size must be the model's"),
    ("max_rollbacks", -1, "config.max_rollbacks must be a non-negative integer"),
    ("collapse_psnr_drop", float("nan"), "config.collapse_psnr_drop must be a non-negative"),
    ("debug.nan_at_steps", (0, 3), "config.debug.nan_at_steps must be positive step"),
  ],
)
def test_bad_config_values_are_one_clear_error(tmp_path, field, value, message):
  config = _config()
  parent = config
  *path, name = field.split(".")
  for part in path:
    parent = parent[part]
  if name == "kernel_size":  # tied to model.kernel_size by a reference: untie it
    del parent["kernel_size"]
  parent[name] = value
  with pytest.raises(errors.TrainingError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_unwritable_workdir_is_an_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(errors.TrainingError, match="cannot create workdir"):
    train.train_and_evaluate(_config(), str(blocker / "run"))
  with pytest.raises(errors.TrainingError, match="is not a folder"):
    train.train_and_evaluate(_config(), str(blocker))


# ----------------------------------------------------------------------------- precision


@pytest.mark.slow  # compiles train steps (~10 s): out of the fast lane
@pytest.mark.parametrize("version", ["DANv1", "DANv2", "DCLS"])
def test_xla_conv_gradient_equals_gemm_in_a_train_step(version):
  """The accelerators' path (conv_backward 'xla') against the CPU's GEMM gradient, in a
  full train step (loss, gradient norm and the updated parameters)."""
  if version == "DCLS":
    base = config_lib.load_with_overrides(
      TEST_CONFIG + ":dcls", {"model.nb": 2, "model.ng": 2, "model.remat": "groups"}
    )
  else:
    base = _config(
      **(
        {}
        if version == "DANv2"
        else {"model.version": "DANv1", "model.nf": 16, "model.estimator_nf": 32}
      )
    )
  rng = np.random.default_rng(0)
  k, s = base.model.kernel_size, base.model.scale
  batch = {
    "lr": rng.uniform(size=(2, 12, 10, 3)).astype(np.float32),
    "hr": rng.uniform(size=(2, 12 * s, 10 * s, 3)).astype(np.float32),
    "kernel": rng.dirichlet(np.ones(k * k), 2).reshape(2, k, k).astype(np.float32),
    "code": rng.normal(size=(2, base.model.code_len)).astype(np.float32),
  }
  if version == "DCLS":  # the kernel loss's training pair
    batch["lr_clean"] = batch["lr"]
    batch["lr_blurred"] = np.clip(batch["lr"] + 0.01, 0, 1).astype(np.float32)
  pca = np.linalg.qr(rng.normal(size=(k * k, base.model.code_len)))[0].astype(np.float32)
  results = {}
  for path in ("gemm", "xla"):
    base.model.conv_backward = path
    model = models.create_model(models.spec_from_config(base.model))
    variables = models.init_variables(model, 0, pca)
    # SGD with rate 1: the step's update is minus the gradient.
    step = steps.make_train_step(model, optax.sgd(1.0), parallel.create_mesh(), precision="highest")
    state = train_state.create_train_state(variables, optax.sgd(1.0))
    new, m = step(
      parallel.to_global(state, train.NamedSharding(parallel.create_mesh(), train.P())), batch
    )
    grads = jax.tree_util.tree_map(
      lambda a, b: np.asarray(a) - np.asarray(b), variables["params"], jax.device_get(new.params)
    )
    results[path] = (grads, float(m["loss"]), float(m["grad_norm"]))
  (g_a, loss_a, norm_a), (g_b, loss_b, norm_b) = results["gemm"], results["xla"]
  assert loss_a == pytest.approx(loss_b, rel=1e-6)
  assert norm_a == pytest.approx(norm_b, rel=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(g_a), jax.tree_util.tree_leaves(g_b)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * np.abs(a).max() + 1e-9)


def test_gemm_conv_backward_is_refused_off_cpu(monkeypatch):
  config = _config(**{"model.conv_backward": "gemm"})
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(errors.TrainingError, match="'gemm' is for the CPU only"):
    train_config.validate_config(config)
  model = models.create_model(models.spec_from_config(config.model))
  with pytest.raises(ValueError, match="'gemm' is for the CPU only"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))


def test_matmul_precision_reaches_the_compiled_step():
  config = _config()
  spec = models.spec_from_config(config.model)
  model = models.create_model(spec)
  mesh = parallel.create_mesh()
  tx = optax.sgd(0.1)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  state = train_state.create_train_state(
    jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), variables), tx
  )
  batch = {
    "lr": np.zeros((8, 8, 8, 3), np.float32),
    "hr": np.zeros((8, 16, 16, 3), np.float32),
    "kernel": np.zeros((8, 7, 7), np.float32),
    "code": np.zeros((8, 4), np.float32),
  }
  texts = {
    p: steps.make_train_step(model, tx, mesh, precision=p).lower(state, batch).as_text()
    for p in ("default", "highest")
  }
  assert "HIGHEST" in texts["highest"] and "HIGHEST" not in texts["default"]
  with pytest.raises(errors.TrainingError, match="matmul_precision"):
    train_config.validate_config(_config(matmul_precision="bfloat16"))
