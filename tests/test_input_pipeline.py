"""Tests of dan_jax.input_pipeline: pairing, determinism, resumption, sharding, sources, errors."""

import logging
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from dan_jax import config as config_lib
from dan_jax import degradation as deg
from dan_jax import errors
from dan_jax import image_sources
from dan_jax import input_pipeline as ip

CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "default.py"
KEYS = ("lr", "hr", "kernel", "code")
LOGGER = "dan_jax.input_pipeline"


def _config(**data):
  """Tiny default config: demo source, x2, 32 px HR crops, 11x11 kernels, batch 4."""
  c = config_lib.load(str(CONFIG))
  c.model.scale = 2
  c.model.kernel_size = 11  # degradation.kernel_size is tied to it
  c.model.code_len = 5
  c.batch_size = 4
  c.data.source = "demo"
  c.data.hr_crop = 32
  c.data.num_parallel_calls = 2
  c.data.prefetch = 1
  for k, v in data.items():
    c.data[k] = v
  return c


@pytest.fixture(scope="module")
def pca():
  c = _config()
  return deg.build_pca(deg.make_kernel_sampler(ip.kernel_spec(c)), 300, 5, seed=0)


def _batches(config, pca, n, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  it = ip.create_train_iterator(config, pca, **kw)
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(np.array_equal(a[k], b[k]) for k in KEYS)


def _write_png(path, img):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(tf.io.encode_png(img).numpy())


@pytest.fixture(scope="module")
def demo_run(pca):
  """Four steps of the default tiny demo pipeline (shared by several tests)."""
  return _batches(_config(), pca, 4)


# ----------------------------------------------------------------------------- batches


def test_shapes_dtypes_ranges(demo_run):
  b = demo_run[0]
  assert set(b) == set(KEYS)
  assert b["lr"].shape == (4, 16, 16, 3) and b["hr"].shape == (4, 32, 32, 3)
  assert b["kernel"].shape == (4, 11, 11) and b["code"].shape == (4, 5)
  assert all(b[k].dtype == np.float32 for k in KEYS)
  assert 0.0 <= b["hr"].min() and b["hr"].max() <= 1.0
  # HR comes from uint8 photos, LR is 8-bit rounded (quantize_lr defaults to True).
  np.testing.assert_allclose(b["hr"] * 255, np.round(b["hr"] * 255), atol=1e-4)
  np.testing.assert_allclose(b["lr"] * 255, np.round(b["lr"] * 255), atol=1e-4)
  np.testing.assert_allclose(b["kernel"].sum(axis=(1, 2)), 1.0, atol=1e-5)
  # Setting 1: isotropic kernels, symmetric under transpose and flips, all different.
  np.testing.assert_allclose(b["kernel"], b["kernel"].transpose(0, 2, 1), atol=1e-7)
  np.testing.assert_allclose(b["kernel"], b["kernel"][:, ::-1], atol=1e-7)
  assert len({float(k[5, 5]) for k in b["kernel"]}) == 4
  # Examples differ (distinct crops), and consecutive steps differ.
  assert not np.array_equal(b["hr"][0], b["hr"][1])
  assert not np.array_equal(demo_run[0]["hr"], demo_run[1]["hr"])


def test_lr_is_degraded_hr_and_code_is_encoded_kernel(pca):
  c = _config()
  c.degradation.quantize_lr = False
  b = _batches(c, pca, 1)[0]
  want = deg.degrade(b["hr"], b["kernel"], 2).numpy()
  np.testing.assert_allclose(b["lr"], want, atol=1e-5)
  np.testing.assert_allclose(b["code"], deg.encode(b["kernel"], pca).numpy(), atol=1e-6)
  # Quantized: the same pairing, rounded to 8 bits.
  c.degradation.quantize_lr = True
  q = _batches(c, pca, 1)[0]
  assert np.array_equal(q["hr"], b["hr"]) and np.array_equal(q["kernel"], b["kernel"])
  np.testing.assert_allclose(q["lr"], np.round(want * 255) / 255, atol=1.01 / 255)
  assert np.mean(np.abs(q["lr"] - np.round(want * 255) / 255) < 1e-6) > 0.99


def test_noise(pca):
  c = _config(hr_crop=64)
  c.degradation.quantize_lr = False
  c.degradation.noise_sigma = 0.05
  b = _batches(c, pca, 1)[0]
  clean = deg.degrade(b["hr"], b["kernel"], 2).numpy()
  assert b["lr"].min() >= 0.0 and b["lr"].max() <= 1.0  # noisy LR is clipped
  inside = (clean > 0.2) & (clean < 0.8)  # far from the clipping bounds
  resid = (b["lr"] - clean)[inside]
  assert resid.size > 1000
  assert abs(resid.std() - 0.05) < 0.005 and abs(resid.mean()) < 0.005


def test_kernel_family_noise_range_and_jpeg_reach_the_batches(pca, demo_run):
  """The kernel-space and noise fields of config.degradation drive the synthesis."""
  c = _config()
  c.degradation.family = "motion"
  motion = _batches(c, pca, 1)[0]
  spec = ip.kernel_spec(c)
  assert spec.family == "motion"
  assert not np.allclose(motion["kernel"], demo_run[0]["kernel"])
  np.testing.assert_allclose(motion["kernel"].sum((1, 2)), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(motion["hr"], demo_run[0]["hr"])  # same crops, new kernels
  c = _config()
  c.degradation.noise_sigma, c.degradation.noise_sigma_max = 0.0, 0.1
  c.degradation.jpeg_prob = 1.0
  noisy = _batches(c, pca, 1)[0]
  np.testing.assert_array_equal(noisy["kernel"], demo_run[0]["kernel"])
  assert np.abs(noisy["lr"] - demo_run[0]["lr"]).mean() > 0.005
  c.degradation.sig_mx = 3.0  # a misspelled field is an error, not silently ignored
  with pytest.raises(errors.DataError, match="sig_mx"):
    ip.create_train_iterator(c, pca, process_index=0, process_count=1)


def test_augmentation_is_official_dihedral_subset(pca):
  plain = _batches(_config(use_flip=False, use_rot=False), pca, 2)
  aug = _batches(_config(), pca, 2)
  transforms = {
    (hf, vf, tr): (
      lambda x, hf=hf, vf=vf, tr=tr: (lambda y: y.transpose(1, 0, 2) if tr else y)(
        (lambda y: y[::-1] if vf else y)(x[:, ::-1] if hf else x)
      )
    )
    for hf in (0, 1)
    for vf in (0, 1)
    for tr in (0, 1)
  }
  used = set()
  for p, a in zip(plain, aug):
    # Crop position, kernel and noise are drawn from independent streams.
    assert np.array_equal(p["kernel"], a["kernel"])
    for x, y in zip(p["hr"], a["hr"]):
      match = [t for t, f in transforms.items() if np.array_equal(f(x), y)]
      assert match, "augmented crop is not a flip/transpose of the plain crop"
      used.add(match[0])
  assert len(used) > 1  # some examples were actually transformed


# ----------------------------------------------------------------------------- determinism


def test_determinism_and_seed(pca, demo_run):
  again = _batches(_config(), pca, 2)
  assert all(_same(a, b) for a, b in zip(again, demo_run))
  c = _config()
  c.seed = 1
  other = _batches(c, pca, 1)[0]
  assert not np.array_equal(other["hr"], demo_run[0]["hr"])
  assert not np.array_equal(other["kernel"], demo_run[0]["kernel"])


def test_resumption(pca, demo_run):
  resumed = _batches(_config(), pca, 1, start_step=3)[0]
  assert _same(resumed, demo_run[3])


def test_two_process_shards_concatenate_to_global_batch(pca, demo_run):
  shards = [
    _batches(_config(), pca, 2, start_step=2, process_index=p, process_count=2) for p in range(2)
  ]
  for step in range(2):
    assert shards[0][step]["hr"].shape[0] == 2
    for k in KEYS:
      np.testing.assert_array_equal(
        np.concatenate([shards[0][step][k], shards[1][step][k]]), demo_run[2 + step][k]
      )


def test_dataset_has_static_shapes(pca):
  ds = ip.create_train_dataset(_config(), pca, process_index=1, process_count=2)
  shapes = {k: tuple(v.shape) for k, v in ds.element_spec.items()}
  assert shapes == dict(lr=(2, 16, 16, 3), hr=(2, 32, 32, 3), kernel=(2, 11, 11), code=(2, 5))


def test_default_process_is_jax_process(pca, demo_run):
  b = next(ip.create_train_iterator(_config(), pca))  # jax: process 0 of 1
  assert _same(b, demo_run[0])


# ----------------------------------------------------------------------------- sources


def _colour_folder(root, sizes):
  """One constant-colour PNG per size, so a crop tells which image it came from."""
  for i, (h, w) in enumerate(sizes):
    img = np.full((h, w, 3), 40 * (i + 1), np.uint8)
    _write_png(root / f"sub{i % 2}" / f"img{i}.png", img)


def test_folder_source_epochs_and_skips(tmp_path, pca, caplog):
  _colour_folder(tmp_path, [(40, 50), (32, 64), (48, 33)])
  _write_png(tmp_path / "tiny.png", np.zeros((20, 40, 3), np.uint8))  # smaller than the crop
  (tmp_path / "broken.png").write_bytes(b"not an image at all")  # bad header
  (tmp_path / "notes.txt").write_text("ignored: not an image extension")
  c = _config(source="folder", train_dir=str(tmp_path))
  c.batch_size = 3
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    batches = _batches(c, pca, 4)
  text = caplog.text
  assert "broken.png" in text and "tiny.png" in text and "smaller than the 32x32" in text
  values = {40, 80, 120}
  for b in batches:
    assert b["hr"].shape == (3, 32, 32, 3)
    seen = {int(round(float(v) * 255)) for v in b["hr"][:, 0, 0, 0]}
    # 3 usable images, global batch 3: each step is one epoch, every image exactly once.
    assert seen == values
    assert all(np.ptp(x) == 0 for x in b["hr"])  # constant crops: decoding is right
  orders = {tuple(int(round(float(v) * 255)) for v in b["hr"][:, 0, 0, 0]) for b in batches}
  assert len(orders) > 1  # a fresh permutation per epoch


def test_folder_jpeg_crops_are_windows_of_the_decoded_image(tmp_path, pca):
  rng = np.random.RandomState(0)
  img = (rng.rand(40, 56, 3) * 255).astype(np.uint8)
  path = tmp_path / "photo.jpg"
  path.write_bytes(tf.io.encode_jpeg(img, quality=90).numpy())
  full = tf.io.decode_jpeg(path.read_bytes(), channels=3).numpy().astype(np.float32) / 255
  c = _config(source="folder", train_dir=str(tmp_path), use_flip=False, use_rot=False)
  b = _batches(c, pca, 1)[0]
  windows = np.lib.stride_tricks.sliding_window_view(full, (32, 32, 3))[..., 0, :, :, :]
  for hr in b["hr"]:
    assert np.any(np.all(windows == hr, axis=(2, 3, 4)))


def test_several_folders_comma_separated(tmp_path, pca):
  _colour_folder(tmp_path / "a", [(40, 40)])
  _colour_folder(tmp_path / "b", [(40, 40), (36, 36)])
  c = _config(source="folder", train_dir=f"{tmp_path / 'a'}, {tmp_path / 'b'}")
  c.batch_size = 3
  b = _batches(c, pca, 1)[0]
  assert sorted(int(round(float(v) * 255)) for v in b["hr"][:, 0, 0, 0]) == [40, 40, 80]


def test_corrupt_pixel_data_names_the_file(tmp_path, pca):
  _colour_folder(tmp_path, [(40, 40)])
  png = tf.io.encode_png((np.random.RandomState(1).rand(40, 40, 3) * 255).astype(np.uint8))
  (tmp_path / "truncated.png").write_bytes(png.numpy()[:300])  # header fine, data cut
  c = _config(source="folder", train_dir=str(tmp_path))
  c.batch_size = 2
  it = ip.create_train_iterator(c, pca, process_index=0, process_count=1)
  with pytest.raises(errors.DataError, match="truncated.png"):
    next(it)


def test_cache_decoded_gives_the_same_batches(tmp_path, pca):
  rng = np.random.RandomState(3)
  for i, (h, w) in enumerate([(40, 50), (36, 64), (48, 33)]):
    _write_png(tmp_path / f"r{i}.png", (rng.rand(h, w, 3) * 255).astype(np.uint8))
  jpg = tf.io.encode_jpeg((rng.rand(44, 40, 3) * 255).astype(np.uint8))
  (tmp_path / "r3.jpeg").write_bytes(jpg.numpy())
  c = _config(source="folder", train_dir=str(tmp_path))
  plain = _batches(c, pca, 2)
  c.data.cache_decoded = True
  cached = _batches(c, pca, 2)
  assert all(_same(a, b) for a, b in zip(plain, cached))
  # With the cache a corrupt file is found up front.
  png = tf.io.encode_png((rng.rand(40, 40, 3) * 255).astype(np.uint8))
  (tmp_path / "cut.png").write_bytes(png.numpy()[:300])
  with pytest.raises(errors.DataError, match="cut.png"):
    ip.create_train_iterator(c, pca, process_index=0, process_count=1)


def test_tfds_source_with_mock_data(pca, caplog):
  tfds = pytest.importorskip("tensorflow_datasets")
  c = _config(source="tfds", tfds_name="div2k", tfds_split="train")
  c.data.hr_crop = 16
  c.batch_size = 2
  with tfds.testing.mock_data(num_examples=8):
    # Mock images have random sizes in [5, 50): some are smaller than the crop.
    ds = tfds.load("div2k", split="train")
    sizes = [ex["hr"].shape[:2] for ex in ds.as_numpy_iterator()]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
      run = _batches(c, pca, 2)
    again = _batches(c, pca, 1, start_step=1)[0]
  n_small = sum(min(s) < 16 for s in sizes)
  assert n_small < len(sizes)
  assert (f"skipping {n_small} of 8 images" in caplog.text) == (n_small > 0)
  b = run[0]
  assert b["hr"].shape == (2, 16, 16, 3) and b["lr"].shape == (2, 8, 8, 3)
  lr = deg.quantize_8bit(deg.degrade(b["hr"], b["kernel"], 2)).numpy()
  np.testing.assert_allclose(b["lr"], lr, atol=1.01 / 255)
  assert _same(again, run[1])


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
  "case, match",
  [
    ("unknown_source", "data.source"),
    ("unset_dir", "data.train_dir is not set"),
    ("missing_dir", "does not exist"),
    ("empty_dir", "no .png"),
    ("no_readable", "none of the 1 image files"),
    ("all_too_small", "hr_crop = 32: no image"),
    ("batch_split", "batch_size"),
    ("crop_not_multiple", "hr_crop must be a positive multiple"),
    ("tfds_bad_feature", "no feature 'image'"),
  ],
)
def test_errors(tmp_path, pca, case, match):
  c = _config(source="folder", train_dir=str(tmp_path))
  kw = dict(process_index=0, process_count=1)
  if case == "unknown_source":
    c.data.source = "imagenet"
  elif case == "unset_dir":
    c.data.train_dir = ""
  elif case == "missing_dir":
    c.data.train_dir = str(tmp_path / "nope")
  elif case == "empty_dir":
    (tmp_path / "readme.txt").write_text("no images here")
  elif case == "no_readable":
    (tmp_path / "x.png").write_bytes(b"garbage")
  elif case == "all_too_small":
    _colour_folder(tmp_path, [(20, 60), (31, 31)])
  elif case == "batch_split":
    kw = dict(process_index=0, process_count=3)
  elif case == "crop_not_multiple":
    c.data.hr_crop = 33
  elif case == "tfds_bad_feature":
    c.data.source = "tfds"
    c.data.tfds_image_key = "image"
  with pytest.raises(errors.DataError, match=match):
    ip.create_train_iterator(c, pca, **kw)


# ----------------------------------------------------------------------------- validation


def test_demo_images_and_held_out_split():
  imgs = image_sources.demo_images()
  assert len(imgs) == len(image_sources.DEMO_IMAGE_NAMES) >= 6
  assert all(i.dtype == np.uint8 and i.ndim == 3 and i.shape[2] == 3 for i in imgs)
  assert not set(image_sources.DEMO_VAL_NAMES) & set(image_sources.DEMO_TRAIN_NAMES)
  train, val = image_sources.demo_images("train"), image_sources.demo_images("val")
  assert len(train) + len(val) == len(imgs)
  assert min(min(i.shape[:2]) for i in train) >= 256  # default crop fits


def test_validation_set_demo(pca):
  c = _config(val_source="demo", val_crop=0, val_sigma=1.2)
  val = ip.create_validation_set(c, pca)
  assert val["names"] == list(image_sources.DEMO_VAL_NAMES)
  held = image_sources.demo_images("val")
  for hr, lr, src in zip(val["hr"], val["lr"], held):
    h, w = src.shape[0] // 2 * 2, src.shape[1] // 2 * 2  # modcrop
    assert hr.shape == (h, w, 3) and lr.shape == (h // 2, w // 2, 3)
    assert hr.dtype == lr.dtype == np.float32
    np.testing.assert_array_equal(hr, src[:h, :w] / np.float32(255))
    want = deg.make_gaussian8_lr(src, 2, 11, sigmas=[1.2])[0]
    np.testing.assert_array_equal(lr, want / np.float32(255))
  kernel = deg.isotropic_gaussian_kernel(11, 1.2).numpy()
  assert val["kernel"].shape == (2, 11, 11)
  np.testing.assert_allclose(val["kernel"][1], kernel, atol=1e-7)
  np.testing.assert_allclose(val["code"], deg.encode(val["kernel"], pca).numpy(), atol=1e-6)
  again = ip.create_validation_set(c, pca)
  assert all(np.array_equal(a, b) for a, b in zip(again["lr"], val["lr"]))


def test_validation_set_folder_crop(tmp_path, pca, caplog):
  rng = np.random.RandomState(2)
  _write_png(tmp_path / "b.png", (rng.rand(50, 60, 3) * 255).astype(np.uint8))
  _write_png(tmp_path / "a" / "a.png", (rng.rand(64, 48, 3) * 255).astype(np.uint8))
  _write_png(tmp_path / "c.png", (rng.rand(30, 60, 3) * 255).astype(np.uint8))  # too small
  c = _config(val_source="folder", val_dir=str(tmp_path), val_crop=40)
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    val = ip.create_validation_set(c, pca)
  assert "c (30x60)" in caplog.text
  assert val["names"] == ["a", "b"]  # sorted paths: a/a.png before b.png
  assert np.stack(val["hr"]).shape == (2, 40, 40, 3)
  assert np.stack(val["lr"]).shape == (2, 20, 20, 3)
  src = tf.io.decode_png((tmp_path / "b.png").read_bytes()).numpy()
  np.testing.assert_array_equal(val["hr"][1], src[5:45, 10:50] / np.float32(255))
  c.data.val_max_images = 1
  assert ip.create_validation_set(c, pca)["names"] == ["a"]


def test_validation_names_stay_unique(tmp_path, pca):
  img = np.full((24, 24, 3), 100, np.uint8)
  _write_png(tmp_path / "x" / "img.png", img)
  _write_png(tmp_path / "y" / "img.png", img)
  val = ip.create_validation_set(_config(val_source="folder", val_dir=str(tmp_path)), pca)
  assert val["names"] == ["x_img", "y_img"]


def test_validation_set_none_and_errors(tmp_path, pca):
  assert ip.create_validation_set(_config(val_source="none"), pca) is None
  with pytest.raises(errors.DataError, match="data.val_source"):
    ip.create_validation_set(_config(val_source="div2k"), pca)
  with pytest.raises(errors.DataError, match="data.val_dir is not set"):
    ip.create_validation_set(_config(val_source="folder", val_dir=""), pca)
  with pytest.raises(errors.DataError, match="does not exist"):
    ip.create_validation_set(_config(val_source="folder", val_dir=str(tmp_path / "x")), pca)
  with pytest.raises(errors.DataError, match="no .png"):
    ip.create_validation_set(_config(val_source="folder", val_dir=str(tmp_path)), pca)
  with pytest.raises(errors.DataError, match="val_crop"):
    ip.create_validation_set(_config(val_source="demo", val_crop=41), pca)
