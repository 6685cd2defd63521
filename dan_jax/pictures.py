"""Side-by-side pictures for the Colab notebooks (numpy + Pillow only).

The training and inference notebooks show LR / bicubic / SR / ground truth and blur
kernels as captioned rows; these helpers build those PIL images once for both.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from dan_jax import image_io


@functools.lru_cache(maxsize=None)
def _font() -> ImageFont.ImageFont:
  """The caption font: Pillow's default at 14 px (a fixed-size bitmap on Pillow < 10.1)."""
  try:
    return ImageFont.load_default(size=14)
  except TypeError:  # Pillow < 10.1 takes no size
    return ImageFont.load_default()


def to_pil(x: np.ndarray) -> Image.Image:
  """A float [H, W, 3] image in [0, 1] (or uint8) as a PIL image."""
  x = np.asarray(x)
  return Image.fromarray(x if x.dtype == np.uint8 else image_io.quantize(x, 8))


def kernel_pil(kernel: np.ndarray, size: int) -> Image.Image:
  """A blur kernel scaled to its peak, enlarged (nearest) to an RGB size x size picture."""
  k = Image.fromarray(image_io.kernel_to_display(kernel, min_size=size)).convert("RGB")
  return k.resize((size, size), Image.NEAREST)


def fit(img: Image.Image, height: int) -> Image.Image:
  """Resized (nearest, so pixels stay visible) to the given height, aspect kept."""
  w = max(1, round(img.width * height / img.height))
  return img.resize((w, height), Image.NEAREST)


def panel_row(
  images: Sequence[Image.Image], captions: Sequence[str], height: int = 192, gap: int = 6
) -> Image.Image:
  """Images side by side at one height on white, each with a caption above."""
  images = [fit(im, height) for im in images]
  band = 20 * max(c.count("\n") + 1 for c in captions)  # 20 px per caption line
  width = sum(im.width for im in images) + gap * (len(images) - 1)
  out = Image.new("RGB", (width, band + height), "white")
  draw = ImageDraw.Draw(out)
  x = 0
  for im, c in zip(images, captions):
    draw.multiline_text((x + 2, 2), c, fill="black", font=_font())
    out.paste(im, (x, band))
    x += im.width + gap
  return out


def stack(rows: Sequence[Image.Image], gap: int = 6) -> Image.Image:
  """Pictures one above the other (left-aligned) on white."""
  out = Image.new(
    "RGB",
    (max(r.width for r in rows), sum(r.height for r in rows) + gap * (len(rows) - 1)),
    "white",
  )
  y = 0
  for r in rows:
    out.paste(r, (0, y))
    y += r.height + gap
  return out
