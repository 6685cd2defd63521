"""dan_jax.runtime: TensorFlow never sees an accelerator, in every entry point; precisions."""

import os
import pathlib
import subprocess
import sys
import types
from unittest import mock

import pytest

from dan_jax import errors
from dan_jax import evaluate
from dan_jax import infer
from dan_jax import main as main_lib
from dan_jax import precision as precision_lib
from dan_jax import predict
from dan_jax import runtime

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _FakeConfig:
  """tf.config as seen on a GPU host: records set_visible_devices; can be 'started'."""

  def __init__(self, started=False):
    self.started, self.calls = started, []
    self.visible = {"GPU": ["GPU:0"], "TPU": [], "CPU": ["CPU:0"]}

  def set_visible_devices(self, devices, kind):
    if self.started and self.visible[kind] != list(devices):
      raise RuntimeError("Visible devices cannot be modified after being initialized")
    self.calls.append(kind)
    self.visible[kind] = list(devices)

  def get_visible_devices(self, kind):
    return self.visible[kind]


def _fake_tf(monkeypatch, started=False):
  fake = types.ModuleType("tensorflow")
  fake.config = _FakeConfig(started)
  monkeypatch.setitem(sys.modules, "tensorflow", fake)
  return fake.config


def test_hides_gpus_and_tpus(monkeypatch):
  config = _fake_tf(monkeypatch)
  assert runtime.hide_accelerators_from_tensorflow()
  assert config.calls == ["GPU", "TPU"] and config.visible["GPU"] == []


def test_tensorflow_already_on_a_gpu_is_a_warning_not_a_crash(monkeypatch, caplog):
  config = _fake_tf(monkeypatch, started=True)
  assert not runtime.hide_accelerators_from_tensorflow()
  assert config.visible["GPU"] == ["GPU:0"]
  assert "already started on GPU" in caplog.text


def test_not_imported_tensorflow_is_left_alone_when_asked(monkeypatch):
  monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
  with mock.patch.dict(sys.modules):
    assert runtime.hide_accelerators_from_tensorflow(import_tensorflow=False)
    assert "tensorflow" not in sys.modules


class _SetUp(Exception):  # noqa: N818  (a signal to stop, not an error)
  pass


def _sweep_main():
  sys.path.insert(0, str(ROOT / "launch"))
  try:
    import sweep
  finally:
    sys.path.pop(0)
  return sweep.main


@pytest.mark.parametrize("entry", ["main", "evaluate", "infer", "sweep"])
def test_every_entry_point_sets_up_first(entry, tmp_path):
  """Each command line calls runtime.setup_entry_point before it does anything else."""
  calls = {
    "main": lambda: main_lib.main(["dan_jax.main"]),
    "evaluate": lambda: evaluate.main(
      [
        "--checkpoint",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "out"),
        "--div2krk",
        str(tmp_path),
      ]
    ),
    "infer": lambda: infer.main(
      [
        "--checkpoint",
        str(tmp_path / "none"),
        "--input",
        str(tmp_path),
        "--output",
        str(tmp_path / "out"),
      ]
    ),
    "sweep": lambda: _sweep_main()(["--workdir", str(tmp_path / "sweep")]),
  }
  with mock.patch.object(runtime, "setup_entry_point", side_effect=_SetUp):
    with pytest.raises(_SetUp):
      calls[entry]()
  assert not (tmp_path / "out").exists() and not (tmp_path / "sweep").exists()


def test_real_tensorflow_sees_no_accelerator_after_set_up():
  code = (
    "import tensorflow as tf\n"
    "calls = []\n"
    "orig = tf.config.set_visible_devices\n"
    "tf.config.set_visible_devices = lambda d, k=None: (calls.append(k), orig(d, k))\n"
    "from dan_jax import runtime\n"
    "runtime.setup_entry_point()\n"
    "tf.constant(1.0)  # TF initialises its devices\n"
    "print(calls, sorted({d.device_type for d in tf.config.get_visible_devices()}))\n"
  )
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120
  ).stdout
  assert out.split("\n")[0] == "['GPU', 'TPU'] ['CPU']"


def test_precision_names():
  assert precision_lib.compute_dtype("bfloat16") == "bfloat16"
  assert precision_lib.compute_dtype("highest", "float32") == "float32"
  with pytest.raises(ValueError, match="highest, default, bfloat16"):
    precision_lib.check_precision("tf32")


def test_infer_precision_flag_refuses_unknown_values(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    infer.main(
      [
        "--checkpoint",
        str(tmp_path),
        "--input",
        str(tmp_path),
        "--output",
        str(tmp_path / "o"),
        "--precision",
        "fp16",
      ]
    )
  assert e.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err


def test_predictor_precisions():
  import numpy as np

  from dan_jax import models

  config = dict(
    version="DANv2",
    scale=2,
    nf=8,
    nb=1,
    ng=1,
    loops=2,
    kernel_size=11,
    code_len=10,
    estimator_nf=8,
    estimator_nb=1,
  )
  pca = np.linalg.qr(np.random.default_rng(0).normal(size=(121, 10)))[0]
  variables = models.init_variables(models.create_model(config), 0, pca)
  lr = np.random.default_rng(1).uniform(size=(12, 10, 3)).astype(np.float32)
  full = predict.Predictor(config, variables).predict(lr)
  half = predict.Predictor(config, variables, precision="bfloat16")
  assert half.spec.dtype == np.dtype("bfloat16") and half.num_devices == 1
  got = half.predict(lr)
  assert got.sr.dtype == np.float32
  assert 0 < np.abs(got.sr - full.sr).max() < 0.05  # bfloat16 ran, and stayed close
  with pytest.raises(errors.InferenceError, match="precision must be one of"):
    predict.Predictor(config, variables, precision="fp8")


def test_compilation_cache_dir_settings(monkeypatch, tmp_path):
  from dan_jax.errors import ConfigError

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert runtime.compilation_cache_dir("auto") == str(tmp_path / runtime.DEFAULT_CACHE_SUBDIR)
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert runtime.compilation_cache_dir("auto").startswith(os.path.expanduser("~/.cache/"))
  assert runtime.compilation_cache_dir("gs://bucket/cache") == "gs://bucket/cache"
  assert runtime.compilation_cache_dir("") == ""
  with pytest.raises(ConfigError, match="compilation_cache_dir"):
    runtime.compilation_cache_dir(None)
  assert runtime.enable_compilation_cache("") == ""


def test_compilation_cache_keeps_compiled_programs(tmp_path):
  import jax
  from jax.experimental.compilation_cache import compilation_cache
  import jax.numpy as jnp

  saved = {
    k: getattr(jax.config, k)
    for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  }
  try:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    assert runtime.enable_compilation_cache(str(tmp_path)) == str(tmp_path)
    jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.25)(jnp.ones(7)).block_until_ready()
    assert any(tmp_path.iterdir())
  finally:
    for k, v in saved.items():
      jax.config.update(k, v)
    compilation_cache.reset_cache()


def test_training_configs_cache_by_default():
  from dan_jax import config as config_lib

  assert config_lib.load("configs/x4.py:dcls").compilation_cache_dir == "auto"
  assert config_lib.load("configs/test.py").compilation_cache_dir == ""
