"""Tests of dan_jax.degradation against numbers produced by the official DAN code.

Fixtures tests/fixtures/degradation_*.npz were made by running the official
PyTorch code (utils/deg_utils.py, data/util.py, the Gaussian8 path of
scripts/generate_mod_blur_LR_bic.py, PCA of creat_PCA.py) on CPU on small uint8
crops of scikit-image photographs (astronaut, chelsea, coffee).
"""

import math
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from dan_jax import degradation as deg

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
IMG_TOL = 1e-5
KERNEL_TOL = 1e-6


def _load(name):
  with np.load(FIXTURES / f"degradation_{name}.npz") as f:
    return {k: f[k] for k in f.files}


def _f(u8):
  return u8.astype(np.float32) / 255.0


def _maxerr(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def kern():
  return _load("kernels")


@pytest.fixture(scope="module")
def rsz():
  return _load("imresize")


@pytest.fixture(scope="module")
def dg():
  return _load("degrade")


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("size", [21, 31])
def test_isotropic_kernels_match_official(kern, size):
  got = deg.isotropic_gaussian_kernel(size, kern["iso_sigma"])
  assert got.shape == (5, size, size) and got.dtype == tf.float32
  assert _maxerr(got, kern[f"iso{size}"]) < KERNEL_TOL
  single = deg.isotropic_gaussian_kernel(size, float(kern["iso_sigma"][2]))
  assert single.shape == (size, size)
  assert _maxerr(single, kern[f"iso{size}"][2]) < KERNEL_TOL


def test_stable_kernel_matches_official(kern):
  assert _maxerr(deg.isotropic_gaussian_kernel(21, 2.6), kern["stable21_sig2.6"]) < KERNEL_TOL


@pytest.mark.parametrize("size", [21, 31])
def test_anisotropic_kernels_match_official(kern, size):
  got = deg.anisotropic_gaussian_kernel(
    size, kern["aniso_sx"], kern["aniso_sy"], kern["aniso_theta"]
  )
  assert got.shape == (5, size, size)
  assert _maxerr(got, kern[f"aniso{size}"]) < KERNEL_TOL
  # theta and -theta differ: the orientation (x = columns, y = rows) is checked.
  flipped = deg.anisotropic_gaussian_kernel(
    size, kern["aniso_sx"], kern["aniso_sy"], -kern["aniso_theta"]
  )
  assert _maxerr(flipped, kern[f"aniso{size}"]) > 1e-3


def test_disturbed_kernel_formula_matches_official(kern):
  # The official random_batch_kernel draws, recorded while it ran (setting 2, seed 123).
  base = deg.anisotropic_gaussian_kernel(21, kern["rand_sx"], kern["rand_sy"], kern["rand_theta"])
  got = deg.apply_disturbance(base, kern["rand_disturb"])
  assert _maxerr(got, kern["rand_kernels"]) < KERNEL_TOL


def test_setting1_sampler():
  spec = deg.setting1_spec()
  kernels, p = deg.random_kernels(
    4000,
    21,
    sig_min=spec.sig_min,
    sig_max=spec.sig_max,
    rate_iso=spec.rate_iso,
    random_disturb=False,
    seed=[1, 2],
    return_params=True,
  )
  sig = p["sigma_x"].numpy()
  assert sig.min() >= 0.2 and sig.max() <= 4.0
  # Uniform: deciles within a few standard errors.
  np.testing.assert_allclose(
    np.quantile(sig, [0.1, 0.5, 0.9]), 0.2 + 3.8 * np.array([0.1, 0.5, 0.9]), atol=0.1
  )
  assert _maxerr(kernels[:50], deg.isotropic_gaussian_kernel(21, sig[:50])) < KERNEL_TOL
  np.testing.assert_allclose(kernels.numpy().sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_setting2_sampler():
  spec = deg.setting2_spec()
  kernels, p = deg.random_kernels(
    3000,
    21,
    sig_min=spec.sig_min,
    sig_max=spec.sig_max,
    rate_iso=spec.rate_iso,
    random_disturb=True,
    seed=[3, 4],
    return_params=True,
  )
  sx, sy, th = (p[k].numpy() for k in ("sigma_x", "sigma_y", "theta"))
  for s in (sx, sy):
    assert s.min() >= 0.6 and s.max() <= 5.0
    assert abs(s.mean() - 2.8) < 0.1
  assert th.min() >= -math.pi and th.max() <= math.pi and abs(th.mean()) < 0.15
  assert not p["is_iso"].numpy().any()
  assert np.corrcoef(sx, sy)[0, 1] < 0.1  # independent draws
  # Disturbance: kernel / clean kernel = (1 + U(0, 0.25)) / Z per tap.
  clean = deg.anisotropic_gaussian_kernel(21, sx[:200], sy[:200], th[:200]).numpy()
  usable = clean > 1e-30  # far taps underflow in float32
  ratio = kernels.numpy()[:200] / np.where(usable, clean, 1.0)
  spread = np.where(usable, ratio, -np.inf).max(axis=(1, 2)) / np.where(usable, ratio, np.inf).min(
    axis=(1, 2)
  )
  assert spread.max() <= 1.25 + 1e-4 and spread.min() > 1.2
  np.testing.assert_allclose(kernels.numpy().sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_sampler_mixing_and_determinism():
  kernels, p = deg.random_kernels(
    2000,
    21,
    sig_min=0.6,
    sig_max=5.0,
    rate_iso=0.3,
    random_disturb=False,
    seed=[5, 6],
    return_params=True,
  )
  iso = p["is_iso"].numpy()
  assert abs(iso.mean() - 0.3) < 0.05
  np.testing.assert_array_equal(p["sigma_y"].numpy()[iso], p["sigma_x"].numpy()[iso])
  np.testing.assert_array_equal(p["theta"].numpy()[iso], 0.0)
  again = deg.random_kernels(
    2000, 21, sig_min=0.6, sig_max=5.0, rate_iso=0.3, random_disturb=False, seed=[5, 6]
  )
  np.testing.assert_array_equal(kernels.numpy(), again.numpy())
  other = deg.random_kernels(
    2000, 21, sig_min=0.6, sig_max=5.0, rate_iso=0.3, random_disturb=False, seed=[5, 7]
  )
  assert _maxerr(kernels, other) > 1e-3


def test_sample_kernels_from_config_dict():
  config = dict(ksize=31, sig_min=0.6, sig_max=5, rate_iso=0, random_disturb=True)
  a = deg.sample_kernels(3, config, [0, 1])
  b = deg.sample_kernels(3, deg.setting2_spec(31), [0, 1])
  assert a.shape == (3, 31, 31)
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  sampler = deg.make_kernel_sampler(deg.setting1_spec(), chunk=7)
  assert sampler(10, 0).shape == (10, 21, 21)


# ----------------------------------------------------------------------------- imresize


@pytest.mark.parametrize("s", [2, 3, 4])
def test_imresize_down_matches_official(rsz, s):
  got = deg.imresize(_f(rsz["inp"]), 1 / s)
  assert got.shape == (math.ceil(96 / s),) * 2 + (3,) and got.dtype == tf.float32
  assert _maxerr(got, rsz[f"down{s}"]) < IMG_TOL


def test_imresize_odd_sizes_and_upscale(rsz):
  odd = _f(rsz["odd"])  # 47 x 61: output sizes are ceil(n * scale)
  for s in (2, 3):
    got = deg.imresize(odd, 1 / s)
    assert got.shape == (math.ceil(47 / s), math.ceil(61 / s), 3)
    assert _maxerr(got, rsz[f"odd_down{s}"]) < IMG_TOL
  assert _maxerr(deg.imresize(_f(rsz["up"]), 4), rsz["up4"]) < IMG_TOL
  assert _maxerr(deg.imresize(_f(rsz["inp"]), 0.25), rsz["np_down4"]) < IMG_TOL


def test_imresize_batched_and_dynamic_shapes(rsz):
  batch = np.stack([_f(rsz["inp"]), _f(rsz["inp"])[::-1]])
  got = deg.imresize(batch, 1 / 3)
  assert _maxerr(got[0], rsz["down3"]) < IMG_TOL
  assert _maxerr(got[1], deg.imresize(batch[1], 1 / 3)) < 1e-6
  # Unknown spatial size at trace time (e.g. full evaluation images in tf.data).
  fn = tf.function(
    lambda x: deg.imresize(x, 1 / 3), input_signature=[tf.TensorSpec([None, None, 3], tf.float32)]
  )
  odd = _f(rsz["odd"])
  assert _maxerr(fn(odd), rsz["odd_down3"]) < IMG_TOL
  assert _maxerr(fn(_f(rsz["inp"])), rsz["down3"]) < IMG_TOL


# ----------------------------------------------------------------------------- blur / degrade


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_blur_matches_official(dg, method):
  hr = _f(dg["blur_hr"])
  assert _maxerr(deg.blur(hr, dg["blur_k31"], method), dg["blur31"]) < IMG_TOL
  assert _maxerr(deg.blur(hr, dg["blur_k31"][0], method), dg["blur31_shared"]) < IMG_TOL
  # Even size: official pads (k//2, k//2 - 1).
  assert _maxerr(deg.blur(hr, dg["blur_k20"], method), dg["blur20"]) < IMG_TOL
  one = deg.blur(hr[1], dg["blur_k31"][1], method)
  assert one.shape == (32, 32, 3) and _maxerr(one, dg["blur31"][1]) < IMG_TOL
  # Correlation vs convolution: a flipped anisotropic kernel gives clearly different numbers.
  flipped = dg["blur_k31"][:, ::-1, :]
  assert _maxerr(deg.blur(hr, flipped, method), dg["blur31"]) > 1e-2


@pytest.mark.parametrize("s", [2, 3, 4])
def test_degrade_matches_official(dg, s):
  hr = _f(dg["hr"])
  for method in ("direct", "fft"):
    lr = deg.degrade(hr, dg["kernels"], s, method=method)
    assert lr.shape == (3, math.ceil(64 / s), math.ceil(64 / s), 3)
    assert _maxerr(lr, dg[f"lr_x{s}"]) < IMG_TOL


def test_noise_and_quantization(dg):
  hr = _f(dg["hr"])
  clean = deg.degrade(hr, dg["kernels"], 4).numpy()
  sig = 10 / 255
  noisy = deg.degrade(hr, dg["kernels"], 4, noise_sigma=sig, seed=[0, 9]).numpy()
  np.testing.assert_array_equal(
    noisy, deg.degrade(hr, dg["kernels"], 4, noise_sigma=sig, seed=[0, 9]).numpy()
  )
  assert noisy.min() >= 0.0 and noisy.max() <= 1.0
  inside = (clean > 0.15) & (clean < 0.85)  # where clipping cannot matter
  assert abs((noisy - clean)[inside].std() - sig) < 0.1 * sig
  per_image = deg.degrade(
    hr, dg["kernels"], 4, noise_sigma=np.array([0.0, sig, 2 * sig]), seed=[0, 9]
  ).numpy()
  assert np.abs(per_image[0] - np.clip(clean[0], 0, 1)).max() == 0
  assert abs((per_image[2] - clean[2])[inside[2]].std() - 2 * sig) < 0.2 * sig
  # No noise: no clipping unless asked (official behaviour).
  np.testing.assert_array_equal(clean, deg.degrade(hr, dg["kernels"], 4, clip=False).numpy())
  q = deg.quantize_8bit(clean).numpy()
  np.testing.assert_allclose(q, np.round(clean * 255) / 255, atol=1e-7)
  assert np.allclose(q * 255, np.round(q * 255), atol=1e-4)


# ----------------------------------------------------------------------------- Gaussian8


def test_gaussian8_sigmas():
  g8 = _load("gaussian8")
  for s in (2, 3, 4):
    np.testing.assert_allclose(deg.gaussian8_sigmas(s), g8[f"sigmas_x{s}"], atol=1e-12)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_gaussian8_lr_matches_official(s):
  g8 = _load("gaussian8")
  lr = deg.make_gaussian8_lr(g8["hr"], s)
  assert lr.dtype == np.uint8 and lr.shape == g8[f"lr_x{s}"].shape
  diff = np.abs(lr.astype(int) - g8[f"lr_x{s}"])
  # A float rounding difference can flip a x.5 value by one level, very rarely.
  assert diff.max() <= 1 and diff.mean() < 1e-3
  # Float input in [0, 1] gives the same.
  np.testing.assert_array_equal(lr, deg.make_gaussian8_lr(_f(g8["hr"]), s))


def test_write_gaussian8_set(tmp_path):
  g8 = _load("gaussian8")
  src = tmp_path / "hr"
  src.mkdir()
  imgs = {"a": g8["hr"][:45, :47], "b": g8["hr"][::-1]}
  for name, img in imgs.items():
    tf.io.write_file(str(src / f"{name}.png"), tf.io.encode_png(img))
  (src / "notes.txt").write_text("ignored")
  dirs = deg.write_gaussian8_set(str(src), str(tmp_path / "out"), 4)
  assert sorted(dirs) == pytest.approx(sorted(deg.gaussian8_sigmas(4)))
  for i, (sigma, d) in enumerate(sorted(dirs.items())):
    assert d == os.path.join(str(tmp_path / "out"), "x4", f"sig{sigma:.2f}")
    assert sorted(os.listdir(os.path.join(d, "LR"))) == ["a.png", "b.png"]
    for name, img in imgs.items():
      hr = tf.io.decode_png(tf.io.read_file(os.path.join(d, "HR", f"{name}.png"))).numpy()
      lr = tf.io.decode_png(tf.io.read_file(os.path.join(d, "LR", f"{name}.png"))).numpy()
      np.testing.assert_array_equal(hr, deg.modcrop(img, 4))
      np.testing.assert_array_equal(lr, deg.make_gaussian8_lr(img, 4)[i])
  assert deg.modcrop(imgs["a"], 4).shape == (44, 44, 3)


# ----------------------------------------------------------------------------- tf.data


def test_tf_data_graph_mode_matches_eager(dg):
  hr = _f(dg["hr"])
  spec = deg.setting2_spec()

  def synth(step, x):
    seed = tf.stack([tf.cast(step, tf.int64), tf.constant(7, tf.int64)])
    kernels = deg.sample_kernels(tf.shape(x)[0], spec, seed)
    lr = deg.degrade(x, kernels, 4, noise_sigma=5 / 255, seed=seed)
    return deg.quantize_8bit(lr), kernels, deg.imresize(x[0], 1 / 3)

  ds = tf.data.Dataset.from_tensors(hr).repeat(2).enumerate()
  ds = ds.map(synth, num_parallel_calls=2, deterministic=True)
  for step, (lr, kernels, small) in enumerate(ds):
    e_lr, e_k, e_small = synth(tf.constant(step, tf.int64), tf.constant(hr))
    assert _maxerr(kernels, e_k) < 1e-7
    assert _maxerr(lr, e_lr) < 1e-6
    assert _maxerr(small, e_small) < 1e-6
  # Fully dynamic shapes (variable-size images) trace too, with both blur methods.
  for method in ("direct", "fft"):
    fn = tf.function(
      lambda x, k, m=method: deg.degrade(x, k, 3, method=m),
      input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32),
        tf.TensorSpec([None, 21, 21], tf.float32),
      ],
    )
    assert _maxerr(fn(hr, dg["kernels"]), dg["lr_x3"]) < IMG_TOL
  # Unbatched elements also trace.
  single = tf.data.Dataset.from_tensor_slices(hr).map(
    lambda x: deg.degrade(x, deg.isotropic_gaussian_kernel(21, 2.0), 2)
  )
  assert next(iter(single)).shape == (32, 32, 3)


# ----------------------------------------------------------------------------- PCA


def test_pca_matches_official_and_round_trip():
  ref = _load("pca")
  kernels = deg.isotropic_gaussian_kernel(21, ref["sigmas"]).numpy()
  pca, mean = deg.build_pca(
    lambda n, seed: kernels[:n], n=len(kernels), code_len=10, return_mean=True
  )
  assert mean.shape == (21, 21)
  np.testing.assert_allclose(mean, kernels.mean(axis=0), atol=1e-6)
  assert pca.shape == (441, 10) and pca.dtype == np.float32
  np.testing.assert_allclose(pca.T @ pca, np.eye(10), atol=1e-5)
  # Same principal directions as the official PCA (signs are arbitrary in an SVD).
  np.testing.assert_allclose(np.abs(np.sum(pca * ref["pca"], axis=0)), 1.0, atol=1e-4)
  codes = deg.encode(kernels[:4], ref["pca"])
  assert _maxerr(codes, ref["codes"]) < 1e-6
  assert deg.encode(kernels[0], pca).shape == (10,)
  # Round trip on fresh setting-1 kernels: 10 components capture them well.
  test = deg.sample_kernels(200, deg.setting1_spec(), [9, 9]).numpy()
  rec = deg.decode(deg.encode(test, pca), pca, mean).numpy()
  rel = np.linalg.norm(rec - test, axis=(1, 2)) / np.linalg.norm(test, axis=(1, 2))
  print("PCA round trip relative error: median %.4f max %.4f" % (np.median(rel), rel.max()))
  assert np.median(rel) < 1e-3 and rel.max() < 1e-2
  one = deg.decode(deg.encode(test[0], pca), pca, mean)
  assert one.shape == (21, 21) and _maxerr(one, rec[0]) < 1e-6


@pytest.mark.slow  # ~6-18 s on 2 cores: out of the fast lane
def test_build_pca_setting2_deterministic():
  sampler = deg.make_kernel_sampler(deg.setting2_spec())
  a = deg.build_pca(sampler, n=3000, code_len=10, seed=3)
  b = deg.build_pca(sampler, n=3000, code_len=10, seed=3)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(a.T @ a, np.eye(10), atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_value_error():
  img = np.zeros((32, 32, 3), np.float32)
  k = deg.isotropic_gaussian_kernel(21, 1.0)
  cases = {
    "even size": lambda: deg.isotropic_gaussian_kernel(20, 1.0),
    "even size aniso": lambda: deg.anisotropic_gaussian_kernel(4, 1.0, 2.0, 0.0),
    "even size sampler": lambda: deg.sample_kernels(2, deg.setting1_spec(20), [0, 0]),
    "non-int size": lambda: deg.isotropic_gaussian_kernel(21.0, 1.0),
    "unknown spec field": lambda: deg.sample_kernels(2, {"sigma": 1.0}, [0, 0]),
    "non-square kernel": lambda: deg.blur(img, np.ones((21, 19), np.float32) / 399),
    "kernel rank": lambda: deg.blur(img, np.ones((21,), np.float32)),
    "image smaller than kernel": lambda: deg.blur(np.zeros((16, 40, 3), np.float32), k),
    "batch mismatch": lambda: deg.blur(np.zeros((2, 32, 32, 3), np.float32), tf.stack([k, k, k])),
    "hwc with kernel batch": lambda: deg.blur(img, tf.stack([k, k])),
    "blur method": lambda: deg.blur(img, k, "spline"),
    "scale 5": lambda: deg.degrade(img, k, 5),
    "scale float": lambda: deg.degrade(img, k, 2.5),
    "scale bool": lambda: deg.degrade(img, k, True),
    "gaussian8 scale": lambda: deg.gaussian8_sigmas(8),
    "uint8 degrade": lambda: deg.degrade(img.astype(np.uint8), k, 2),
    "int imresize": lambda: deg.imresize(np.zeros((8, 8, 3), np.int32), 0.5),
    "uint8 blur": lambda: deg.blur(img.astype(np.uint8), k),
    "int quantize": lambda: deg.quantize_8bit(np.zeros((4, 4, 3), np.int64)),
    "image rank": lambda: deg.imresize(np.zeros((8, 8), np.float32), 0.5),
    "negative scale": lambda: deg.imresize(img, -0.5),
    "int kernel": lambda: deg.blur(img, np.ones((3, 3), np.int32)),
    "pca shape": lambda: deg.encode(k, np.zeros((400, 10), np.float32)),
    "int16 gaussian8": lambda: deg.make_gaussian8_lr(np.zeros((32, 32, 3), np.int16), 4),
    "modcrop rank": lambda: deg.modcrop(np.zeros((4,)), 2),
    "noise rank": lambda: deg.degrade(img, k, 2, noise_sigma=np.zeros((2, 2))),
  }
  for name, fn in cases.items():
    with pytest.raises(ValueError):
      fn()
      pytest.fail(f"no ValueError for {name}")


def test_write_gaussian8_set_empty_dir(tmp_path):
  with pytest.raises(ValueError, match="no .png"):
    deg.write_gaussian8_set(str(tmp_path), str(tmp_path / "out"), 4)
