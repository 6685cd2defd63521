"""The sweep's test sets, scoring and run status (used by launch/sweep.py).

A test set is a folder (or gs:// prefix) of HR images, or the held-out demo photos. For
each (test set, test kernel space) the LR set is synthesized once under
WORKDIR/test_sets/NAME/SPACE/: full images (modcropped to the scale), one kernel per image
drawn from a fixed seed, the config's noise, 8-bit LR, with a manifest.json; it is reused
while the manifest matches and rebuilt (with a message) when it does not. Runs are scored
through `predict.Predictor` (batched, tiled where tiles are exact) with
`metrics.score_prediction`, and each run's scores are kept in RUN/scores.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any, Callable, Optional

import numpy as np

from dan_jax import storage
from dan_jax.errors import Error
from dan_jax.errors import UsageError

TEST_SEED = 1234  # the test sets' kernels and noise: the same for every trained model
DEMO = "demo"  # the default test set: the held-out demo photos (no download)
SCORES_FILE = "scores.json"
ERROR_FILE = "error.txt"
LOG_FILE = "train.log"
METRICS = ("psnr_y", "ssim_y", "kernel_mse")


class SweepError(Error, ValueError):
  """A sweep that cannot be run as asked (test sets, runs, scheduler)."""


# ---------------------------------------------------------------------------------------
# Test sets
# ---------------------------------------------------------------------------------------


def parse_test_sets(value: str) -> dict[str, str]:
  """{name: folder} from `NAME=PATH,NAME=PATH` ("" or "demo": the demo photos)."""
  out: dict[str, str] = {}
  for item in [s.strip() for s in (value or DEMO).split(",") if s.strip()]:
    if item == DEMO:
      out[DEMO] = DEMO
      continue
    name, sep, path = item.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path or not name.replace("_", "").replace("-", "").isalnum():
      raise UsageError(
        f"--test_sets entry {item!r} must be NAME=PATH (letters, digits, _ or - in NAME), "
        "e.g. Set14=/data/Set14"
      )
    if name in out:
      raise UsageError(f"--test_sets names {name} twice")
    out[name] = path
  return out


def hr_listing(name: str, path: str) -> dict[str, int]:
  """{file name: size in bytes} of the HR images of a test set (checks the folder)."""
  from dan_jax import image_io

  if path == DEMO:
    from dan_jax.image_sources import DEMO_VAL_NAMES

    return {n: 0 for n in DEMO_VAL_NAMES}
  folder = storage.path(path)
  if not folder.is_dir():
    raise SweepError(f"test set {name}: {path} is not a folder")
  files = {
    f.name: f.stat().length
    for f in sorted(folder.iterdir(), key=lambda f: f.name)
    if not f.name.startswith(".") and image_io.is_image_name(f.name)
  }
  if not files:
    raise SweepError(
      f"test set {name}: no images in {path} (supported: {', '.join(image_io.IMAGE_EXTENSIONS)})"
    )
  return files


@dataclasses.dataclass
class TestSet:
  """One synthesized (test set, test space): 8-bit HR and LR images and true kernels."""

  name: str
  space: str
  digest: str  # of the manifest: scores are valid for this exact set
  images: list[str]
  hr: list[np.ndarray]  # uint8 [sH, sW, 3]
  lr: list[np.ndarray]  # uint8 [H, W, 3] (the model sees value / 255)
  kernels: np.ndarray  # [N, k, k]

  @property
  def key(self) -> str:
    return f"{self.name}/{self.space}"


def _hr_images(name: str, path: str, listing: dict[str, int]) -> list[tuple[str, np.ndarray]]:
  from dan_jax import image_io

  if path == DEMO:
    from dan_jax import input_pipeline

    return list(zip(listing, input_pipeline.demo_images("val")))
  out = []
  for fn in listing:
    img = image_io.read_image(storage.join(path, fn))
    out.append((os.path.splitext(fn)[0], image_io.quantize(img.rgb, 8)))
  stems = [s for s, _ in out]
  if len(set(stems)) != len(stems):
    raise SweepError(f"test set {name}: two HR images share a file stem in {path}")
  return out


def _crop(img: np.ndarray, crop: int, scale: int) -> np.ndarray:
  h, w = img.shape[:2]
  if crop and min(h, w) >= crop:
    y, x = (h - crop) // 2, (w - crop) // 2
    img = img[y : y + crop, x : x + crop]
  return img[: img.shape[0] - img.shape[0] % scale, : img.shape[1] - img.shape[1] % scale]


def manifest(
  name: str,
  path: str,
  space: str,
  *,
  scale: int,
  kernel_size: int,
  noise: dict,
  crop: int = 0,
  max_images: int = 0,
) -> tuple[str, str, dict[str, int]]:
  """(manifest text, its digest, HR listing) of one (test set, test space)."""
  listing = hr_listing(name, path)
  if max_images:
    listing = dict(list(listing.items())[:max_images])
  text = json.dumps(
    {
      "source": path if path == DEMO else os.fspath(storage.path(path)),
      "space": space,
      "seed": TEST_SEED,
      "scale": scale,
      "kernel_size": kernel_size,
      "noise": noise,
      "crop": crop,
      "files": listing,
    },
    indent=1,
    sort_keys=True,
  )
  return text, hashlib.sha256(text.encode()).hexdigest()[:16], listing


def prepare_test_set(
  name: str,
  path: str,
  space: str,
  workdir: str,
  *,
  scale: int,
  kernel_size: int,
  noise: dict,
  crop: int = 0,
  max_images: int = 0,
  log: Callable[[str], None] = print,
) -> TestSet:
  """Builds (or reuses) WORKDIR/test_sets/NAME/SPACE and loads it."""
  from dan_jax import degradation
  from dan_jax import image_io

  text, digest, listing = manifest(
    name,
    path,
    space,
    scale=scale,
    kernel_size=kernel_size,
    noise=noise,
    crop=crop,
    max_images=max_images,
  )
  root = storage.path(storage.join(workdir, "test_sets", name, space))
  manifest_path = root / "manifest.json"
  old = None
  if manifest_path.exists():
    try:
      old = manifest_path.read_text()
    except OSError:
      old = None
  if old != text:
    if old is not None:
      log(f"test set {name}/{space}: {root} was built with other settings or images; rebuilding")
    else:
      log(f"test set {name}/{space}: synthesizing {len(listing)} image(s) in {root}")
    if manifest_path.exists():
      manifest_path.unlink()  # written last: a set without one is incomplete
    if not storage.is_url(root):  # object stores have no folders to create
      for sub in ("HR", "LR"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    kspec = degradation.kernel_space(space, kernel_size)
    nspec = degradation.NoiseSpec(**noise)
    kernels = []
    for i, (stem, hr_u8) in enumerate(_hr_images(name, path, listing)):
      hr_u8 = _crop(np.asarray(hr_u8), crop, scale)
      hr = hr_u8.astype(np.float32) / 255.0
      out = degradation.synthesize(hr, kspec, nspec, scale, seed=[TEST_SEED, i])
      lr = np.clip(degradation.quantize_8bit(out["lr"]).numpy(), 0.0, 1.0)
      image_io.write_png(str(root / "HR" / f"{stem}.png"), hr_u8, overwrite=True)
      image_io.write_png(str(root / "LR" / f"{stem}.png"), image_io.quantize(lr, 8), True)
      kernels.append(out["kernel"].numpy())
    buf = io.BytesIO()
    np.save(buf, np.stack(kernels).astype(np.float32))
    storage.write_bytes(str(root / "kernels.npy"), buf.getvalue(), overwrite=True)
    manifest_path.write_text(text)
  return load_test_set(name, space, str(root), digest, listing)


def load_test_set(name: str, space: str, root: str, digest: str, listing) -> TestSet:
  from dan_jax import image_io

  stems = [n if "." not in n else os.path.splitext(n)[0] for n in listing]
  hr = [image_io.quantize(image_io.read_image(f"{root}/HR/{s}.png").rgb, 8) for s in stems]
  lr = [image_io.quantize(image_io.read_image(f"{root}/LR/{s}.png").rgb, 8) for s in stems]
  kernels = np.load(io.BytesIO(storage.read_bytes(f"{root}/kernels.npy")))
  return TestSet(name, space, digest, stems, hr, lr, kernels)


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------


class Scorer:
  """Scores checkpoints on test sets; one Predictor (one compilation) per architecture."""

  def __init__(self, tile: int = 256, batch_size: int = 8):
    self.tile, self.batch_size = tile, batch_size
    self._predictors: dict[str, Any] = {}

  def predictor(self, model_config, variables):
    """A Predictor for this architecture with these weights (jitted programs reused)."""
    from dan_jax import checkpoint

    key = json.dumps(checkpoint.model_config_to_dict(model_config), sort_keys=True)
    p = self._predictors.get(key)
    if p is None:
      p = self._new_predictor(model_config, variables)
      self._predictors[key] = p
    else:  # same shapes: the jitted functions take the new weights without recompiling
      p.load_weights(variables)
    return p

  def _new_predictor(self, model_config, variables):
    """Tiled where tiles give the whole-image result (DANv2), whole images otherwise."""
    from dan_jax import predict
    from dan_jax.errors import InferenceError

    if self.tile:
      try:
        p = predict.Predictor(model_config, variables, tile=self.tile, batch_size=self.batch_size)
        if p.tiled_is_exact:
          return p
      except InferenceError:  # a model that cannot be tiled (DCLS's global deconvolution)
        pass
    return predict.Predictor(model_config, variables, batch_size=self.batch_size)

  def score(self, predictor, test: TestSet) -> dict:
    """Mean scores of one model on one test set (kernel error where the sizes match)."""
    from dan_jax import metrics

    groups: dict[tuple, list[int]] = {}
    for i, lr in enumerate(test.lr):
      groups.setdefault(lr.shape, []).append(i)
    rows: list[Optional[dict]] = [None] * len(test.lr)
    for idx in groups.values():
      lrs = np.stack([test.lr[i] for i in idx])
      preds = predictor.predict_batch(
        lrs.astype(np.float32) / 255.0 if lrs.dtype == np.uint8 else lrs
      )
      for i, pred in zip(idx, preds):
        true_k = test.kernels[i]
        est = pred.kernel if pred.kernel is not None and pred.kernel.shape == true_k.shape else None
        rows[i] = metrics.score_prediction(
          pred.sr, test.hr[i], predictor.scale, kernel=est, true_kernel=true_k
        )
    out = {"n": len(rows), "digest": test.digest}
    for m in METRICS:
      vals = [r[m] for r in rows if r.get(m) is not None]
      out[m] = float(np.mean(vals)) if len(vals) == len(rows) else None
    return out


# ---------------------------------------------------------------------------------------
# Run status
# ---------------------------------------------------------------------------------------


def checkpoint_steps(run_dir: str) -> list[int]:
  """Steps of the complete checkpoints of a run (orbax's temporary folders excluded)."""
  d = storage.path(storage.join(run_dir, "checkpoints"))
  if not d.is_dir():
    return []
  steps = [f for f in d.iterdir() if f.name.isdigit()]
  if storage.is_url(d):  # object stores have no rename: a step is complete once committed
    steps = [f for f in steps if (f / "commit_success.txt").exists()]
  return sorted(int(f.name) for f in steps)


def read_json(path: str) -> Optional[dict]:
  p = storage.path(path)
  if not p.exists():
    return None
  try:
    return json.loads(p.read_text())
  except (OSError, ValueError):
    return None


def error_line(run_dir: str) -> Optional[str]:
  """The run's error: RUN/error.txt, else the last `error:` or exception line of its log."""
  p = storage.path(storage.join(run_dir, ERROR_FILE))
  if p.exists():
    return p.read_text().strip().splitlines()[-1]
  log = storage.path(storage.join(run_dir, LOG_FILE))
  if not log.exists():
    return None
  lines = [l.strip() for l in log.read_bytes().decode(errors="replace").splitlines() if l.strip()]
  # The log of the latest attempt only (a requeued or resubmitted run appends).
  starts = [i for i, l in enumerate(lines) if l.startswith("== sweep run ")]
  lines = lines[starts[-1] :] if starts else lines
  if lines and any(t in lines[-1] for t in ("trained to step", "preempted", "checkpoints:")):
    return None
  for l in reversed(lines):
    if l.startswith("error:"):
      return l
  if any(l.startswith("Traceback") for l in lines):
    return lines[-1]
  return None


def write_text(path: str, text: str) -> None:
  storage.write_bytes(path, text.encode(), overwrite=True)
