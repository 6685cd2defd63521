"""Kernel families beyond the official Gaussians, noise ranges, JPEG and config plumbing."""

import dataclasses
import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from dan_jax import degradation as deg

_CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "default.py")


def _default_degradation_config():
  spec = importlib.util.spec_from_file_location("_default_config", _CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().degradation


def _moments(kernels: np.ndarray):
  """Centre of mass (B, 2) as (x, y) offsets from the centre, and covariance eigenvalues."""
  half = kernels.shape[-1] // 2
  ax = np.arange(-half, half + 1, dtype=np.float64)
  xx, yy = np.meshgrid(ax, ax)
  k = kernels.astype(np.float64)
  mx, my = (k * xx).sum((1, 2)), (k * yy).sum((1, 2))
  dx, dy = xx - mx[:, None, None], yy - my[:, None, None]
  cov = np.stack(
    [
      np.stack([(k * dx * dx).sum((1, 2)), (k * dx * dy).sum((1, 2))], -1),
      np.stack([(k * dx * dy).sum((1, 2)), (k * dy * dy).sum((1, 2))], -1),
    ],
    -2,
  )
  return np.stack([mx, my], -1), np.linalg.eigvalsh(cov)


def _numpy_shape_kernel(size, sx, sy, theta, beta, family):
  # Direct evaluation of the Real-ESRGAN formulas: explicit Σ = U D U^T and its inverse.
  ax = np.arange(-size // 2 + 1.0, size // 2 + 1.0)
  xx, yy = np.meshgrid(ax, ax)
  grid = np.stack([xx, yy], -1)
  u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
  inv = np.linalg.inv(u @ np.diag([sx**2, sy**2]) @ u.T)
  q = np.sum((grid @ inv) * grid, -1)
  k = np.exp(-0.5 * q**beta) if family == "generalized_gaussian" else 1.0 / (1.0 + q**beta)
  return k / k.sum()


# ----------------------------------------------------------------------------- validity


@pytest.mark.parametrize("name", ["generalized", "plateau", "motion", "mixed"])
@pytest.mark.parametrize("size", [21, 11])
def test_kernel_spaces_give_valid_deterministic_kernels(name, size):
  spec = deg.kernel_space(name, size)
  k = deg.sample_kernels(64, spec, [3, 1]).numpy()
  assert k.shape == (64, size, size) and k.dtype == np.float32
  assert np.isfinite(k).all() and k.min() >= 0
  np.testing.assert_allclose(k.sum((1, 2)), 1.0, atol=1e-5)
  com, _ = _moments(k)
  assert np.abs(com).max() < 0.05, "kernels must be centred"
  np.testing.assert_array_equal(k, deg.sample_kernels(64, spec, [3, 1]).numpy())
  other = deg.sample_kernels(64, spec, [3, 2]).numpy()
  assert np.abs(other - k).max(axis=(1, 2)).min() > 1e-4, "every kernel changes with the seed"
  assert np.abs(k[1:] - k[:1]).max(axis=(1, 2)).min() > 1e-4, "kernels differ within a batch"


def test_default_family_is_the_official_sampler():
  for spec in (deg.setting1_spec(), deg.setting2_spec(), deg.setting2_spec(11)):
    assert spec.family == "gaussian"
    ref = deg.random_kernels(
      16,
      spec.kernel_size,
      sig_min=spec.sig_min,
      sig_max=spec.sig_max,
      rate_iso=spec.rate_iso,
      random_disturb=spec.random_disturb,
      seed=[4, 2],
    ).numpy()
    np.testing.assert_array_equal(deg.sample_kernels(16, spec, [4, 2]).numpy(), ref)
    # A one-component "mixture" is the family itself, bit for bit.
    one = dataclasses.replace(spec, family="gaussian:3")
    np.testing.assert_array_equal(deg.sample_kernels(16, one, [4, 2]).numpy(), ref)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("base", [deg.setting1_spec(), deg.setting2_spec()])
def test_generalized_gaussian_with_beta_1_is_the_gaussian(base):
  spec = dataclasses.replace(base, family="generalized_gaussian", beta_min=1.0, beta_max=1.0)
  np.testing.assert_allclose(
    deg.sample_kernels(32, spec, [8, 8]).numpy(),
    deg.sample_kernels(32, base, [8, 8]).numpy(),
    atol=1e-7,
  )
  np.testing.assert_allclose(
    deg.generalized_gaussian_kernel(21, 2.5, 1.2, 0.7, 1.0).numpy(),
    deg.anisotropic_gaussian_kernel(21, 2.5, 1.2, 0.7).numpy(),
    atol=1e-7,
  )


@pytest.mark.parametrize("family", ["generalized_gaussian", "plateau"])
def test_shape_formulas_match_direct_numpy_evaluation(family):
  fn = deg.generalized_gaussian_kernel if family == "generalized_gaussian" else deg.plateau_kernel
  for sx, sy, theta, beta in [(2.5, 1.2, 0.7, 0.6), (1.0, 3.0, -2.0, 1.7), (3.0, 3.0, 0.0, 4.0)]:
    np.testing.assert_allclose(
      fn(21, sx, sy, theta, beta).numpy(),
      _numpy_shape_kernel(21, sx, sy, theta, beta, family),
      atol=1e-7,
    )
  # Sampled kernels are exactly the formula at their sampled parameters.
  kernels, p = deg.random_shaped_kernels(
    12,
    15,
    family,
    sig_min=0.6,
    sig_max=5.0,
    rate_iso=0.5,
    beta_min=0.5,
    beta_max=4.0,
    random_disturb=False,
    seed=[1, 5],
    return_params=True,
  )
  for i in range(12):
    ref = _numpy_shape_kernel(
      15, *(p[n][i].numpy() for n in ("sigma_x", "sigma_y", "theta", "beta")), family
    )
    np.testing.assert_allclose(kernels[i].numpy(), ref, atol=1e-7)
  iso = p["is_iso"].numpy()
  assert iso.any() and (~iso).any()
  np.testing.assert_array_equal(p["sigma_x"].numpy()[iso], p["sigma_y"].numpy()[iso])


def test_beta_sampling_follows_real_esrgan():
  _, p = deg.random_shaped_kernels(
    4000,
    5,
    "generalized_gaussian",
    sig_min=1,
    sig_max=2,
    rate_iso=1.0,
    beta_min=0.5,
    beta_max=4.0,
    random_disturb=False,
    seed=[0, 3],
    return_params=True,
  )
  beta = p["beta"].numpy()
  assert beta.min() >= 0.5 and beta.max() <= 4.0
  # A range straddling 1 is split evenly below/above 1, not uniform over (0.5, 4).
  assert abs(np.mean(beta < 1.0) - 0.5) < 0.03
  _, p = deg.random_shaped_kernels(
    4000,
    5,
    "plateau",
    sig_min=1,
    sig_max=2,
    rate_iso=1.0,
    beta_min=1.0,
    beta_max=2.0,
    random_disturb=False,
    seed=[0, 3],
    return_params=True,
  )
  beta = p["beta"].numpy()
  assert beta.min() >= 1.0 and beta.max() <= 2.0 and abs(beta.mean() - 1.5) < 0.03


def test_plateau_and_generalized_shapes_differ_from_gaussian():
  # Same Σ: plateau tails are much heavier, beta > 1 generalized tails lighter.
  g = deg.isotropic_gaussian_kernel(21, 2.0).numpy()
  plateau = deg.plateau_kernel(21, 2.0, 2.0, 0.0, 1.5).numpy()
  flat = deg.generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 4.0).numpy()
  assert plateau[10, 19] > 100 * g[10, 19]  # 9 px from the centre
  assert flat[10, 16] < 1e-3 * g[10, 16]  # 6 px
  # beta = 4 is nearly flat inside its support (a disk-like plateau).
  assert flat[10, 10] / flat[10, 11] < 1.01 and g[10, 10] / g[10, 11] > 1.1


# ----------------------------------------------------------------------------- motion


def test_motion_kernel_rasterises_a_straight_path():
  t = np.linspace(-4, 4, 81)
  k = deg.motion_kernel(21, np.stack([t, np.zeros_like(t)], -1)).numpy()
  assert k.shape == (21, 21)
  np.testing.assert_allclose(k.sum(), 1.0, atol=1e-6)
  assert k[10].sum() == pytest.approx(1.0, abs=1e-6), "a horizontal path stays on its row"
  assert (k[10, 7:14] > 0.1).all() and k[10, :6].sum() == 0 and k[10, 15:].sum() == 0
  # Rows are y, columns are x: a vertical path is the transpose.
  kv = deg.motion_kernel(21, np.stack([np.zeros_like(t), t], -1)).numpy()
  np.testing.assert_allclose(kv, k.T, atol=1e-7)
  # Smoothing spreads mass off the path but keeps it centred and normalised.
  ks = deg.motion_kernel(21, np.stack([t, np.zeros_like(t)], -1), smooth=1.0).numpy()
  assert ks[10].sum() < 0.6 and ks.sum() == pytest.approx(1.0, abs=1e-6)
  assert np.abs(_moments(ks[None])[0]).max() < 1e-6


def test_motion_kernels_lie_on_their_paths_and_are_elongated():
  kernels, path = deg.random_motion_kernels(
    64,
    21,
    len_min=6.0,
    len_max=16.0,
    steps=8,
    turn=0.6,
    smooth=0.0,
    seed=[2, 7],
    return_trajectory=True,
  )
  kernels, path = kernels.numpy(), path.numpy()
  assert np.abs(path).max() <= 10 + 1e-9, "paths are fitted inside the kernel"
  arc = np.linalg.norm(np.diff(path, axis=1), axis=-1).sum(1)
  assert arc.min() > 4.0 and arc.max() < 20.0
  ax = np.arange(-10, 11)
  for k, pts in zip(kernels, path):
    ys, xs = np.nonzero(k > 0)
    # Bilinear splatting only touches pixels less than one pixel from a path point.
    cheb = np.max(np.abs(np.stack([ax[xs], ax[ys]], -1)[:, None] - pts[None]), -1).min(1)
    assert cheb.max() < 1.0
    assert len(xs) < 0.25 * k.size, "a thin path, not a blob"
  # Default smoothing: still a path, strongly anisotropic unlike isotropic Gaussians.
  smooth = deg.sample_kernels(256, deg.kernel_space("motion"), [5, 5]).numpy()
  iso = deg.sample_kernels(256, deg.setting1_spec(), [5, 5]).numpy()
  ratio = lambda k: (lambda e: e[:, 1] / e[:, 0])(_moments(k)[1])
  assert np.median(ratio(smooth)) > 4.0 and np.percentile(ratio(smooth), 10) > 1.5
  assert np.abs(ratio(iso) - 1).max() < 1e-3
  assert np.abs(_moments(smooth)[0]).max() < 0.05


# ----------------------------------------------------------------------------- mixtures


def test_parse_family():
  assert deg.parse_family("motion") == (("motion", 1.0),)
  assert deg.parse_family("gaussian:1, motion:3") == (("gaussian", 0.25), ("motion", 0.75))
  assert deg.parse_family("plateau,motion") == (("plateau", 0.5), ("motion", 0.5))
  for bad in (
    "gausian",
    "gaussian:0",
    "gaussian:-1,motion:1",
    "gaussian:x",
    "motion,motion",
    "",
    "gaussian:inf",
  ):
    with pytest.raises(ValueError):
      deg.parse_family(bad)
      pytest.fail(f"no ValueError for {bad!r}")


def test_mixture_rates_and_components():
  spec = dataclasses.replace(deg.setting1_spec(), family="gaussian:0.25,motion:0.75")
  kernels, which = deg.sample_kernels(3000, spec, [6, 1], return_family=True)
  kernels, which = kernels.numpy(), which.numpy()
  assert set(np.unique(which)) == {0, 1}
  # Binomial std of the fraction is 0.008.
  assert abs(np.mean(which == 1) - 0.75) < 0.03
  # Each kernel comes from its labelled family: isotropic Gaussians are transpose- and
  # flip-symmetric, motion paths (almost) never are.
  sym = np.array(
    [np.allclose(k, k.T, atol=1e-6) and np.allclose(k, k[::-1], atol=1e-6) for k in kernels]
  )
  assert sym[which == 0].all() and sym[which == 1].mean() < 0.01
  _, which3 = deg.sample_kernels(
    3000,
    dataclasses.replace(spec, family="gaussian:2,plateau:1,motion:1"),
    [6, 2],
    return_family=True,
  )
  np.testing.assert_allclose(np.bincount(which3.numpy()) / 3000, [0.5, 0.25, 0.25], atol=0.03)


# ----------------------------------------------------------------------------- PCA


def _pca_error(spec, test, n=1500):
  pca, mean = deg.build_pca(
    deg.make_kernel_sampler(spec), n=n, code_len=10, seed=0, return_mean=True
  )
  rec = deg.decode(deg.encode(test, pca), pca, mean).numpy()
  return np.mean(np.linalg.norm(rec - test, axis=(1, 2)) / np.linalg.norm(test, axis=(1, 2)))


@pytest.mark.slow  # ~6-18 s on 2 cores: out of the fast lane
@pytest.mark.parametrize("name", ["generalized", "plateau", "motion"])
def test_each_family_gets_its_own_pca(name):
  spec = deg.kernel_space(name)
  test = deg.sample_kernels(300, spec, [77, 1]).numpy()  # held out: other seed than the fit
  own = _pca_error(spec, test)
  # The Gaussian family with the same sigma range and isotropy rate, and setting 1.
  gaussian = _pca_error(dataclasses.replace(spec, family="gaussian"), test)
  setting1 = _pca_error(deg.setting1_spec(), test)
  print(
    f"{name}: PCA relative error own {own:.4f}, gaussian {gaussian:.4f}, setting-1 {setting1:.4f}"
  )
  # Seeded, hence deterministic; margins measured: own/gaussian 0.36..0.87.
  assert own < 0.95 * gaussian
  if name == "motion":  # paths are far from any Gaussian PCA subspace
    assert own < 0.7 * setting1


# ----------------------------------------------------------------------------- noise, JPEG


def test_noise_level_range():
  spec = deg.NoiseSpec(sigma_min=0.02, sigma_max=0.1)
  s = deg.sample_noise_sigma(2000, spec, [1, 1]).numpy()
  assert s.dtype == np.float32 and s.min() >= 0.02 and s.max() <= 0.1
  assert abs(s.mean() - 0.06) < 0.003 and s.std() > 0.02
  np.testing.assert_array_equal(s, deg.sample_noise_sigma(2000, spec, [1, 1]).numpy())
  fixed = deg.sample_noise_sigma(5, deg.NoiseSpec(0.05, 0.05), [1, 1]).numpy()
  np.testing.assert_array_equal(fixed, np.float32(0.05))
  # synthesize adds noise of exactly the reported level to each image.
  hr = np.full((6, 48, 48, 3), 0.5, np.float32)
  out = deg.synthesize(hr, deg.setting1_spec(), spec, 4, [3, 3])
  noise = out["lr"].numpy() - 0.5
  np.testing.assert_allclose(noise.std(axis=(1, 2, 3)), out["noise_sigma"].numpy(), rtol=0.1)
  assert out["lr"].shape == (6, 12, 12, 3) and out["kernel"].shape == (6, 21, 21)


def test_synthesize_defaults_are_plain_degrade():
  rng = np.random.default_rng(0)
  hr = rng.uniform(size=(3, 40, 40, 3)).astype(np.float32)
  out = deg.synthesize(hr, deg.setting2_spec(), deg.NoiseSpec(), 2, [5, 9])
  seed = tf.random.experimental.stateless_fold_in(tf.constant([5, 9], tf.int64), 0)
  kernels = deg.sample_kernels(3, deg.setting2_spec(), seed)
  np.testing.assert_array_equal(out["kernel"].numpy(), kernels.numpy())
  # No noise, no clipping (bicubic overshoot kept), no JPEG: exactly `degrade`.
  np.testing.assert_array_equal(out["lr"].numpy(), deg.degrade(hr, kernels, 2).numpy())
  np.testing.assert_array_equal(out["noise_sigma"].numpy(), 0)
  np.testing.assert_array_equal(out["jpeg_quality"].numpy(), 0)
  single = deg.synthesize(hr[0], deg.setting2_spec(), deg.NoiseSpec(), 2, [5, 9])
  assert single["lr"].shape == (20, 20, 3) and single["kernel"].shape == (21, 21)


def test_jpeg():
  rng = np.random.default_rng(1)
  smooth = np.cumsum(rng.normal(size=(2, 32, 32, 3)), axis=2)
  img = ((smooth - smooth.min()) / np.ptp(smooth)).astype(np.float32)
  np.testing.assert_array_equal(deg.apply_jpeg(img, 0).numpy(), img)
  low, high = deg.apply_jpeg(img, 10).numpy(), deg.apply_jpeg(img, 95).numpy()
  assert low.shape == img.shape and low.dtype == np.float32
  np.testing.assert_allclose(low * 255, np.round(low * 255), atol=1e-4)  # 8-bit
  err = lambda x: np.sqrt(np.mean((x - img) ** 2))
  assert 0 < err(high) < err(low) < 0.1
  np.testing.assert_array_equal(low, deg.apply_jpeg(img, 10).numpy())
  # Per-image quality (0 = untouched) and unbatched images.
  mixed = deg.apply_jpeg(img, np.array([10, 0])).numpy()
  np.testing.assert_array_equal(mixed[0], low[0])
  np.testing.assert_array_equal(mixed[1], img[1])
  np.testing.assert_array_equal(deg.apply_jpeg(img[0], 10).numpy(), low[0])
  q = deg.sample_jpeg_quality(
    4000, deg.NoiseSpec(jpeg_prob=0.3, jpeg_quality_min=40, jpeg_quality_max=60), [0, 4]
  ).numpy()
  assert abs(np.mean(q > 0) - 0.3) < 0.03
  assert q[q > 0].min() == 40 and q[q > 0].max() == 60
  out = deg.synthesize(
    np.repeat(np.kron(img, np.ones((1, 2, 2, 1), np.float32)), 4, 0),
    deg.setting1_spec(),
    deg.NoiseSpec(jpeg_prob=0.5),
    2,
    [2, 2],
  )
  lr, quality = out["lr"].numpy(), out["jpeg_quality"].numpy()
  assert (quality > 0).any() and (quality == 0).any()
  on_grid = np.all(np.abs(lr * 255 - np.round(lr * 255)) < 1e-4, axis=(1, 2, 3))
  np.testing.assert_array_equal(on_grid, quality > 0)


# ----------------------------------------------------------------------------- tf.data


def test_families_noise_and_jpeg_run_in_tf_data():
  hr = np.random.default_rng(2).uniform(size=(2, 48, 48, 3)).astype(np.float32)
  spec = deg.kernel_space("mixed", 15)
  noise = deg.NoiseSpec(0.0, 0.05, jpeg_prob=0.5)

  def synth(step, x):
    seed = tf.stack([tf.cast(step, tf.int64), tf.constant(11, tf.int64)])
    out = deg.synthesize(x, spec, noise, 3, seed)
    return out["lr"], out["kernel"], deg.sample_kernels(tf.shape(x)[0] + 1, spec, seed)

  ds = tf.data.Dataset.from_tensors(hr).repeat(3).enumerate()
  ds = ds.map(synth, num_parallel_calls=2, deterministic=True)
  for step, (lr, kernels, more) in enumerate(ds):
    e_lr, e_k, e_more = synth(tf.constant(step, tf.int64), tf.constant(hr))
    assert lr.shape == (2, 16, 16, 3) and more.shape == (3, 15, 15)
    np.testing.assert_allclose(kernels.numpy(), e_k.numpy(), atol=1e-7)
    np.testing.assert_allclose(more.numpy(), e_more.numpy(), atol=1e-7)
    # JPEG decoding may round differently by a level; anything else must agree.
    assert np.abs(lr.numpy() - e_lr.numpy()).max() <= 1 / 255 + 1e-6
  # Dynamic batch size and per-family samplers trace too.
  for name in ("generalized", "plateau", "motion"):
    fn = tf.function(
      lambda b, s=deg.kernel_space(name, 11): deg.sample_kernels(b, s, [1, 2]),
      input_signature=[tf.TensorSpec([], tf.int32)],
    )
    np.testing.assert_allclose(
      fn(tf.constant(4)).numpy(),
      deg.sample_kernels(4, deg.kernel_space(name, 11), [1, 2]).numpy(),
      atol=1e-7,
    )


# ----------------------------------------------------------------------------- config


def test_specs_from_default_config():
  config = _default_degradation_config()
  spec = deg.kernel_spec_from_config(config)
  assert spec == deg.setting1_spec(config.kernel_size)
  assert deg.noise_spec_from_config(config) == deg.NoiseSpec()
  np.testing.assert_array_equal(
    deg.sample_kernels(8, config, [1, 1]).numpy(),
    deg.sample_kernels(8, deg.setting1_spec(), [1, 1]).numpy(),
  )
  # Every KernelSpec field is in the config with the dataclass default's type.
  for field in dataclasses.fields(deg.KernelSpec):
    assert type(config[field.name]) is type(getattr(spec, field.name)), field.name
  # A kernel-space ablation is a config change.
  for name in deg.KERNEL_SPACES:
    config.update(deg.kernel_space_overrides(name, config.kernel_size))
    assert deg.kernel_spec_from_config(config) == deg.kernel_space(name, config.kernel_size)
  config.noise_sigma, config.noise_sigma_max, config.jpeg_prob = 0.01, 0.05, 0.2
  assert deg.noise_spec_from_config(config) == deg.NoiseSpec(0.01, 0.05, 0.2, 30, 95)
  config.noise_sigma_max = 0.0  # below noise_sigma: the fixed level
  assert deg.noise_spec_from_config(config).sigma_max == 0.01


def test_misspelled_or_bad_config_fields_are_rejected():
  config = _default_degradation_config()
  config.sig_mx = 3.0
  with pytest.raises(ValueError, match="'sig_mx' \\(did you mean 'sig_max'\\?\\)"):
    deg.kernel_spec_from_config(config)
  with pytest.raises(ValueError, match="sig_mx"):
    deg.noise_spec_from_config(config)
  with pytest.raises(ValueError, match="familly"):
    deg.sample_kernels(2, {"familly": "motion"}, [0, 0])
  bad = {
    "family": {"family": "motion:1,gausian:1"},
    "beta order": {"beta_min": 3.0, "beta_max": 1.0},
    "plateau beta": {"plateau_beta_min": 0.0},
    "motion steps": {"motion_steps": 0},
    "motion steps float": {"motion_steps": 4.0},
    "motion length": {"motion_len_min": 5.0, "motion_len_max": 2.0},
    "negative smooth": {"motion_smooth": -1.0},
    "rate_iso": {"rate_iso": 1.5},
    "sigma": {"sig_min": 0.0},
    "family type": {"family": 3},
    "disturb type": {"random_disturb": "yes"},
  }
  for name, fields in bad.items():
    with pytest.raises(ValueError):
      deg.kernel_spec_from_config(fields)
      pytest.fail(f"no ValueError for {name}")
  for fields in (
    {"noise_sigma": -0.1},
    {"jpeg_prob": 2.0},
    {"jpeg_quality_min": 0},
    {"jpeg_quality_min": 90, "jpeg_quality_max": 80},
  ):
    with pytest.raises(ValueError):
      deg.noise_spec_from_config(fields)
  img = np.zeros((16, 16, 4), np.float32)
  for fn in (
    lambda: deg.kernel_space("gauss"),
    lambda: deg.kernel_space("iso", 20),
    lambda: deg.motion_kernel(21, np.zeros((5, 3))),
    lambda: deg.apply_jpeg(img, 50),
    lambda: deg.apply_jpeg(img[..., :3], 101),
    lambda: deg.random_shaped_kernels(
      2,
      21,
      "motion",
      sig_min=1,
      sig_max=2,
      rate_iso=1,
      beta_min=1,
      beta_max=2,
      random_disturb=False,
      seed=[0, 0],
    ),
  ):
    with pytest.raises(ValueError):
      fn()
