"""Paths of workdirs, checkpoints and outputs: local folders or object-store URLs.

Every path a user gives for something written or read back goes through `etils.epath`, so
`gs://bucket/run` works wherever a local folder does. Only local paths are expanded (`~`)
and made absolute; a URL is never turned into a local path. Which layer talks to the object
store, and how to point each at an emulator: README, "Reliability" (Object stores). A leaf
module: it imports nothing from dan_jax.
"""

from __future__ import annotations

import os
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]


def is_url(path: PathLike) -> bool:
  """Whether `path` names an object store location (`scheme://...`), not a local path."""
  return "://" in os.fspath(path)


def path(p: PathLike) -> epath.Path:
  """An epath.Path of `p`: URLs untouched, local paths with `~` expanded and absolute."""
  s = os.fspath(p)
  if is_url(s):
    return epath.Path(s)
  return epath.Path(os.path.abspath(os.path.expanduser(s)))


def canonical(p: PathLike) -> str:
  """A key that is equal for two names of one file (symlinks resolved for local paths)."""
  if is_url(p):
    return os.fspath(path(p))
  return os.path.realpath(os.path.expanduser(os.fspath(p)))


def join(base: PathLike, *parts: str) -> str:
  """`base/parts...` as a string (URLs keep their scheme; local paths stay as given)."""
  if is_url(base):
    return os.fspath(path(base).joinpath(*parts))
  return os.path.join(os.path.expanduser(os.fspath(base)), *parts)


def write_bytes(p: PathLike, data: bytes, overwrite: bool = False) -> None:
  """Writes a file; without `overwrite` an existing file raises FileExistsError.

  Local files: created exclusively, or (with `overwrite`) written to a temporary file that
  replaces the old one in one rename, so an interrupted write never leaves half a file.
  Object stores write whole objects atomically; there the existence check comes first (a
  concurrent writer between check and write is not detected).
  """
  target = path(p)
  if is_url(target):
    if not overwrite and target.exists():
      raise FileExistsError(f"{target} exists")
    target.write_bytes(data)
    return
  if not overwrite:
    with open(target, "xb") as f:
      f.write(data)
    return
  tmp = f"{target}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, target)
  except OSError:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_bytes(p: PathLike) -> bytes:
  """The content of a file (local or URL)."""
  return path(p).read_bytes()
