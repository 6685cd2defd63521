"""Export: every format written, loaded back by its own runtime and equal to model.apply."""

import json
import shutil
import sys

from etils import epath
import jax
import numpy as np
from PIL import Image
import pytest
from skimage import data

from dan_jax import checkpoint
from dan_jax import errors
from dan_jax import export
from dan_jax import exported
from dan_jax import infer
from dan_jax import models
from dan_jax import predict
from dan_jax import prediction

V2 = dict(
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
V1 = dict(
  version="DANv1",
  scale=2,
  nf=16,
  nb=1,
  loops=2,
  kernel_size=11,
  code_len=10,
  estimator_nf=32,
  estimator_nb=1,
)


def _variables(config, seed=0):
  pca = np.linalg.qr(np.random.default_rng(seed).normal(size=(121, 10)))[0]
  return models.init_variables(models.create_model(config), seed, pca)


def _ckpt(tmp_path_factory, name, config):
  d = tmp_path_factory.mktemp(name)
  checkpoint.save_model(str(d), _variables(config), config)
  return str(d)


@pytest.fixture(scope="module")
def ckpt_v2(tmp_path_factory):
  return _ckpt(tmp_path_factory, "ckpt_v2", V2)


@pytest.fixture(scope="module")
def exported_v2(tmp_path_factory, ckpt_v2):
  """StableHLO + SavedModel of the tiny DANv2 (both symbolic in batch, height, width)."""
  out = tmp_path_factory.mktemp("export_v2")
  manifest = export.export(ckpt_v2, str(out), ["stablehlo", "savedmodel"], platforms=["cpu"])
  return str(out), manifest


def _one_error_line(err):
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


def _check_manifest(manifest, formats, tolerance=1e-3):
  for fmt in formats:
    a = manifest["artifacts"][fmt]
    assert 0 <= max(a["max_rel_diff"].values()) <= tolerance == a["tolerance"]
    assert a["bytes"] > 1000
    shapes = a["checked_input_shapes"]
    assert len(shapes) == 2
    if a["symbolic"]:  # two sizes, and batch 1 and 2
      assert shapes[0][1:3] != shapes[1][1:3] and {shapes[0][0], shapes[1][0]} == {1, 2}


@pytest.mark.slow
def test_stablehlo_and_savedmodel_symbolic_shapes(exported_v2, ckpt_v2):
  out, manifest = exported_v2
  _check_manifest(manifest, ["stablehlo", "savedmodel"])
  on_disk = json.loads(open(f"{out}/manifest.json").read())
  assert on_disk["model_config"]["version"] == "DANv2"
  assert on_disk["input"]["dtype"] == "float32" and on_disk["input"]["layout"] == "NHWC"
  assert set(on_disk["outputs"]) == {"sr", "code", "kernel"}
  assert on_disk["versions"]["jax"] == jax.__version__
  # A third size, not among the checked ones: still the model's result.
  model_config, variables, _ = checkpoint.load_model(ckpt_v2)
  lr = (data.chelsea()[:13, :21] / 255.0).astype(np.float32)[None]
  want = models.create_model(model_config).apply(variables, lr)
  for fmt in ("stablehlo", "savedmodel"):
    got = export.load_runner(fmt, epath.Path(out) / export.FORMATS[fmt].file)(lr)
    assert got["sr"].shape == (1, 26, 42, 3)
    np.testing.assert_allclose(got["sr"], want.sr[-1], atol=1e-5)
    np.testing.assert_allclose(got["kernel"], want.kernel[-1], atol=1e-6)


@pytest.mark.slow
def test_tflite_and_onnx_danv1_uint8(tmp_path_factory):
  ckpt = _ckpt(tmp_path_factory, "ckpt_v1", V1)
  out = tmp_path_factory.mktemp("export_v1")
  manifest = export.export(ckpt, str(out), ["tflite", "onnx"], size=(14, 18), input_dtype="uint8")
  _check_manifest(manifest, ["tflite", "onnx"])
  assert manifest["artifacts"]["tflite"]["input_shape"] == [1, 14, 18, 3]
  assert not manifest["artifacts"]["tflite"]["symbolic"]
  assert manifest["artifacts"]["onnx"]["symbolic"]
  assert set(manifest["outputs"]) == {"sr", "code"}  # DANv1 estimates a code only
  assert manifest["input"]["dtype"] == "uint8" and manifest["input"]["range"] == [0, 255]


@pytest.mark.slow
def test_infer_exported_equals_checkpoint(tmp_path, exported_v2, ckpt_v2, capsys):
  out, _ = exported_v2
  src = tmp_path / "cat.png"
  Image.fromarray(data.chelsea()[40:70, 100:145]).save(src)
  assert (
    infer.main(["--exported", out, "--input", str(src), "--output", str(tmp_path / "a")]) == 0
  ), capsys.readouterr().err
  assert (
    infer.main(["--checkpoint", ckpt_v2, "--input", str(src), "--output", str(tmp_path / "b")]) == 0
  ), capsys.readouterr().err
  a, b = (np.asarray(Image.open(tmp_path / d / "cat_x2.png")) for d in "ab")
  assert a.shape == (60, 90, 3)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(
    np.load(tmp_path / "a" / "cat_x2_kernel.npy"),
    np.load(tmp_path / "b" / "cat_x2_kernel.npy"),
    atol=1e-7,
  )
  capsys.readouterr()
  assert (
    infer.main(
      ["--exported", out, "--tile", "16", "--input", str(src), "--output", str(tmp_path / "c")]
    )
    == 2
  )
  assert "cannot be used with --exported" in _one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_exported_predictor_and_predictor_share_one_interface(exported_v2, ckpt_v2):
  model_config, variables, _ = checkpoint.load_model(ckpt_v2)
  ours = predict.Predictor(model_config, variables)
  artifact = exported.ExportedPredictor(exported_v2[0], batch_size=2)  # 3 images: 2 calls
  lrs = (
    np.stack(
      [data.chelsea()[40:64, 100:130], data.coffee()[40:64, 100:130], data.astronaut()[:24, :30]]
    ).astype(np.float32)
    / 255.0
  )
  for predictor in (ours, artifact):
    assert isinstance(predictor, prediction.SRPredictor)
    assert predictor.scale == 2 and predictor.has_kernel
  got, want = artifact.predict_batch(lrs), ours.predict_batch(lrs)
  assert len(got) == len(want) == 3
  for g, w in zip(got, want):
    np.testing.assert_allclose(g.sr, w.sr, atol=1e-5)
    np.testing.assert_allclose(g.kernel, w.kernel, atol=1e-6)
  np.testing.assert_array_equal(artifact.predict(lrs[1]).sr, got[1].sr)


@pytest.mark.slow
def test_failed_check_removes_only_that_artifact(tmp_path, exported_v2, ckpt_v2, monkeypatch):
  out = tmp_path / "out"
  shutil.copytree(exported_v2[0], out)
  load = export.load_runner

  def off_by_half(fmt, path):  # an artifact whose runtime gives a wrong SR image
    run = load(fmt, path)
    return lambda x: {k: 2 * v + 1 if k == "sr" else v for k, v in run(x).items()}

  monkeypatch.setattr(export, "load_runner", off_by_half)
  with pytest.raises(errors.ExportError, match="differs from model.apply by"):
    export.export(ckpt_v2, str(out), ["stablehlo"], platforms=["cpu"], overwrite=True)
  assert not (out / "dan.stablehlo").exists()
  assert (out / "savedmodel" / "saved_model.pb").exists()
  assert "savedmodel" in json.loads((out / "manifest.json").read_text())["artifacts"]


def test_bad_input_is_one_error_line(tmp_path, capsys):
  out = tmp_path / "out"
  assert export.main(["--checkpoint", str(tmp_path / "nope"), "--out", str(out)]) == 2
  assert "no checkpoint" in _one_error_line(capsys.readouterr().err)
  assert (
    export.main(["--checkpoint", str(tmp_path), "--out", str(out), "--format", "stablehlo,coreml"])
    == 2
  )
  assert "unsupported format(s) ['coreml']" in _one_error_line(capsys.readouterr().err)
  assert export.main(["--checkpoint", str(tmp_path), "--out", str(out), "--format", "tflite"]) == 2
  assert "--size HxW" in _one_error_line(capsys.readouterr().err)
  assert (
    export.main(
      ["--checkpoint", str(tmp_path), "--out", str(out), "--format", "tflite", "--size", "12by5"]
    )
    == 2
  )
  assert "--size must be HxW" in _one_error_line(capsys.readouterr().err)
  assert not out.exists()
  src = tmp_path / "a.png"
  Image.fromarray(data.chelsea()[:8, :8]).save(src)
  args = ["--input", str(src), "--output", str(tmp_path / "sr")]
  assert infer.main(["--exported", str(tmp_path)] + args) == 2
  assert "holds no readable StableHLO export" in _one_error_line(capsys.readouterr().err)
  assert infer.main(["--exported", str(tmp_path), "--checkpoint", str(tmp_path)] + args) == 2
  assert "exactly one of" in _one_error_line(capsys.readouterr().err)
  assert not (tmp_path / "sr").exists()


def test_missing_package_names_the_extra(monkeypatch):
  for name in ("jax2onnx", "onnxruntime", "ai_edge_litert", "ai_edge_litert.interpreter"):
    monkeypatch.setitem(sys.modules, name, None)  # what an uninstalled package gives
  for fmt in ("onnx", "tflite"):
    with pytest.raises(errors.ExportError, match=r'pip install "dan_jax\[export\]"'):
      export.export("/nonexistent", "/tmp/unused", [fmt], size=(8, 8))
