"""The plain SR baseline family: a method added as one module (models/baseline.py), a line
in the family table and config arguments, used by every part of the project unchanged."""

import pathlib

import numpy as np
import pytest
from skimage import data

from dan_jax import checkpoint
from dan_jax import config as config_lib
from dan_jax import errors
from dan_jax import models
from dan_jax import predict

from test_evaluate import _make_div2krk

ROOT = pathlib.Path(__file__).parents[1]
TINY = dict(version="baseline", scale=2, nf=8, nb=2, kernel_size=7, code_len=4)


def _config(name):
  return config_lib.load(str(ROOT / "configs" / name))


def test_baseline_configs_and_model():
  from dan_jax import train_config

  x4 = train_config.validate_config(_config("x4.py:baseline"))
  assert (x4.version, x4.scale, x4.nf, x4.nb, x4.loops) == ("baseline", 4, 64, 16, 1)
  demo = train_config.validate_config(_config("demo.py:baseline"))
  assert (demo.version, demo.scale, demo.nf, demo.nb, demo.loops) == ("baseline", 2, 32, 8, 1)
  with pytest.raises(ValueError, match="loops must be 1"):
    models.create_model(dict(TINY, loops=2))
  model = models.create_model(TINY)
  variables = models.init_variables(model, 0, np.zeros((49, 4), np.float32))
  out = model.apply(variables, np.zeros((2, 9, 10, 3), np.float32))
  assert out.sr.shape == (1, 2, 18, 20, 3) and out.kernel is None
  assert out.code.shape == (1, 2, 4) and not np.any(out.code)
  fam = models.family("baseline")
  assert not fam.has_kernel(model.spec) and not fam.kernel_loss(out, {}).any()


def test_baseline_tiles_equal_whole_images():
  model = models.create_model(TINY)
  variables = models.init_variables(model, 0, np.zeros((49, 4), np.float32))
  lr = data.astronaut()[100:140, 200:236].astype(np.float32) / 255.0
  whole = predict.Predictor(TINY, variables).predict(lr)
  tiled = predict.Predictor(TINY, variables, tile=24, batch_size=4)
  assert tiled.tiled_is_exact and tiled.uses_tiles(*lr.shape[:2]) and not tiled.has_kernel
  got = tiled.predict(lr)
  np.testing.assert_allclose(got.sr, whole.sr, atol=1e-5)
  assert got.kernel is None and whole.kernel is None


def test_sweep_takes_the_baseline_as_a_method(tmp_path, capsys):
  import sys

  sys.path.insert(0, str(ROOT / "launch"))
  import sweep

  status = sweep.main(
    [
      f"--config={ROOT}/configs/test.py",
      f"--workdir={tmp_path}",
      "--methods=v2,baseline",
      "--train_spaces=iso",
      "--mode=plan",
    ]
  )
  assert status == 0
  out = capsys.readouterr().out
  assert "configs/test.py:baseline" in out and "train_baseline_iso" in out


@pytest.mark.slow  # ~40 s on 2 cores: trains, evaluates, exports and infers a tiny model
def test_baseline_trains_evaluates_infers_and_exports(tmp_path, capsys):
  from dan_jax import ensemble
  from dan_jax import evaluate
  from dan_jax import export
  from dan_jax import exported
  from dan_jax import infer
  from dan_jax import train

  c = _config("test.py:baseline")
  c.num_train_steps = 2
  work = tmp_path / "run"
  result = train.train_and_evaluate(c, str(work))
  assert result["step"] == 2 and np.isfinite(result["train_loss"])
  model_config, variables, step = checkpoint.load_model(str(work))
  assert model_config.version == "baseline" and step == 2

  # Evaluation: Y-PSNR of every image, no kernel metric.
  _make_div2krk(tmp_path / "krk", numbers=(1,))
  rc = evaluate.main(
    ["--checkpoint", str(work), "--div2krk", str(tmp_path / "krk"), "--out", str(tmp_path / "e")]
  )
  assert rc == 0, capsys.readouterr().err
  capsys.readouterr()

  # Inference, whole and tiled: the same SR image, no kernel file.
  src = tmp_path / "in.png"
  from PIL import Image

  Image.fromarray(data.chelsea()[40:80, 100:136]).save(src)
  for flags, out_dir in (([], "whole"), (["--tile", "24"], "tiled")):
    rc = infer.main(
      ["--checkpoint", str(work), "--input", str(src), "--output", str(tmp_path / out_dir)] + flags
    )
    assert rc == 0, capsys.readouterr().err
  whole = np.asarray(Image.open(tmp_path / "whole" / "in_x2.png"), np.int32)
  tiled = np.asarray(Image.open(tmp_path / "tiled" / "in_x2.png"), np.int32)
  assert whole.shape == (80, 72, 3) and np.abs(whole - tiled).max() <= 1
  assert not (tmp_path / "whole" / "in_x2_kernel.npy").exists()

  # StableHLO export, run without the model code.
  manifest = export.export(str(work), str(tmp_path / "x"), ["stablehlo"], platforms=["cpu"])
  assert "kernel" not in manifest["outputs"]
  artifact = exported.ExportedPredictor(str(tmp_path / "x"))
  lr = data.coffee()[40:64, 100:130].astype(np.float32) / 255.0
  want = predict.Predictor(model_config, variables).predict(lr)
  np.testing.assert_allclose(artifact.predict(lr).sr, want.sr, atol=1e-5)
  assert not artifact.has_kernel
  # Self-ensemble wraps the artifact as it wraps the model.
  ensembled = ensemble.SelfEnsemble(artifact).predict(lr)
  want = predict.Predictor(model_config, variables, self_ensemble=True).predict(lr)
  np.testing.assert_allclose(ensembled.sr, want.sr, atol=1e-5)

  with pytest.raises(errors.ConversionError, match="no official weights"):
    from dan_jax import convert

    convert.params_from_torch({}, model_config)
