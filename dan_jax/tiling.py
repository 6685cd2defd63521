"""Tile geometry and blending for tiled inference: where tiles go and how they are weighted.

Pure numpy, no model: tiles overlap by `overlap` LR pixels; each tile's result is weighted by
a window that ignores everything within `radius` (a receptive-field radius) of a cut and
ramps (raised cosine) over the rest of the overlap, normalised to sum to one at every pixel.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
  """Tile origins along one axis: stride tile - overlap, the last tile flush with the end."""
  if n <= tile:
    return [0]
  starts = list(range(0, n - tile, tile - overlap))
  return starts + [n - tile]


def layout(h: int, w: int, tile: int, overlap: int) -> tuple[int, int, list[tuple[int, int]]]:
  """(tile height, tile width, [(y, x) origin of every tile]) for an h x w image."""
  th, tw = min(tile, h), min(tile, w)
  boxes = [(y, x) for y in tile_starts(h, tile, overlap) for x in tile_starts(w, tile, overlap)]
  return th, tw, boxes


def _ramp(d: np.ndarray, margin: float, width: float) -> np.ndarray:
  if width <= 0:
    return (d >= margin).astype(np.float64)
  t = np.clip((d - margin) / width, 0.0, 1.0)
  return 0.5 - 0.5 * np.cos(np.pi * t)


def axis_window(
  length: int, cut_before: bool, cut_after: bool, scale: int, margin: float, width: float
) -> np.ndarray:
  """Blend weights along one axis of a tile, sampled at scale x its LR length.

  Distances are from pixel centres to the tile's cut edges, in LR pixels; an axis end that
  is an image border is no cut and keeps weight one.
  """
  pos = (np.arange(length * scale) + 0.5) / scale
  w = np.ones_like(pos)
  if cut_before:
    w *= _ramp(pos, margin, width)
  if cut_after:
    w *= _ramp(length - pos, margin, width)
  return w


def margin_and_width(overlap: int, radius: int) -> tuple[int, int]:
  """(ignored margin, ramp width) at a cut: exact when the overlap holds both margins."""
  if overlap >= 2 * radius:
    return radius, overlap - 2 * radius  # exact: nothing within `radius` of a cut counts
  return 0, overlap  # approximate: feather over the whole overlap


def blend_windows(
  h: int,
  w: int,
  th: int,
  tw: int,
  boxes: list[tuple[int, int]],
  scale: int,
  overlap: int,
  radius: int,
) -> Callable[[int], np.ndarray]:
  """Tile i's blend weights [th*scale, tw*scale], normalised to sum to one over tiles.

  Windows depend only on which tile edges are cuts, so a few are built and shared; only
  the normaliser is image-sized.
  """
  margin, width = margin_and_width(overlap, radius)
  cache: dict[tuple, np.ndarray] = {}

  def raw(y, x):
    key = (y > 0, y + th < h, x > 0, x + tw < w)
    if key not in cache:
      cache[key] = np.outer(
        axis_window(th, key[0], key[1], scale, margin, width),
        axis_window(tw, key[2], key[3], scale, margin, width),
      ).astype(np.float32)
    return cache[key]

  total = np.zeros((h * scale, w * scale), np.float32)
  for y, x in boxes:
    total[y * scale : (y + th) * scale, x * scale : (x + tw) * scale] += raw(y, x)
  if not np.all(total > 0):
    raise AssertionError("tile windows leave pixels uncovered")  # a bug, not user input

  def window(i):
    y, x = boxes[i]
    return raw(y, x) / total[y * scale : (y + th) * scale, x * scale : (x + tw) * scale]

  return window
