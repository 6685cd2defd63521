"""Reading and writing images for inference and evaluation (numpy + Pillow, tifffile).

`read_image(path)` returns a `LoadedImage`: float32 RGB in [0, 1] (what the model
consumes), the alpha channel apart, and what writing the result back in the input's own
form needs (grayscale or colour, 8 or 16 bits, alpha). PNG (1-16 bit; 16-bit through
TensorFlow), JPEG, BMP, TIFF and WebP; EXIF orientation applied. Every problem raises
`ImageError` naming the file and the reason; writers never replace a file unless told to.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Optional

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from dan_jax import runtime
from dan_jax import storage
from dan_jax.errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# The subset tf.io.decode_image reads: training folders and Gaussian8 sets, which are
# decoded by TensorFlow, take only these.
TF_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
_EXIF_ORIENTATION = 0x0112


@dataclasses.dataclass
class LoadedImage:
  """An image ready for the model, plus what is needed to write the result back.

  Attributes:
    rgb: [H, W, 3] float32 in [0, 1] (grayscale replicated to 3 channels).
    alpha: [H, W] float32 in [0, 1], or None.
    gray: the file was grayscale (write the result as grayscale).
    bit_depth: 8 or 16 (bits per channel of the file; the result is written the same way).
  """

  rgb: np.ndarray
  alpha: Optional[np.ndarray]
  gray: bool
  bit_depth: int

  @property
  def height(self) -> int:
    return self.rgb.shape[0]

  @property
  def width(self) -> int:
    return self.rgb.shape[1]


def is_image_name(path: str) -> bool:
  """Whether the extension is one `read_image` supports."""
  return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
  """Applies an EXIF orientation (1-8) to an HW or HWC array, as ImageOps.exif_transpose."""
  ops = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
  }
  return np.ascontiguousarray(ops.get(int(orientation), ops[1])(img))


def _png_bit_depth(data: bytes) -> int:
  # IHDR is always the first chunk: signature(8) length(4) type(4) width(4) height(4) depth(1)
  if len(data) < 25 or data[12:16] != b"IHDR":
    return 8
  return data[24]


def _orientation(data: bytes) -> int:
  """EXIF orientation, 1 when absent or unreadable (metadata must not fail the read)."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      value = im.getexif().get(_EXIF_ORIENTATION, 1)
    return int(value) if int(value) in range(1, 9) else 1
  except Exception:
    return 1


def _decode_png16(data: bytes, name: str) -> np.ndarray:
  tf = runtime.require_tensorflow(f"{name}: reading a 16-bit PNG")
  try:
    return tf.io.decode_png(data, channels=0, dtype=tf.uint16).numpy()
  except tf.errors.OpError as e:
    raise ImageError(f"{name}: corrupt or truncated 16-bit PNG ({e.message.strip()})") from e


def _decode_tiff(data: bytes, name: str) -> Optional[np.ndarray]:
  """Pixels of a TIFF through tifffile (16-bit colour); None to let Pillow try."""
  try:
    import tifffile

    arr = tifffile.imread(io.BytesIO(data))
  except Exception:
    return None  # e.g. JPEG-compressed TIFF without imagecodecs: Pillow may decode it
  arr = np.asarray(arr)
  if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4) and arr.shape[2] > 4:
    arr = np.moveaxis(arr, 0, -1)  # planar (separate) configuration
  return arr


def _decode_pillow(data: bytes, name: str) -> np.ndarray:
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()  # decoding is lazy: truncation only shows here
      mode = im.mode
      if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
      elif mode == "1":
        im = im.convert("L")
      elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
      elif mode == "La":
        im = im.convert("LA")
      elif mode == "RGBa":
        im = im.convert("RGBA")
      arr = np.asarray(im)
  except UnidentifiedImageError as e:
    raise ImageError(f"{name}: not a readable image (unknown or corrupt format)") from e
  except Image.DecompressionBombError as e:
    raise ImageError(f"{name}: {e}") from e
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(f"{name}: corrupt or truncated image ({e})") from e
  if mode.startswith("I;16") or (
    mode == "I" and arr.size and 0 <= arr.min() and arr.max() <= 65535
  ):
    arr = arr.astype(np.uint16)
  return arr


def decode_image(data: bytes, name: str = "image") -> LoadedImage:
  """Decodes encoded image bytes (see `read_image`)."""
  if not data:
    raise ImageError(f"{name}: empty file")
  arr = None
  if data.startswith(_PNG_SIGNATURE) and _png_bit_depth(data) == 16:
    arr = _decode_png16(data, name)
  elif data[:4] in _TIFF_SIGNATURES:
    arr = _decode_tiff(data, name)
  if arr is None:
    arr = _decode_pillow(data, name)
  arr = apply_orientation(arr, _orientation(data))
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or min(arr.shape[:2]) < 1:
    raise ImageError(
      f"{name}: unsupported pixel layout {arr.shape} (expected gray, gray+alpha, RGB or RGBA)"
    )
  if arr.dtype == np.uint8:
    bits, x = 8, arr.astype(np.float32) / np.float32(255.0)
  elif arr.dtype == np.uint16:
    bits, x = 16, arr.astype(np.float32) / np.float32(65535.0)
  elif arr.dtype == np.bool_:
    bits, x = 8, arr.astype(np.float32)
  else:
    raise ImageError(
      f"{name}: unsupported sample type {arr.dtype} (8- or 16-bit integer images only)"
    )
  c = x.shape[2]
  gray = c in (1, 2)
  alpha = x[..., -1] if c in (2, 4) else None
  color = x[..., :1] if gray else x[..., :3]
  rgb = np.ascontiguousarray(np.broadcast_to(color, color.shape[:2] + (3,)))
  return LoadedImage(
    rgb=rgb, alpha=None if alpha is None else np.ascontiguousarray(alpha), gray=gray, bit_depth=bits
  )


def read_image(path: str) -> LoadedImage:
  """Reads an image file into a `LoadedImage` (upright, float RGB in [0, 1]).

  Raises:
    ImageError: naming the file and the problem (missing, empty, corrupt, unsupported).
  """
  name = path
  try:
    data = storage.read_bytes(path)
  except OSError as e:
    raise ImageError(f"{path}: cannot read ({e.strerror or e})") from e
  return decode_image(data, name)


def quantize(x: np.ndarray, bit_depth: int) -> np.ndarray:
  """[0, 1] float -> uint8/uint16, clipped and rounded half to even (official tensor2img)."""
  x = np.clip(np.asarray(x, np.float32), np.float32(0.0), np.float32(1.0))
  if np.isnan(x).any():
    raise ImageError("image contains NaN values")
  if bit_depth == 8:
    return np.round(x * np.float32(255.0)).astype(np.uint8)
  if bit_depth == 16:
    return np.round(x.astype(np.float64) * 65535.0).astype(np.uint16)
  raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")


def to_output(
  rgb: np.ndarray, alpha: Optional[np.ndarray], gray: bool, bit_depth: int
) -> np.ndarray:
  """Assembles a result in the input's form: HWC uint8/uint16 with 1-4 channels.

  Grayscale results are the mean of the 3 model channels (the model saw the gray value
  replicated, so they are nearly equal).
  """
  color = rgb.mean(axis=-1, keepdims=True) if gray else rgb
  parts = [color] if alpha is None else [color, alpha[..., None]]
  return quantize(np.concatenate(parts, axis=-1), bit_depth)


def encode_png(img: np.ndarray) -> bytes:
  """PNG bytes of an HW or HWC (1-4 channels) uint8 or uint16 image."""
  img = np.asarray(img)
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
    raise ImageError(f"cannot write an image of shape {img.shape} as PNG")
  if img.dtype == np.uint16:
    tf = runtime.require_tensorflow("Writing a 16-bit PNG")
    return tf.io.encode_png(img).numpy()
  if img.dtype != np.uint8:
    raise ImageError(f"cannot write {img.dtype} pixels as PNG (uint8 or uint16 only)")
  mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[img.shape[2]]
  buf = io.BytesIO()
  Image.fromarray(img[..., 0] if mode == "L" else img, mode=mode).save(buf, format="PNG")
  return buf.getvalue()


def write_bytes(path: str, data: bytes, overwrite: bool = False) -> None:
  """Writes a file; without `overwrite` an existing file is an error (and is left alone).

  With `overwrite`, a local file is replaced in one rename, so an interrupted write never
  leaves a half-written file behind (`storage.write_bytes`; URLs work too).
  """
  try:
    storage.write_bytes(path, data, overwrite)
  except FileExistsError as e:
    raise ImageError(f"{path} exists (pass --overwrite to replace it)") from e
  except OSError as e:
    raise ImageError(f"cannot write {path}: {e.strerror or e}") from e


def write_png(path: str, img: np.ndarray, overwrite: bool = False) -> None:
  """Writes an HW/HWC uint8 or uint16 image as PNG (see `write_bytes` for `overwrite`)."""
  write_bytes(path, encode_png(img), overwrite)


def kernel_to_display(kernel: np.ndarray, min_size: int = 256) -> np.ndarray:
  """A blur kernel as a uint8 grayscale picture: scaled to its maximum, enlarged (nearest).

  The picture is only for looking at; the exact values go to a `.npy` beside it.
  """
  k = np.asarray(kernel, np.float64)
  peak = k.max()
  k = np.clip(k / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(k)
  factor = max(1, -(-min_size // max(k.shape)))
  k = np.repeat(np.repeat(k, factor, axis=0), factor, axis=1)
  return np.round(k * 255.0).astype(np.uint8)
