"""dan_jax.pictures: the notebooks' captioned picture rows, and the README's picture."""

import pathlib

import numpy as np
import pytest

from dan_jax import pictures


def test_to_pil_quantizes_floats_and_keeps_uint8():
  x = np.array([[[0.0, 0.5, 1.0], [1.2, -0.1, 0.25]]], np.float32)  # 1x2 RGB
  img = pictures.to_pil(x)
  assert img.mode == "RGB" and img.size == (2, 1)
  # Rounded like the official tensor2img, clipped to [0, 1] first.
  np.testing.assert_array_equal(np.asarray(img), [[[0, 128, 255], [255, 0, 64]]])
  u8 = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
  np.testing.assert_array_equal(np.asarray(pictures.to_pil(u8)), u8)


def test_kernel_pil_scales_to_peak_and_enlarges():
  kernel = np.zeros((3, 3), np.float32)
  kernel[1, 1], kernel[0, 0] = 0.4, 0.2
  img = pictures.kernel_pil(kernel, 30)
  assert img.mode == "RGB" and img.size == (30, 30)
  a = np.asarray(img)
  assert a.dtype == np.uint8
  np.testing.assert_array_equal(a[15, 15], [255, 255, 255])  # the peak, white
  np.testing.assert_array_equal(a[5, 5], [128, 128, 128])  # half the peak
  np.testing.assert_array_equal(a[25, 5], [0, 0, 0])


def test_fit_keeps_the_aspect_ratio():
  img = pictures.to_pil(np.zeros((10, 20, 3), np.float32))
  assert pictures.fit(img, 25).size == (50, 25)


def test_panel_row_and_stack_sizes():
  a = pictures.to_pil(np.ones((8, 8, 3), np.float32))  # white
  b = pictures.to_pil(np.zeros((8, 16, 3), np.float32))  # black, twice as wide
  row = pictures.panel_row([a, b], ["one", "two\nlines"], height=16, gap=4)
  band = 40  # 20 px per caption line, two lines at most
  assert row.mode == "RGB" and row.size == (16 + 4 + 32, band + 16)
  px = np.asarray(row)
  np.testing.assert_array_equal(px[band + 8, 8], [255, 255, 255])  # in a
  np.testing.assert_array_equal(px[band + 8, 20 + 16], [0, 0, 0])  # in b
  np.testing.assert_array_equal(px[band + 8, 17], [255, 255, 255])  # the white gap
  assert (px[:band] < 128).any()  # the captions are drawn
  tall = pictures.stack([row, a], gap=3)
  assert tall.size == (row.width, row.height + 3 + 8)
  np.testing.assert_array_equal(np.asarray(tall)[row.height + 3 :, 8:], 255)  # white fill


@pytest.mark.slow
def test_demo_picture_shows_every_validation_image(tmp_path):
  """benchmarks/demo_picture.py (the README's picture) on a tiny untrained checkpoint."""
  import sys

  root = pathlib.Path(__file__).parents[1]
  sys.path.insert(0, str(root / "benchmarks"))
  try:
    import demo_picture
  finally:
    sys.path.remove(str(root / "benchmarks"))
  from dan_jax import checkpoint
  from dan_jax import config as config_lib
  from dan_jax import models

  config = config_lib.load(str(root / "configs" / "test.py"))
  config.data.val_max_images = 2
  k = config.model.kernel_size
  pca = np.linalg.qr(np.random.default_rng(0).normal(size=(k * k, config.model.code_len)))[0]
  model = models.create_model(config.model)
  checkpoint.save_model(str(tmp_path), models.init_variables(model, 0, pca), config.model)
  picture, lines = demo_picture.demo_picture(config, str(tmp_path), height=48)
  # Two rows of LR, bicubic, SR, HR and two kernels, each 48 px high under its caption.
  assert len(lines) == 2 and all("Y-PSNR bicubic" in l for l in lines), lines
  assert picture.mode == "RGB" and picture.height == 2 * (40 + 48) + 6
  assert picture.width == 6 * 48 + 5 * 6  # square crops and kernels
