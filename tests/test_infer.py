"""Inference: tiled == whole-image, self-ensemble, image formats, and the CLI's refusals."""

import io
import os

import numpy as np
from PIL import Image
from PIL import ImageOps
import pytest
from skimage import data

from dan_jax import checkpoint
from dan_jax import errors
from dan_jax import image_io
from dan_jax import infer
from dan_jax import predict
from dan_jax import prediction_io
from dan_jax import tiling

from conftest import TINY_V1 as V1
from conftest import TINY_V2 as V2
from conftest import tiny_variables as _variables


def _photo(h, w, y=100, x=150):
  return data.astronaut()[y : y + h, x : x + w]


# ---------------------------------------------------------------------------------------
# The predictor
# ---------------------------------------------------------------------------------------


def test_tiled_equals_whole_image_on_a_photograph():
  variables = _variables(V2)
  lr = _photo(60, 70).astype(np.float32) / 255.0
  whole = predict.Predictor(V2, variables).predict(lr)
  tiled = predict.Predictor(V2, variables, tile=32, batch_size=4)
  assert tiled.tiled_is_exact and tiled.uses_tiles(60, 70)
  got = tiled.predict(lr)
  assert got.sr.shape == whole.sr.shape == (120, 140, 3)
  np.testing.assert_allclose(got.sr, whole.sr, atol=1e-5)
  np.testing.assert_allclose(got.code, whole.code, atol=1e-6)
  np.testing.assert_allclose(got.kernel, whole.kernel, atol=1e-7)
  # A too small overlap is feathered, and visibly differs: tiles really were used.
  approx = predict.Predictor(V2, variables, tile=32, tile_overlap=4).predict(lr)
  assert approx.sr.shape == whole.sr.shape
  assert np.abs(approx.sr - whole.sr).max() > 1e-3


def test_tile_windows_cover_every_pixel_once():
  for n, tile, overlap in [(70, 32, 14), (60, 32, 14), (33, 32, 4), (32, 32, 8)]:
    starts = tiling.tile_starts(n, tile, overlap)
    length = min(tile, n)
    assert starts[0] == 0 and starts[-1] + length == n
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    total = np.zeros(n * 2)
    for a in starts:
      w = tiling.axis_window(length, a > 0, a + length < n, 2, *tiling.margin_and_width(overlap, 5))
      total[a * 2 : (a + length) * 2] += w
    assert np.all(total > 0)


def test_self_ensemble_is_flip_equivariant():
  variables = _variables(V2)
  lr = _photo(20, 26).astype(np.float32) / 255.0
  ens = predict.Predictor(V2, variables, self_ensemble=True)
  a = ens.predict(lr)
  b = ens.predict(lr[:, ::-1])
  # The 8 transforms form a group, so averaging over them commutes with a flip.
  np.testing.assert_allclose(b.sr[:, ::-1], a.sr, atol=1e-5)
  np.testing.assert_allclose(b.kernel[:, ::-1], a.kernel, atol=1e-6)
  plain = predict.Predictor(V2, variables).predict(lr)
  assert np.abs(plain.sr - a.sr).max() > 1e-3
  np.testing.assert_allclose(a.kernel.sum(), 1.0, atol=1e-5)


def test_load_weights_keeps_the_programs_and_refuses_other_models():
  lr = _photo(20, 26).astype(np.float32) / 255.0
  p = predict.Predictor(V2, _variables(V2))
  first = p.predict(lr).sr
  other = _variables(V2, seed=1)
  p.load_weights(other)
  np.testing.assert_array_equal(p.predict(lr).sr, predict.Predictor(V2, other).predict(lr).sr)
  assert np.abs(p.predict(lr).sr - first).max() > 1e-4
  with pytest.raises(errors.InferenceError, match="do not fit this predictor's model"):
    p.load_weights(_variables(V1))


def test_bad_tile_overlap_is_one_clear_error():
  with pytest.raises(errors.InferenceError, match="--tile_overlap"):
    predict.Predictor(V2, _variables(V2), tile=10)  # default exact overlap is 14


# ---------------------------------------------------------------------------------------
# Image files
# ---------------------------------------------------------------------------------------


def test_exif_orientation_matches_pillow(tmp_path):
  base = Image.fromarray(_photo(12, 17))
  for orientation in range(1, 9):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    base.save(path, exif=exif)
    want = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    got = image_io.read_image(str(path))
    np.testing.assert_array_equal(image_io.quantize(got.rgb, 8), want)


def _png16(img):
  import tensorflow as tf

  return tf.io.encode_png(img).numpy()


def _write_inputs(folder):
  """Good images of every supported kind, plus a corrupt, a fake and a non-image file."""
  rgb = _photo(20, 24)
  Image.fromarray(_photo(37, 53, 40, 60)).save(folder / "odd.png")
  Image.fromarray(rgb.mean(-1).astype(np.uint8), "L").save(folder / "gray.png")
  alpha = np.tile(np.linspace(0, 255, 24).astype(np.uint8), (20, 1))
  Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "rgba.png")
  deep = rgb.astype(np.uint16) * 257 + 3
  (folder / "deep.png").write_bytes(_png16(deep))
  (folder / "deep_gray.png").write_bytes(_png16(deep[..., :1]))
  import tifffile

  tifffile.imwrite(folder / "deep_tiff.tif", deep)
  Image.fromarray(rgb).save(folder / "pic.bmp")
  exif = Image.Exif()
  exif[0x0112] = 6  # stored rotated: shown after a 90 degree clockwise turn
  Image.fromarray(np.rot90(rgb, 1).copy()).save(folder / "photo.jpg", exif=exif, quality=95)
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="PNG")
  (folder / "broken.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  (folder / "fake.png").write_text("not an image")
  (folder / "notes.txt").write_text("hello")
  return rgb, alpha


def test_cli_formats_failures_and_tiles(tmp_path, ckpt_v2, capsys):
  src, out = tmp_path / "in", tmp_path / "out"
  src.mkdir()
  rgb, alpha = _write_inputs(src)
  rc = infer.main(["--checkpoint", ckpt_v2, "--input", str(src), "--output", str(out)])
  err = capsys.readouterr().err
  assert rc == 1  # two images failed, the others were written
  lines = err.splitlines()
  assert len([l for l in lines if "broken.png" in l]) == 1
  assert len([l for l in lines if "fake.png" in l]) == 1
  assert any("truncated" in l for l in lines if "broken.png" in l)
  assert len([l for l in lines if "notes.txt" in l and "skipping" in l]) == 1
  assert "s per output megapixel" in err
  assert sorted(p.name for p in out.glob("*_x2.png")) == sorted(
    f"{n}_x2.png" for n in ["odd", "gray", "rgba", "deep", "deep_gray", "deep_tiff", "pic", "photo"]
  )
  assert not (out / "broken_x2.png").exists() and not (out / "fake_x2.png").exists()

  def read(name):
    return image_io.read_image(str(out / name))

  odd = read("odd_x2.png")
  assert odd.rgb.shape == (74, 106, 3) and odd.bit_depth == 8 and not odd.gray
  gray = Image.open(out / "gray_x2.png")
  assert gray.mode == "L" and gray.size == (48, 40)
  rgba = Image.open(out / "rgba_x2.png")
  assert rgba.mode == "RGBA" and rgba.size == (48, 40)
  want_alpha = image_io.quantize(prediction_io.upscale_alpha(alpha / 255.0, 2), 8)
  np.testing.assert_array_equal(np.asarray(rgba)[..., 3], want_alpha)
  for name, is_gray in [
    ("deep_x2.png", False),
    ("deep_gray_x2.png", True),
    ("deep_tiff_x2.png", False),
  ]:
    img = read(name)
    assert img.bit_depth == 16 and img.gray == is_gray and img.rgb.shape == (40, 48, 3)
  # 16-bit input gives the same picture as its 8-bit version, at 16-bit precision.
  np.testing.assert_allclose(read("deep_x2.png").rgb, read("pic_x2.png").rgb, atol=2 / 255)
  assert read("photo_x2.png").rgb.shape == (40, 48, 3)  # EXIF rotation applied
  kernel = np.load(out / "odd_x2_kernel.npy")
  assert kernel.shape == (11, 11) and abs(kernel.sum() - 1) < 1e-5
  assert Image.open(out / "odd_x2_kernel.png").mode == "L"

  # Tiled inference of the odd-sized image gives the same file.
  tiled = tmp_path / "tiled"
  rc = infer.main(
    [
      "--checkpoint",
      ckpt_v2,
      "--input",
      str(src / "odd.png"),
      "--output",
      str(tiled),
      "--tile",
      "24",
    ]
  )
  assert rc == 0, capsys.readouterr().err
  a = np.asarray(Image.open(tiled / "odd_x2.png"), np.int16)
  b = np.asarray(Image.open(out / "odd_x2.png"), np.int16)
  assert np.abs(a - b).max() <= 1


def test_cli_refuses_to_overwrite(tmp_path, ckpt_v2, capsys):
  src, out = tmp_path / "in", tmp_path / "out"
  src.mkdir()
  Image.fromarray(_photo(16, 18)).save(src / "a.png")
  before = (src / "a.png").read_bytes()
  args = ["--checkpoint", ckpt_v2, "--input", str(src)]
  # The input folder as output folder.
  assert infer.main(args + ["--output", str(src)]) == 2
  assert "is the input folder" in capsys.readouterr().err
  assert sorted(os.listdir(src)) == ["a.png"]
  # An existing output is left alone without --overwrite, replaced with it.
  out.mkdir()
  (out / "a_x2.png").write_bytes(b"keep me")
  assert infer.main(args + ["--output", str(out)]) == 1
  err = capsys.readouterr().err
  assert "exists" in err and "--overwrite" in err and "Traceback" not in err
  assert (out / "a_x2.png").read_bytes() == b"keep me"
  assert infer.main(args + ["--output", str(out), "--overwrite"]) == 0
  assert Image.open(out / "a_x2.png").size == (36, 32)
  assert (src / "a.png").read_bytes() == before


def test_cli_empty_folder_and_missing_input(tmp_path, ckpt_v2, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "readme.md").write_text("x")
  assert (
    infer.main(["--checkpoint", ckpt_v2, "--input", str(empty), "--output", str(tmp_path / "o")])
    == 2
  )
  err = capsys.readouterr().err
  assert err.count("error:") == 1 and "no images in" in err and "readme.md" in err
  assert (
    infer.main(
      ["--checkpoint", ckpt_v2, "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
    )
    == 2
  )
  assert "does not exist" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


def test_cli_danv1_writes_the_code(tmp_path, capsys):
  ckpt = tmp_path / "ckpt_v1"
  checkpoint.save_model(str(ckpt), _variables(V1), V1)
  src = tmp_path / "a.png"
  Image.fromarray(_photo(16, 20)).save(src)
  rc = infer.main(
    ["--checkpoint", str(ckpt), "--input", str(src), "--output", str(tmp_path / "out")]
  )
  assert rc == 0, capsys.readouterr().err
  assert sorted(os.listdir(tmp_path / "out")) == ["a_x2.png", "a_x2_code.npy"]
  assert np.load(tmp_path / "out" / "a_x2_code.npy").shape == (10,)


def test_self_ensemble_wraps_any_predict_function():
  from dan_jax import ensemble
  from dan_jax.prediction import Prediction

  calls = []

  def nearest_x2(lrs):  # flip- and transpose-equivariant: the ensemble changes nothing
    calls.append(lrs.shape)
    up = np.repeat(np.repeat(lrs, 2, axis=1), 2, axis=2)
    return [Prediction(u, np.zeros(2, np.float32), np.full((3, 3), 1 / 9, np.float32)) for u in up]

  lrs = np.random.default_rng(0).uniform(size=(2, 5, 7, 3)).astype(np.float32)
  got = ensemble.self_ensemble(nearest_x2, has_kernel=True)(lrs)
  assert calls.count((2, 5, 7, 3)) == 4 and calls.count((2, 7, 5, 3)) == 4
  for g, want in zip(got, nearest_x2(lrs)):
    np.testing.assert_allclose(g.sr, want.sr, atol=1e-6)
    np.testing.assert_allclose(g.kernel, want.kernel, atol=1e-6)
