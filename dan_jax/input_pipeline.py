"""Deterministic, resumable tf.data input pipeline: HR crops -> synthesized (LR, kernel, code).

Training batches (`create_train_iterator`) follow the official DAN recipe: a random
`data.hr_crop` square of an HR image, the official `augment` (hflip, vflip, transpose, each
with p = 0.5), then the degradation of `dan_jax.degradation` (random kernel from
`config.degradation`, reflect-padded blur, MATLAB bicubic 1/scale, optional Gaussian noise,
8-bit rounding) and the kernel's PCA code.

Determinism and resumption. Example j of the global batch of step i is a pure function of
(config, i, j): image choice, crop, flips, kernel and noise are all drawn with stateless TF
ops from seeds `fold_in(fold_in(seed, i), j)`, and every example is synthesized on its own
(its own decode, blur, resize and noise; nothing is computed across the batch), so

* `create_train_iterator(config, pca, start_step=k)` yields exactly batches k, k+1, ... of
  a fresh iterator, bit for bit (a resumed run sees the data of the uninterrupted run);
* host p of P generates examples j in [p*b, (p+1)*b) with b = batch_size // P, and the P
  host batches concatenated are, bit for bit, the global batch of a single host.

Images are visited in epochs: global example g = i * batch_size + j takes image
`index_shuffle(g % N, seed(epoch = g // N))`, a fresh stateless permutation of the N usable
images per epoch (every image once per epoch, like a shuffled DataLoader). Changing
`batch_size`, the image set or any degradation field changes the stream, as it should.

Sources (`config.data.source`):

* "folder": every .png/.jpg/.jpeg/.bmp below `data.train_dir` (recursive; several folders
  may be given comma-separated, e.g. "/data/DIV2K_train_HR,/data/Flickr2K_HR"). Files are
  read with tf.io (local or gs://) and decoded whole once per example (see the cost and
  `data.cache_decoded` below).
* "tfds": the `data.tfds_image_key` (default "hr") feature of `data.tfds_name`
  (`div2k`: features "lr" and "hr") split `data.tfds_split`. The *encoded* images are
  read once into host memory (DIV2K train HR: ~3.3 GB) because the stateless image choice
  needs random access, and decoded per example. `data.tfds_download` (default True) lets
  tfds download and prepare the dataset when it is missing.
* "auto" (the official configs' default): "folder" when `data.train_dir` is set, else
  "tfds" (DIV2K train HR, downloaded on first use; without internet the error says to give
  `data.train_dir`).
* "demo": the scikit-image sample photographs (`demo_images`), decoded once and cached in
  memory (~12 MB); `DEMO_VAL_NAMES` are held out for validation and never used for training.

Decoding a whole 2K PNG per example costs ~0.1-0.25 s of one core (the official code reads
raw pixels from an lmdb instead). `data.cache_decoded = True` decodes every usable image
once, up front, into host memory (the demo path; DIV2K+Flickr2K need ~30 GB per host,
twice that while building) and then only crops; batches are bit-identical either way.
Otherwise give enough `num_parallel_calls` cores, or train on pre-extracted sub-images.

Image checks and error policy (errors are `DataError`, a `ValueError`, naming the field,
folder or file):

* Up front, every file's header is read with PIL (format and size only; ~0.1 ms per local
  file, done in a thread pool). Files whose header is not a PNG/JPEG/BMP image are skipped
  with one warning listing them; images smaller than the crop are skipped with one warning;
  if nothing usable remains, `DataError`.
* A file with a valid header but corrupt pixel data is found when it is decoded: up front
  with `data.cache_decoded`, otherwise when tf.data first reaches it; the iterator then
  finds the culprit among that step's images and raises `DataError` naming it. (Removing a
  file changes N and so the image order from step 0: clean a dataset before training.)

Validation (`create_validation_set`): Gaussian8-style fixed LR made once from held-out HR
images (see its docstring).

This module runs on the host and uses TensorFlow/numpy only (jax only for the default
process index/count).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import logging
import os
from typing import Any, Callable, Iterator, Optional, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from dan_jax import degradation
from dan_jax import image_io

_log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = image_io.TF_IMAGE_EXTENSIONS  # what the training folders may hold
SOURCES = ("auto", "folder", "tfds", "demo")
VAL_SOURCES = ("folder", "demo", "none")

# PIL format names that tf.io.decode_image reads (MPO: multi-picture JPEG from cameras).
_DECODABLE_FORMATS = ("JPEG", "MPO", "PNG", "BMP")

# (name, loader) of the scikit-image colour photographs shipped inside the package.
_DEMO_LOADERS: tuple[tuple[str, Callable[[Any], np.ndarray]], ...] = (
    ("astronaut", lambda d: d.astronaut()),
    ("chelsea", lambda d: d.chelsea()),
    ("coffee", lambda d: d.coffee()),
    ("rocket", lambda d: d.rocket()),
    ("immunohistochemistry", lambda d: d.immunohistochemistry()),
    ("hubble_deep_field", lambda d: d.hubble_deep_field()),
    ("retina", lambda d: d.retina()),
    ("motorcycle", lambda d: d.stereo_motorcycle()[0]),
)
DEMO_IMAGE_NAMES = tuple(name for name, _ in _DEMO_LOADERS)
# Held out for validation; never used for training. Every training demo image is >= 427 px.
DEMO_VAL_NAMES = ("chelsea", "coffee")
DEMO_TRAIN_NAMES = tuple(n for n in DEMO_IMAGE_NAMES if n not in DEMO_VAL_NAMES)

# Separates the data streams from other users of config.seed (e.g. model init).
_DATA_SALT = 0x44414E  # "DAN"


class DataError(ValueError):
  """Bad data configuration or unusable data (missing folder, no images, corrupt file...)."""


# --------------------------------------------------------------------------
# Demo images
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _demo_images_cached() -> tuple[np.ndarray, ...]:
  import skimage.data  # pylint: disable=g-import-not-at-top
  images = []
  for name, load in _DEMO_LOADERS:
    img = np.ascontiguousarray(load(skimage.data))
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
      raise DataError(f"scikit-image demo image {name!r} is not uint8 RGB: "
                      f"{img.dtype} {img.shape}")
    img.setflags(write=False)  # shared between callers
    images.append(img)
  return tuple(images)


def demo_images(split: str = "all") -> list[np.ndarray]:
  """The scikit-image sample photographs as read-only uint8 HWC RGB arrays.

  split: "all" (in `DEMO_IMAGE_NAMES` order), "train" (`DEMO_TRAIN_NAMES`) or "val"
  (`DEMO_VAL_NAMES`, held out for validation).
  """
  names = {"all": DEMO_IMAGE_NAMES, "train": DEMO_TRAIN_NAMES, "val": DEMO_VAL_NAMES}
  if split not in names:
    raise DataError(f"demo split must be one of {sorted(names)}, got {split!r}")
  by_name = dict(zip(DEMO_IMAGE_NAMES, _demo_images_cached()))
  return [by_name[n] for n in names[split]]


# --------------------------------------------------------------------------
# Image listing and header probing
# --------------------------------------------------------------------------


def _split_dirs(value: Any, field: str) -> list[str]:
  if isinstance(value, str):
    dirs = [d.strip() for d in value.split(",") if d.strip()]
  else:
    dirs = [str(d).strip() for d in (value or ()) if str(d).strip()]
  if not dirs:
    raise DataError(f"config.{field} is not set: give the folder of HR images")
  return dirs


def list_image_files(directory: str, field: str = "data.train_dir") -> list[str]:
  """Sorted paths of the .png/.jpg/.jpeg/.bmp files below `directory` (recursive)."""
  if not tf.io.gfile.exists(directory):
    raise DataError(f"config.{field}: folder {directory} does not exist")
  if not tf.io.gfile.isdir(directory):
    raise DataError(f"config.{field}: {directory} is not a folder")
  paths = []
  for root, _, files in tf.io.gfile.walk(directory):
    paths.extend(os.path.join(root, f) for f in files
                 if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
  if not paths:
    raise DataError(f"config.{field}: no {'/'.join(IMAGE_EXTENSIONS)} images in {directory}")
  return sorted(paths)


def _probe_header(read: Callable[[], Any]) -> tuple[int, int, str]:
  """(height, width, PIL format) from the header only; raises on anything unreadable."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with read() as f:
    with Image.open(f) as im:
      w, h = im.size
      fmt = im.format
  if fmt not in _DECODABLE_FORMATS:
    raise ValueError(f"{fmt} files are not supported (PNG, JPEG or BMP)")
  return h, w, fmt


def _probe_all(names: Sequence[str], readers: Sequence[Callable[[], Any]]
               ) -> tuple[list[int], list[tuple[int, int, str]], list[str]]:
  """Probes headers in parallel (remote file systems pay one round trip per file)."""
  def probe(read):
    try:
      return _probe_header(read), None
    except Exception as e:  # pylint: disable=broad-except
      return None, f"{type(e).__name__}: {e}"
  with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
    results = list(pool.map(probe, readers))
  ok, infos, bad = [], [], []
  for i, (info, err) in enumerate(results):
    if info is None:
      bad.append(f"{names[i]} ({err})")
    else:
      ok.append(i)
      infos.append(info)
  return ok, infos, bad


def _warn_list(msg: str, items: Sequence[str], limit: int = 5) -> None:
  more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
  _log.warning("%s: %s%s", msg, ", ".join(items[:limit]), more)


# --------------------------------------------------------------------------
# Image stores: N images with known sizes and a graph-mode crop
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Store:
  """N usable training images and how to crop one of them inside tf.data.

  Exactly one of `paths` (files read per example), `encoded` (encoded bytes held in
  memory) or `pixels` (decoded images concatenated into one flat uint8 buffer, with
  `offsets`) is set.
  """
  names: list[str]
  heights: np.ndarray
  widths: np.ndarray
  paths: Optional[list[str]] = None
  encoded: Optional[list[bytes]] = None
  pixels: Optional[np.ndarray] = None
  offsets: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.names)

  def read_bytes(self, i: int) -> bytes:
    if self.paths is not None:
      with tf.io.gfile.GFile(self.paths[i], "rb") as f:
        return f.read()
    return self.encoded[i]

  def crop_fn(self, crop: int) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """Returns `(index, y0, x0) -> [crop, crop, 3] uint8` usable inside tf.data."""
    widths = tf.constant(self.widths, tf.int64)
    if self.pixels is not None:
      buf = tf.constant(self.pixels)
      offsets = tf.constant(self.offsets, tf.int64)

      def crop_decoded(idx, y0, x0):
        w = widths[idx]
        # Only the crop's rows are sliced out of the flat buffer: no per-example copy of
        # the whole image.
        rows = tf.slice(buf, [offsets[idx] + y0 * w * 3], [crop * w * 3])
        rows = tf.reshape(rows, tf.stack([tf.constant(crop, tf.int64), w, 3]))
        return tf.slice(rows, tf.stack([0, x0, 0]), [crop, crop, 3])
      return crop_decoded

    if self.paths is not None:
      paths = tf.constant(self.paths)
      load = lambda idx: tf.io.read_file(paths[idx])
    else:
      # A captured eager tensor: handed to the map function as an input, not embedded
      # as a graph constant (so the 2 GB GraphDef limit does not apply).
      blobs = tf.constant(self.encoded, tf.string)
      load = lambda idx: blobs[idx]

    def crop_encoded(idx, y0, x0):
      # The whole image is decoded, like the official cv2.imread: decode_and_crop_jpeg
      # would be faster for JPEGs but differs from decode-then-crop near MCU borders.
      img = tf.io.decode_image(load(idx), channels=3, dtype=tf.uint8, expand_animations=False)
      return tf.ensure_shape(tf.slice(img, tf.stack([y0, x0, 0]), [crop, crop, 3]),
                             [crop, crop, 3])
    return crop_encoded


def _folder_store(dirs: Sequence[str], field: str) -> tuple[_Store, list[str]]:
  paths = []
  for d in dirs:
    paths.extend(list_image_files(d, field))
  readers = [functools.partial(tf.io.gfile.GFile, p, "rb") for p in paths]
  ok, infos, bad = _probe_all(paths, readers)
  if not ok:
    raise DataError(f"config.{field}: none of the {len(paths)} image files in "
                    f"{', '.join(dirs)} is a readable PNG/JPEG/BMP image "
                    f"(e.g. {bad[0]})")
  paths = [paths[i] for i in ok]
  return _Store(
      names=paths,
      heights=np.array([h for h, _, _ in infos], np.int64),
      widths=np.array([w for _, w, _ in infos], np.int64),
      paths=paths), bad


def _tfds_store(data: ml_collections.ConfigDict) -> tuple[_Store, list[str]]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, split = data.tfds_name, data.tfds_split
  key = data.get("tfds_image_key", "hr")
  data_dir = data.tfds_data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"config.data.tfds_name: cannot load tfds dataset {name!r}: {e}") from e
  features = builder.info.features
  if key not in features:
    raise DataError(f"config.data.tfds_image_key: tfds dataset {name!r} has no feature "
                    f"{key!r} (features: {sorted(features.keys())})")
  if not isinstance(features[key], tfds.features.Image):
    raise DataError(f"config.data.tfds_image_key: feature {key!r} of {name!r} is not an image")
  # Keep every image feature encoded: we need the bytes of `key`, the rest is dropped.
  decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
              if isinstance(f, tfds.features.Image)}
  try:
    if data.get("tfds_download", True):
      builder.download_and_prepare()
  except OSError as e:  # requests' ConnectionError (no internet) is an OSError
    cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise DataError(f"cannot download tfds dataset {name!r} (no internet?): "
                    f"{type(e).__name__}: {cause}; give a folder of HR training images "
                    "instead: --config.data.train_dir=FOLDER (data.source 'auto' or "
                    "'folder')") from e
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"config.data.tfds_*: cannot read split {split!r} of tfds dataset "
                    f"{name!r} (data_dir {data_dir or 'default'}): {e}") from e
  try:
    ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"config.data.tfds_*: cannot read split {split!r} of tfds dataset "
                    f"{name!r} (data_dir {data_dir or 'default'}): {e}") from e
  encoded = [bytes(b) for b in ds.map(lambda ex: ex[key]).as_numpy_iterator()]
  if not encoded:
    raise DataError(f"config.data.tfds_split: split {split!r} of {name!r} is empty")
  names = [f"{name}/{split}[{i}]" for i in range(len(encoded))]
  readers = [functools.partial(io.BytesIO, b) for b in encoded]
  ok, infos, bad = _probe_all(names, readers)
  if not ok:
    raise DataError(f"config.data.tfds_name: no readable image in {name!r} {split!r}")
  return _Store(
      names=[names[i] for i in ok],
      heights=np.array([h for h, _, _ in infos], np.int64),
      widths=np.array([w for _, w, _ in infos], np.int64),
      encoded=[encoded[i] for i in ok]), bad


def _pixel_store(names: list[str], images: Sequence[np.ndarray]) -> _Store:
  sizes = np.array([img.size for img in images], np.int64)
  return _Store(
      names=names,
      heights=np.array([img.shape[0] for img in images], np.int64),
      widths=np.array([img.shape[1] for img in images], np.int64),
      pixels=np.concatenate([img.reshape(-1) for img in images]),
      offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))


def _demo_store() -> _Store:
  return _pixel_store(list(DEMO_TRAIN_NAMES), demo_images("train"))


def _decode_all(store: _Store) -> _Store:
  """Decodes every image once into memory (`data.cache_decoded`); names any bad file."""
  def decode(i):
    try:
      img = tf.io.decode_image(store.read_bytes(i), channels=3, dtype=tf.uint8,
                               expand_animations=False).numpy()
    except (tf.errors.OpError, OSError) as e:
      raise DataError(f"corrupt training image {store.names[i]}: "
                      f"{getattr(e, 'message', e)}") from e
    if img.shape[:2] != (store.heights[i], store.widths[i]):
      raise DataError(f"training image {store.names[i]} decodes to {img.shape[:2]}, "
                      f"its header says {(store.heights[i], store.widths[i])}")
    return img
  # TF decoding releases the GIL, so threads decode in parallel.
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
    images = list(pool.map(decode, range(len(store))))
  return _pixel_store(list(store.names), images)


def _subset(store: _Store, keep: Sequence[int]) -> _Store:
  pick = lambda xs: None if xs is None else [xs[i] for i in keep]
  # A decoded store keeps its whole buffer; only the offsets of the kept images remain.
  return dataclasses.replace(
      store, names=pick(store.names), heights=store.heights[keep], widths=store.widths[keep],
      paths=pick(store.paths), encoded=pick(store.encoded),
      offsets=None if store.offsets is None else store.offsets[keep])


def train_source(data: ml_collections.ConfigDict) -> str:
  """`data.source` with "auto" resolved: "folder" if `data.train_dir` is set, else "tfds"."""
  if data.source != "auto":
    return data.source
  return "folder" if str(data.train_dir or "").strip() else "tfds"


def _train_store(config: ml_collections.ConfigDict, crop: int) -> _Store:
  data = config.data
  source = train_source(data)
  if source == "folder":
    store, bad = _folder_store(_split_dirs(data.train_dir, "data.train_dir"), "data.train_dir")
    where = f"config.data.train_dir ({data.train_dir})"
  elif source == "tfds":
    store, bad = _tfds_store(data)
    where = f"tfds {data.tfds_name!r} split {data.tfds_split!r}"
  elif source == "demo":
    store, bad = _demo_store(), []
    where = "the demo images"
  else:
    raise DataError(f"config.data.source must be one of {SOURCES}, got {source!r}")
  if bad:
    _warn_list(f"skipping {len(bad)} unreadable image file(s) in {where}", bad)
  keep = [i for i in range(len(store))
          if store.heights[i] >= crop and store.widths[i] >= crop]
  if not keep:
    largest = max(zip(store.heights, store.widths), key=min)
    raise DataError(
        f"config.data.hr_crop = {crop}: no image in {where} is large enough "
        f"({len(store)} images, the largest crop available is {min(largest)} "
        f"from a {largest[0]}x{largest[1]} image)")
  if len(keep) < len(store):
    kept = set(keep)
    small = [f"{store.names[i]} ({store.heights[i]}x{store.widths[i]})"
             for i in range(len(store)) if i not in kept]
    _warn_list(f"skipping {len(small)} of {len(store)} images in {where} smaller than the "
               f"{crop}x{crop} crop (config.data.hr_crop)", small)
    store = _subset(store, keep)
  if data.get("cache_decoded", False) and store.pixels is None:
    store = _decode_all(store)
  return store


# --------------------------------------------------------------------------
# Training pipeline
# --------------------------------------------------------------------------


def kernel_spec(config: ml_collections.ConfigDict) -> degradation.KernelSpec:
  """The training kernel distribution of `config.degradation` (any kernel family)."""
  try:
    return degradation.kernel_spec_from_config(config.degradation)
  except ValueError as e:
    raise DataError(f"config.degradation: {e}") from e


def _check_train_config(config: ml_collections.ConfigDict, pca_matrix: np.ndarray,
                        process_index: int, process_count: int) -> None:
  scale, crop, k = config.model.scale, config.data.hr_crop, config.degradation.kernel_size
  is_int = lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool)
  if scale not in degradation.SUPPORTED_SCALES:
    raise DataError(f"config.model.scale must be one of {degradation.SUPPORTED_SCALES}, "
                    f"got {scale!r}")
  if not is_int(crop) or crop <= 0 or crop % scale:
    raise DataError(f"config.data.hr_crop must be a positive multiple of the scale {scale}, "
                    f"got {crop!r}")
  if crop < k:
    raise DataError(f"config.data.hr_crop = {crop} is smaller than the {k}x{k} blur kernel "
                    "(config.degradation.kernel_size)")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(f"process_index {process_index} must be in [0, process_count = "
                    f"{process_count})")
  bs = config.batch_size
  if not is_int(bs) or bs <= 0 or bs % process_count:
    raise DataError(f"config.batch_size = {bs!r} must be a positive multiple of the number of "
                    f"processes ({process_count})")
  pca = np.asarray(pca_matrix)
  if pca.ndim != 2 or pca.shape[0] != k * k:
    raise DataError(f"pca_matrix must be ({k * k}, code_len) for kernel_size {k}, "
                    f"got shape {pca.shape}")


def _tf_autotune(value: int) -> int:
  return tf.data.AUTOTUNE if value is None or value < 0 else int(value)


@dataclasses.dataclass
class _Plan:
  """Everything the per-example map needs (also used eagerly to locate corrupt files)."""
  store: _Store
  seed: int
  global_batch: int
  local_batch: int
  first: int  # process_index * local_batch

  def seeds(self):
    base = tf.constant([self.seed, _DATA_SALT], tf.int64)
    fold = tf.random.experimental.stateless_fold_in
    return fold(base, tf.constant(0, tf.int64)), fold(base, tf.constant(1, tf.int64))

  def locate(self, n: tf.Tensor):
    """Local element n -> (step, global example j, example seed, image index)."""
    fold = tf.random.experimental.stateless_fold_in
    order_seed, example_seed = self.seeds()
    step = n // self.local_batch
    j = self.first + n % self.local_batch
    g = step * self.global_batch + j
    num = tf.constant(len(self.store), tf.int64)
    perm_seed = fold(order_seed, g // num)
    idx = tf.random.experimental.index_shuffle(g % num, perm_seed, num - 1)
    return step, j, fold(fold(example_seed, step), j), idx


def _example_fn(plan: _Plan, config: ml_collections.ConfigDict,
                pca_matrix: np.ndarray) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
  crop = config.data.hr_crop
  scale = config.model.scale
  deg = config.degradation
  spec = kernel_spec(config)
  try:
    noise = degradation.noise_spec_from_config(deg)
  except ValueError as e:
    raise DataError(f"config.degradation: {e}") from e
  use_flip, use_rot = bool(config.data.use_flip), bool(config.data.use_rot)
  crop_image = plan.store.crop_fn(crop)
  heights = tf.constant(plan.store.heights, tf.int64)
  widths = tf.constant(plan.store.widths, tf.int64)
  pca = tf.constant(np.asarray(pca_matrix, np.float32))
  fold = tf.random.experimental.stateless_fold_in
  dcls_pair = config.model.version == "DCLS"

  def make(n):
    _, _, seed, idx = plan.locate(n)
    rand_int = lambda i, hi: tf.random.stateless_uniform(
        [], fold(seed, i), minval=tf.constant(0, tf.int64), maxval=hi, dtype=tf.int64)
    y0 = rand_int(0, heights[idx] - crop + 1)
    x0 = rand_int(1, widths[idx] - crop + 1)
    hr = tf.cast(crop_image(idx, y0, x0), tf.float32) / 255.0
    # Official `augment`: hflip, then vflip and transpose (use_rot), each with p = 0.5.
    coin = tf.random.stateless_uniform([3], fold(seed, 2)) < 0.5
    if use_flip:
      hr = tf.cond(coin[0], lambda: tf.reverse(hr, [1]), lambda: hr)
    if use_rot:
      hr = tf.cond(coin[1], lambda: tf.reverse(hr, [0]), lambda: hr)
      hr = tf.cond(coin[2], lambda: tf.transpose(hr, [1, 0, 2]), lambda: hr)
    hr = tf.ensure_shape(hr, [crop, crop, 3])
    kernel = degradation.sample_kernels(1, spec, fold(seed, 3))
    # A fixed noise level, or one drawn per image from [noise_sigma, noise_sigma_max].
    sigma = (degradation.sample_noise_sigma(1, noise, fold(seed, 5))
             if noise.sigma_max > noise.sigma_min else noise.sigma_min)
    lr = degradation.degrade(hr[None], kernel, scale, noise_sigma=sigma,
                             seed=fold(seed, 4))
    if noise.jpeg_prob > 0:
      lr = degradation.apply_jpeg(lr, degradation.sample_jpeg_quality(1, noise, fold(seed, 6)))
    lr = lr[0]
    if deg.quantize_lr:
      lr = degradation.quantize_8bit(lr)
    out = dict(lr=lr, hr=hr, kernel=kernel[0], code=degradation.encode(kernel, pca)[0])
    if dcls_pair:  # DCLS's kernel loss: noise-free bicubic LR of the blurred and clean HR
      out["lr_blurred"] = degradation.degrade(hr[None], kernel, scale)[0]
      out["lr_clean"] = degradation.imresize(hr, 1.0 / scale)
    return out
  return make


def _resolve_processes(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return int(process_index), int(process_count)


def _build(config, pca_matrix, start_step, process_index, process_count):
  process_index, process_count = _resolve_processes(process_index, process_count)
  _check_train_config(config, pca_matrix, process_index, process_count)
  if not isinstance(start_step, (int, np.integer)) or start_step < 0:
    raise DataError(f"start_step must be a non-negative int, got {start_step!r}")
  store = _train_store(config, config.data.hr_crop)
  local = config.batch_size // process_count
  plan = _Plan(store, int(config.seed), int(config.batch_size), local, process_index * local)
  ds = tf.data.Dataset.counter(int(start_step) * local, dtype=tf.int64)
  # The map function is plain TF ops (Python `if`s on config values only): AutoGraph's
  # source transformation of it and of `degradation` would cost ~4 s per start, for the
  # same graph.
  make = tf.autograph.experimental.do_not_convert(_example_fn(plan, config, pca_matrix))
  ds = ds.map(make, num_parallel_calls=_tf_autotune(config.data.num_parallel_calls),
              deterministic=True)
  ds = ds.batch(local, drop_remainder=True)
  if config.data.prefetch:
    ds = ds.prefetch(_tf_autotune(config.data.prefetch))
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return ds, plan


def create_train_dataset(config: ml_collections.ConfigDict, pca_matrix: np.ndarray, *,
                         start_step: int = 0, process_index: Optional[int] = None,
                         process_count: Optional[int] = None) -> tf.data.Dataset:
  """The infinite tf.data.Dataset behind `create_train_iterator` (same arguments)."""
  return _build(config, pca_matrix, start_step, process_index, process_count)[0]


def _find_corrupt(plan: _Plan, step: int) -> Optional[str]:
  """Decodes the images of one step eagerly; returns 'name: error' of the first failure."""
  for n in range(step * plan.local_batch, (step + 1) * plan.local_batch):
    idx = int(plan.locate(tf.constant(n, tf.int64))[3])
    try:
      tf.io.decode_image(plan.store.read_bytes(idx), channels=3, expand_animations=False)
    except (tf.errors.OpError, OSError) as e:
      return f"{plan.store.names[idx]}: {getattr(e, 'message', e)}"
  return None


def _iterate(ds: tf.data.Dataset, plan: _Plan, start_step: int,
             lookahead: int) -> Iterator[dict[str, np.ndarray]]:
  step = start_step
  it = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      if plan.store.pixels is None:
        # Errors surface in order, but look a little ahead in case of prefetching.
        for s in range(step, step + lookahead):
          culprit = _find_corrupt(plan, s)
          if culprit:
            raise DataError(f"corrupt training image {culprit} (used at step {s}); "
                            "remove or repair it") from e
      raise
    yield batch
    step += 1


def create_train_iterator(config: ml_collections.ConfigDict, pca_matrix: np.ndarray, *,
                          start_step: int = 0,
                          process_index: Optional[int] = None,
                          process_count: Optional[int] = None
                          ) -> Iterator[dict[str, np.ndarray]]:
  """Yields host-local training batches for steps start_step, start_step + 1, ... (forever).

  Each batch (numpy, b = config.batch_size // process_count):
    'lr':     [b, hr_crop/scale, hr_crop/scale, 3] float32 (multiples of 1/255 when
              config.degradation.quantize_lr; not clipped unless noise is added),
    'hr':     [b, hr_crop, hr_crop, 3] float32 in [0, 1],
    'kernel': [b, k, k] float32, the true blur kernel (sums to 1),
    'code':   [b, code_len] float32 = degradation.encode(kernel, pca_matrix).
  Host p holds examples [p*b, (p+1)*b) of the global batch. Batch i is a pure function of
  (config, i): see the module docstring. Configuration and data problems raise `DataError`
  here, before the first batch; a corrupt file found while decoding raises it on `next`.
  """
  ds, plan = _build(config, pca_matrix, start_step, process_index, process_count)
  lookahead = 2 + max(int(config.data.prefetch), 0)
  return _iterate(ds, plan, int(start_step), lookahead)


# --------------------------------------------------------------------------
# Validation set
# --------------------------------------------------------------------------


def _decode_file(path: str) -> np.ndarray:
  data = tf.io.read_file(path)
  return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False).numpy()


def _val_images(config: ml_collections.ConfigDict) -> tuple[list[str], list[np.ndarray]]:
  data = config.data
  limit = int(data.val_max_images) if data.val_max_images else None
  if data.val_source == "demo":
    names, images = list(DEMO_VAL_NAMES), demo_images("val")
    return names[:limit], images[:limit]
  dirs = _split_dirs(data.val_dir, "data.val_dir")
  found = [(d, p) for d in dirs for p in list_image_files(d, "data.val_dir")]
  stems = [os.path.splitext(os.path.basename(p))[0] for _, p in found]
  if len(set(stems)) < len(stems):  # same stem in two sub-folders: use relative paths
    stems = [os.path.splitext(os.path.relpath(p, d))[0].replace(os.sep, "_")
             for d, p in found]
  names, images, bad = [], [], []
  for (_, path), stem in zip(found, stems):
    if limit is not None and len(images) >= limit:
      break
    try:
      img = _decode_file(path)
    except tf.errors.OpError as e:
      bad.append(f"{path} ({e.message})")
      continue
    names.append(stem)
    images.append(img)
  if bad:
    _warn_list(f"skipping {len(bad)} unreadable validation image(s) in {data.val_dir}", bad)
  if not images:
    raise DataError(f"config.data.val_dir: no readable image in {data.val_dir}")
  return names, images


def create_validation_set(config: ml_collections.ConfigDict,
                          pca_matrix: np.ndarray) -> Optional[dict[str, Any]]:
  """A fixed Gaussian8-style validation set, synthesized once (None for val_source "none").

  HR images come from `data.val_dir` (sorted, recursive; "folder") or the held-out demo
  photographs `DEMO_VAL_NAMES` ("demo"), at most `data.val_max_images`. Each HR image is
  centre-cropped to `data.val_crop` (when > 0; it must be a multiple of the scale, smaller
  images are skipped with a warning) or modcropped to a multiple of the scale; its LR is
  the official Gaussian8 pipeline with the single isotropic sigma `data.val_sigma`
  (kernel size `degradation.kernel_size`, reflect blur, MATLAB bicubic 1/scale, clip,
  8-bit rounding), i.e. `degradation.make_gaussian8_lr`. No noise is added.

  Returns a dict (images may differ in size, so per-image lists, in a fixed order):
    'hr':     list of [H, W, 3] float32 in [0, 1] (multiples of 1/255),
    'lr':     list of [H/scale, W/scale, 3] float32 (multiples of 1/255),
    'kernel': [N, k, k] float32 (the same isotropic kernel for every image),
    'code':   [N, code_len] float32 = encode(kernel, pca_matrix),
    'names':  list of N str (file stems, or relative paths with '_' for '/' when stems
              repeat; demo names).
  With val_crop > 0 all images have the same size: `np.stack(val['lr'])` gives a batch.
  """
  source = config.data.val_source
  if source not in VAL_SOURCES:
    raise DataError(f"config.data.val_source must be one of {VAL_SOURCES}, got {source!r}")
  if source == "none":
    return None
  scale, k = config.model.scale, config.degradation.kernel_size
  if scale not in degradation.SUPPORTED_SCALES:
    raise DataError(f"config.model.scale must be one of {degradation.SUPPORTED_SCALES}, "
                    f"got {scale!r}")
  crop = int(config.data.val_crop or 0)
  if crop < 0 or crop % scale:
    raise DataError(f"config.data.val_crop must be 0 or a positive multiple of the scale "
                    f"{scale}, got {crop}")
  pca = np.asarray(pca_matrix, np.float32)
  if pca.ndim != 2 or pca.shape[0] != k * k:
    raise DataError(f"pca_matrix must be ({k * k}, code_len) for kernel_size {k}, "
                    f"got shape {pca.shape}")
  names, images = _val_images(config)
  kept_names, hrs, lrs, small = [], [], [], []
  for name, img in zip(names, images):
    h, w = img.shape[:2]
    if crop:
      if h < crop or w < crop:
        small.append(f"{name} ({h}x{w})")
        continue
      y0, x0 = (h - crop) // 2, (w - crop) // 2
      img = img[y0:y0 + crop, x0:x0 + crop]
    else:
      img = degradation.modcrop(img, scale)
    if min(img.shape[:2]) < max(k, scale):
      small.append(f"{name} ({h}x{w})")
      continue
    lr = degradation.make_gaussian8_lr(img, scale, k, sigmas=[config.data.val_sigma])[0]
    kept_names.append(name)
    hrs.append(img.astype(np.float32) / 255.0)
    lrs.append(lr.astype(np.float32) / 255.0)
  if small:
    _warn_list(f"skipping {len(small)} validation image(s) smaller than "
               f"{crop or k}x{crop or k}", small)
  if not hrs:
    raise DataError(f"config.data.val_crop = {crop}: no validation image is large enough")
  kernel = degradation.isotropic_gaussian_kernel(k, float(config.data.val_sigma)).numpy()
  kernels = np.repeat(kernel[None], len(hrs), axis=0)
  code = degradation.encode(kernels, pca).numpy()
  return dict(hr=hrs, lr=lrs, kernel=kernels, code=code, names=kept_names)
