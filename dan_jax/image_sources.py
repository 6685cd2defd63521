"""Where training and validation HR images come from: folders, tfds, the demo photographs.

An image source (`config.data.source`: folder, tfds, auto, demo) is an `ImageStore`: N
images with known sizes and a graph-mode crop, built up front (headers probed, unusable
files skipped with one warning) so that the stateless image choice of `input_pipeline` can
index it. Every problem is a `DataError` naming the field, folder or file. The sources,
decoding costs and error policy are in the README ("Training data").
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import logging
import os
from typing import Any, Callable, Optional, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from dan_jax import image_io
from dan_jax.errors import DataError

_log = logging.getLogger("dan_jax.input_pipeline")  # one logger for the data pipeline

IMAGE_EXTENSIONS = image_io.TF_IMAGE_EXTENSIONS  # what the training folders may hold
SOURCES = ("auto", "folder", "tfds", "demo")

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


# --------------------------------------------------------------------------
# Demo images
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _demo_images_cached() -> tuple[np.ndarray, ...]:
  import skimage.data

  images = []
  for name, load in _DEMO_LOADERS:
    img = np.ascontiguousarray(load(skimage.data))
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
      raise DataError(f"scikit-image demo image {name!r} is not uint8 RGB: {img.dtype} {img.shape}")
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


def split_dirs(value: Any, field: str) -> list[str]:
  """The folders of a config field: a comma-separated string or a sequence."""
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
    paths.extend(
      os.path.join(root, f) for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
    )
  if not paths:
    raise DataError(f"config.{field}: no {'/'.join(IMAGE_EXTENSIONS)} images in {directory}")
  return sorted(paths)


def _probe_header(read: Callable[[], Any]) -> tuple[int, int, str]:
  """(height, width, PIL format) from the header only; raises on anything unreadable."""
  from PIL import Image

  with read() as f:
    with Image.open(f) as im:
      w, h = im.size
      fmt = im.format
  if fmt not in _DECODABLE_FORMATS:
    raise ValueError(f"{fmt} files are not supported (PNG, JPEG or BMP)")
  return h, w, fmt


def _probe_all(
  names: Sequence[str], readers: Sequence[Callable[[], Any]]
) -> tuple[list[int], list[tuple[int, int, str]], list[str]]:
  """Probes headers in parallel (remote file systems pay one round trip per file)."""

  def probe(read):
    try:
      return _probe_header(read), None
    except Exception as e:
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


def warn_list(msg: str, items: Sequence[str], limit: int = 5) -> None:
  """One warning naming the first `limit` items (skipped files and the like)."""
  more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
  _log.warning("%s: %s%s", msg, ", ".join(items[:limit]), more)


# --------------------------------------------------------------------------
# Image stores: N images with known sizes and a graph-mode crop
# --------------------------------------------------------------------------


@dataclasses.dataclass
class ImageStore:
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
      return tf.ensure_shape(tf.slice(img, tf.stack([y0, x0, 0]), [crop, crop, 3]), [crop, crop, 3])

    return crop_encoded


def _folder_store(dirs: Sequence[str], field: str) -> tuple[ImageStore, list[str]]:
  paths = []
  for d in dirs:
    paths.extend(list_image_files(d, field))
  readers = [functools.partial(tf.io.gfile.GFile, p, "rb") for p in paths]
  ok, infos, bad = _probe_all(paths, readers)
  if not ok:
    raise DataError(
      f"config.{field}: none of the {len(paths)} image files in "
      f"{', '.join(dirs)} is a readable PNG/JPEG/BMP image "
      f"(e.g. {bad[0]})"
    )
  paths = [paths[i] for i in ok]
  return ImageStore(
    names=paths,
    heights=np.array([h for h, _, _ in infos], np.int64),
    widths=np.array([w for _, w, _ in infos], np.int64),
    paths=paths,
  ), bad


def _tfds_store(data: ml_collections.ConfigDict) -> tuple[ImageStore, list[str]]:
  import tensorflow_datasets as tfds

  name, split = data.tfds_name, data.tfds_split
  key = data.get("tfds_image_key", "hr")
  data_dir = data.tfds_data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:
    raise DataError(f"config.data.tfds_name: cannot load tfds dataset {name!r}: {e}") from e
  features = builder.info.features
  if key not in features:
    raise DataError(
      f"config.data.tfds_image_key: tfds dataset {name!r} has no feature "
      f"{key!r} (features: {sorted(features.keys())})"
    )
  if not isinstance(features[key], tfds.features.Image):
    raise DataError(f"config.data.tfds_image_key: feature {key!r} of {name!r} is not an image")
  # Keep every image feature encoded: we need the bytes of `key`, the rest is dropped.
  decoders = {
    k: tfds.decode.SkipDecoding() for k, f in features.items() if isinstance(f, tfds.features.Image)
  }
  try:
    if data.get("tfds_download", True):
      builder.download_and_prepare()
  except OSError as e:  # requests' ConnectionError (no internet) is an OSError
    cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise DataError(
      f"cannot download tfds dataset {name!r} (no internet?): "
      f"{type(e).__name__}: {cause}; give a folder of HR training images "
      "instead: --config.data.train_dir=FOLDER (data.source 'auto' or "
      "'folder')"
    ) from e
  except Exception as e:
    raise DataError(
      f"config.data.tfds_*: cannot read split {split!r} of tfds dataset "
      f"{name!r} (data_dir {data_dir or 'default'}): {e}"
    ) from e
  try:
    ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
  except Exception as e:
    raise DataError(
      f"config.data.tfds_*: cannot read split {split!r} of tfds dataset "
      f"{name!r} (data_dir {data_dir or 'default'}): {e}"
    ) from e
  encoded = [bytes(b) for b in ds.map(lambda ex: ex[key]).as_numpy_iterator()]
  if not encoded:
    raise DataError(f"config.data.tfds_split: split {split!r} of {name!r} is empty")
  names = [f"{name}/{split}[{i}]" for i in range(len(encoded))]
  readers = [functools.partial(io.BytesIO, b) for b in encoded]
  ok, infos, bad = _probe_all(names, readers)
  if not ok:
    raise DataError(f"config.data.tfds_name: no readable image in {name!r} {split!r}")
  return ImageStore(
    names=[names[i] for i in ok],
    heights=np.array([h for h, _, _ in infos], np.int64),
    widths=np.array([w for _, w, _ in infos], np.int64),
    encoded=[encoded[i] for i in ok],
  ), bad


def _pixel_store(names: list[str], images: Sequence[np.ndarray]) -> ImageStore:
  sizes = np.array([img.size for img in images], np.int64)
  return ImageStore(
    names=names,
    heights=np.array([img.shape[0] for img in images], np.int64),
    widths=np.array([img.shape[1] for img in images], np.int64),
    pixels=np.concatenate([img.reshape(-1) for img in images]),
    offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
  )


def _demo_store() -> ImageStore:
  return _pixel_store(list(DEMO_TRAIN_NAMES), demo_images("train"))


def _decode_all(store: ImageStore) -> ImageStore:
  """Decodes every image once into memory (`data.cache_decoded`); names any bad file."""

  def decode(i):
    try:
      img = tf.io.decode_image(
        store.read_bytes(i), channels=3, dtype=tf.uint8, expand_animations=False
      ).numpy()
    except (tf.errors.OpError, OSError) as e:
      raise DataError(f"corrupt training image {store.names[i]}: {getattr(e, 'message', e)}") from e
    if img.shape[:2] != (store.heights[i], store.widths[i]):
      raise DataError(
        f"training image {store.names[i]} decodes to {img.shape[:2]}, "
        f"its header says {(store.heights[i], store.widths[i])}"
      )
    return img

  # TF decoding releases the GIL, so threads decode in parallel.
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
    images = list(pool.map(decode, range(len(store))))
  return _pixel_store(list(store.names), images)


def _subset(store: ImageStore, keep: Sequence[int]) -> ImageStore:
  pick = lambda xs: None if xs is None else [xs[i] for i in keep]
  # A decoded store keeps its whole buffer; only the offsets of the kept images remain.
  return dataclasses.replace(
    store,
    names=pick(store.names),
    heights=store.heights[keep],
    widths=store.widths[keep],
    paths=pick(store.paths),
    encoded=pick(store.encoded),
    offsets=None if store.offsets is None else store.offsets[keep],
  )


def train_source(data: ml_collections.ConfigDict) -> str:
  """`data.source` with "auto" resolved: "folder" if `data.train_dir` is set, else "tfds"."""
  if data.source != "auto":
    return data.source
  return "folder" if str(data.train_dir or "").strip() else "tfds"


def train_store(config: ml_collections.ConfigDict, crop: int) -> ImageStore:
  """The usable training images of `config.data` (at least `crop` pixels on each side)."""
  data = config.data
  source = train_source(data)
  if source == "folder":
    store, bad = _folder_store(split_dirs(data.train_dir, "data.train_dir"), "data.train_dir")
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
    warn_list(f"skipping {len(bad)} unreadable image file(s) in {where}", bad)
  keep = [i for i in range(len(store)) if store.heights[i] >= crop and store.widths[i] >= crop]
  if not keep:
    largest = max(zip(store.heights, store.widths), key=min)
    raise DataError(
      f"config.data.hr_crop = {crop}: no image in {where} is large enough "
      f"({len(store)} images, the largest crop available is {min(largest)} "
      f"from a {largest[0]}x{largest[1]} image)"
    )
  if len(keep) < len(store):
    kept = set(keep)
    small = [
      f"{store.names[i]} ({store.heights[i]}x{store.widths[i]})"
      for i in range(len(store))
      if i not in kept
    ]
    warn_list(
      f"skipping {len(small)} of {len(store)} images in {where} smaller than the "
      f"{crop}x{crop} crop (config.data.hr_crop)",
      small,
    )
    store = _subset(store, keep)
  if data.get("cache_decoded", False) and store.pixels is None:
    store = _decode_all(store)
  return store
