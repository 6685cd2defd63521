"""Tests for dan_jax.metrics against numbers from the official DAN code.

The fixture tests/fixtures/metrics_official.npz holds 96x96 / 90x100 crops of
skimage's astronaut, coffee and chelsea photos (GT) with degraded versions
(blur + bicubic down/up + noise, "SR"), and the values produced by the official
protocol (utils.img_utils.calculate_psnr / calculate_ssim, data.util.bgr2ycbcr,
tensor2img, following config/DANv{1,2}/test.py) for crop_border 0, 2, 4.
"""

import math
import os

import numpy as np
import pytest

from dan_jax import metrics

_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "metrics_official.npz")
_NAMES = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def ref():
  with np.load(_FIXTURE) as f:
    return {k: f[k] for k in f.files}


def _cases():
  return [(n, i) for n in _NAMES for i in range(3)]


@pytest.mark.parametrize("name,idx", _cases())
def test_matches_official_rgb_images(ref, name, idx):
  sr, gt = ref[f"{name}_sr"], ref[f"{name}_gt"]
  cb = int(ref["crops"][idx])
  p_rgb, s_rgb, p_y, s_y = ref[f"{name}_metrics"][idx]
  assert abs(metrics.psnr_y(sr, gt, cb) - p_y) < 1e-4
  assert abs(metrics.ssim_y(sr, gt, cb) - s_y) < 1e-6
  assert abs(metrics.psnr_rgb(sr, gt, cb) - p_rgb) < 1e-4
  assert abs(metrics.ssim_rgb(sr, gt, cb) - s_rgb) < 1e-6


@pytest.mark.parametrize("name,idx", _cases())
def test_matches_official_gray_images(ref, name, idx):
  sr, gt = ref[f"{name}_sr"][..., 1], ref[f"{name}_gt"][..., 1]
  cb = int(ref["crops"][idx])
  p, s = ref[f"{name}_gray_metrics"][idx]
  assert abs(metrics.psnr_y(sr, gt, cb) - p) < 1e-4
  assert abs(metrics.ssim_y(sr, gt, cb) - s) < 1e-6
  # HW1 is handled like HW; "RGB" metrics of a gray image are the same.
  assert abs(metrics.psnr_y(sr[..., None], gt[..., None], cb) - p) < 1e-4
  assert abs(metrics.ssim_rgb(sr, gt, cb) - s) < 1e-6
  assert abs(metrics.psnr_rgb(sr, gt, cb) - p) < 1e-4


def test_rgb_to_y_matches_official_float_y(ref):
  sr = ref["chelsea_sr"][:32, :32]
  y = metrics.rgb_to_y(sr)
  assert y.dtype == np.float64 and y.shape == (32, 32)
  np.testing.assert_allclose(y, ref["chelsea_sr_y"], rtol=0, atol=1e-9)
  # Not rounded: a generic photo has fractional Y values.
  assert np.any(np.abs(y - np.round(y)) > 1e-3)


def test_rgb_to_y_formula_and_ranges():
  px = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [10, 20, 30]], np.uint8)
  y = metrics.rgb_to_y(px)
  expect = 16 + (65.481 * px[:, 0] + 128.553 * px[:, 1] + 24.966 * px[:, 2]) / 255.0
  np.testing.assert_allclose(y, expect, rtol=0, atol=1e-12)
  np.testing.assert_allclose(y[:2], [16.0, 235.0], atol=1e-12)
  # float inputs in [0, 255] and in [0, 1] give the same Y.
  np.testing.assert_allclose(metrics.rgb_to_y(px.astype(np.float32)), y, atol=1e-9)
  np.testing.assert_allclose(metrics.rgb_to_y(px / 255.0, data_range=1.0), y, atol=1e-9)
  with pytest.raises(ValueError):
    metrics.rgb_to_y(px, data_range=1.0)
  with pytest.raises(ValueError):
    metrics.rgb_to_y(np.zeros((4, 4, 4), np.uint8))
  with pytest.raises(ValueError):
    metrics.rgb_to_y(px.astype(np.int32))


def test_to_uint8_matches_official_tensor2img(ref):
  f = ref["float_img"]  # HWC RGB float32, incl. out-of-range values and ties
  u = metrics.to_uint8(f)
  assert u.dtype == np.uint8 and u.shape == f.shape
  # tensor2img returns BGR; to_uint8 keeps the channel order.
  np.testing.assert_array_equal(u[..., ::-1], ref["float_img_tensor2img"])


def test_to_uint8_rounding_and_clipping():
  x = np.array([-1.0, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 3.0], np.float32)
  np.testing.assert_array_equal(metrics.to_uint8(x), [0, 0, 0, 2, 128, 255, 255])
  # float64 input is cast to float32 first, as tensor2img does (.float()).
  np.testing.assert_array_equal(metrics.to_uint8(x.astype(np.float64)), metrics.to_uint8(x))
  with pytest.raises(ValueError, match="NaN"):
    metrics.to_uint8(np.array([0.2, np.nan]))


def test_identical_images_give_inf_and_one(ref):
  gt = ref["coffee_gt"]
  assert math.isinf(float(ref["identical_psnr"]))
  for cb in (0, 4):
    assert metrics.psnr_y(gt, gt, cb) == float("inf")
    assert metrics.psnr_rgb(gt, gt, cb) == float("inf")
    assert metrics.ssim_y(gt, gt, cb) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim_rgb(gt, gt, cb) == pytest.approx(1.0, abs=1e-12)


def test_crop_border_is_applied(ref):
  sr, gt = ref["astronaut_sr"].copy(), ref["astronaut_gt"]
  base = metrics.psnr_y(sr, gt, 4)
  sr[:4] = 0  # damage only the border that gets cropped
  sr[:, -4:] = 255
  assert metrics.psnr_y(sr, gt, 4) == base
  assert metrics.ssim_y(sr, gt, 4) == metrics.ssim_y(ref["astronaut_sr"], gt, 4)
  assert metrics.psnr_y(sr, gt, 0) < base
  assert metrics.psnr_y(sr, gt, 3) < base


def test_ssim_is_symmetric_and_bounded(ref):
  sr, gt = ref["chelsea_sr"], ref["chelsea_gt"]
  s = metrics.ssim_y(sr, gt, 2)
  assert s == pytest.approx(metrics.ssim_y(gt, sr, 2), abs=1e-12)
  assert 0.0 < s < 1.0


def test_invalid_inputs():
  a = np.zeros((32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.psnr_y(a, np.zeros((32, 30, 3), np.uint8), 0)
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.ssim_rgb(a, np.zeros((32, 32), np.uint8), 0)
  for fn in (metrics.psnr_y, metrics.ssim_y, metrics.psnr_rgb, metrics.ssim_rgb):
    with pytest.raises(ValueError, match="uint8"):
      fn(a.astype(np.float32), a, 0)
    with pytest.raises(ValueError, match="crop_border"):
      fn(a, a, -1)
    with pytest.raises(ValueError, match="crop_border"):
      fn(a, a, 16)
    with pytest.raises(ValueError):
      fn(np.zeros((32, 32, 4), np.uint8), np.zeros((32, 32, 4), np.uint8), 0)
  with pytest.raises(ValueError, match="SSIM needs"):
    metrics.ssim_y(a, a, 11)  # 10x10 left
  assert metrics.psnr_y(a, a, 11) == float("inf")  # PSNR has no size limit


def test_kernel_error():
  x = np.arange(-10, 11)
  g = np.exp(-(x[:, None] ** 2 + x[None] ** 2) / (2 * 2.0**2))
  g /= g.sum()
  r = metrics.kernel_error(g, g)
  assert r["mse"] == 0 and r["mae"] == 0 and r["sad"] == 0
  assert r["psnr"] == float("inf")

  est = g.copy()
  est[10, 10] += 0.01
  r = metrics.kernel_error(est, g)
  assert r["mse"] == pytest.approx(1e-4 / 441)
  assert r["mae"] == pytest.approx(0.01 / 441)
  assert r["sad"] == pytest.approx(0.01)
  assert r["psnr"] == pytest.approx(10 * math.log10(g.max() ** 2 / (1e-4 / 441)))

  # Different sizes: a centre crop with negligible tails vs. the full kernel.
  small = g[5:-5, 5:-5]
  r = metrics.kernel_error(small, g)
  r2 = metrics.kernel_error(g, small)
  assert r["mse"] == pytest.approx(r2["mse"])
  assert r["sad"] == pytest.approx(1.0 - small.sum())
  # normalize removes a pure gain error.
  assert metrics.kernel_error(3 * g, g, normalize=True)["mse"] == pytest.approx(0.0, abs=1e-30)
  assert metrics.kernel_error(3 * g, g)["mse"] > 0
  # Odd size difference pads the extra row/column at the end.
  r = metrics.kernel_error(np.ones((2, 2)), np.pad(np.ones((2, 2)), ((0, 1), (0, 1))))
  assert r["mse"] == 0
  with pytest.raises(ValueError):
    metrics.kernel_error(g[None], g)


def test_average():
  assert metrics.average([1.0, 2.0, 3.0]) == pytest.approx(2.0)
  assert metrics.average([30.0, float("inf")]) == float("inf")
  assert metrics.average([30.0, float("inf"), 32.0], ignore_inf=True) == pytest.approx(31.0)
  assert math.isnan(metrics.average([float("inf")], ignore_inf=True))
  with pytest.raises(ValueError):
    metrics.average([])


def test_score_prediction_is_the_protocol(ref):
  sr, gt = ref["astronaut_sr"], ref["astronaut_gt"]  # uint8
  got = metrics.score_prediction(sr, gt, 4, rgb=True)  # crop border = scale by default
  assert got == {
    "psnr_y": metrics.psnr_y(sr, gt, 4),
    "ssim_y": metrics.ssim_y(sr, gt, 4),
    "psnr_rgb": metrics.psnr_rgb(sr, gt, 4),
    "ssim_rgb": metrics.ssim_rgb(sr, gt, 4),
  }
  # Floats in [0, 1] are rounded as official tensor2img: k / 255 gives back the uint8.
  assert metrics.score_prediction(sr / 255.0, gt.astype(np.float32) / 255.0, 4) == {
    "psnr_y": got["psnr_y"],
    "ssim_y": got["ssim_y"],
  }
  assert metrics.score_prediction(sr, gt, 4, crop_border=0)["psnr_y"] == metrics.psnr_y(sr, gt, 0)
  est, true = np.eye(3) / 3, np.full((5, 5), 1 / 25)
  with_kernel = metrics.score_prediction(sr, gt, 4, kernel=est, true_kernel=true)
  assert {
    k: with_kernel[f"kernel_{k}"] for k in ("mse", "mae", "sad", "psnr")
  } == metrics.kernel_error(est, true)
  assert "kernel_mse" not in metrics.score_prediction(sr, gt, 4, kernel=est)
