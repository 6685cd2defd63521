"""The benchmark test sets: Gaussian8 (setting 1) and DIV2KRK (setting 2) as scoring jobs.

Gaussian8 sets are built from folders of HR images exactly as the official
`generate_mod_blur_LR_bic.py` and cached with a manifest (`prepare_gaussian8`); DIV2KRK
folders (as KernelGAN distributes them) are listed by the number in each file name
(`div2krk_jobs`), with their true kernels (`load_kernel`). `dan_jax.evaluate` runs the
model on the jobs and scores them; its docstring gives the layouts and the protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import re
from typing import Optional, Sequence

import numpy as np

from dan_jax import image_io
from dan_jax import storage
from dan_jax.errors import EvaluationError

GAUSSIAN8_KERNEL_SIZE = 21  # official generate_mod_blur_LR_bic.py
DIV2KRK_NAME = "DIV2KRK"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass
class Job:
  """One LR image to super-resolve and score."""

  dataset: str
  subset: str  # Gaussian8 sigma as "%.2f"; "" for DIV2KRK
  name: str
  lr_path: str
  gt_path: str
  kernel_path: Optional[str] = None  # DIV2KRK true kernel file
  kernel_sigma: Optional[float] = None  # Gaussian8: the true kernel is this isotropic one


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------


def parse_datasets(datasets: Sequence[str] = (), hr_dirs: str = "") -> dict[str, str]:
  """{name: folder} from repeated `NAME=PATH` and a comma-separated `A=p,B=q`."""
  specs = list(datasets or [])
  if hr_dirs:
    specs += [s for s in hr_dirs.split(",") if s.strip()]
  out: dict[str, str] = {}
  for spec in specs:
    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
      raise EvaluationError(f"dataset {spec!r} must be NAME=PATH, e.g. Set5=/data/Set5")
    if not _NAME_RE.match(name):
      raise EvaluationError(f"dataset name {name!r} may use only letters, digits, '_', '.', '-'")
    if name in out or name == DIV2KRK_NAME:
      raise EvaluationError(f"dataset name {name} is given twice (or is reserved)")
    if not storage.path(path).is_dir():
      raise EvaluationError(f"dataset {name}: {path} is not a folder")
    out[name] = path
  return out


def _hr_listing(hr_dir: str) -> dict[str, int]:
  # The images write_gaussian8_set reads, with their sizes: what a cache was built from.
  exts = image_io.TF_IMAGE_EXTENSIONS
  files = sorted(storage.path(hr_dir).iterdir(), key=lambda f: f.name)
  return {f.name: f.stat().length for f in files if f.suffix.lower() in exts}


def sigma_dirs(cache_root: str, scale: int) -> dict[str, str]:
  """{"%.2f" sigma: folder} of a Gaussian8 set laid out by write_gaussian8_set."""
  from dan_jax import degradation

  return {
    f"{s:.2f}": storage.join(cache_root, f"x{scale}", f"sig{s:.2f}")
    for s in degradation.gaussian8_sigmas(scale)
  }


def prepare_gaussian8(
  name: str, hr_dir: str, workdir: str, scale: int, log=print
) -> dict[str, str]:
  """Builds (or reuses) the cached Gaussian8 set of one HR folder; {sigma: folder}.

  The set is written to a temporary folder and renamed into place with its manifest, so an
  interrupted build is never mistaken for a cache. Every folder may be a URL (gs://...):
  object stores have no rename (it copies every object), so there the set is written in
  place and its manifest, written last, marks it complete.
  """
  from dan_jax import degradation

  root = storage.path(storage.join(workdir, "gaussian8", name))
  final = root / f"x{scale}"
  manifest_path = final / "manifest.json"
  listing = _hr_listing(hr_dir)
  if not listing:
    raise EvaluationError(f"dataset {name}: no .png/.jpg/.bmp images in {hr_dir}")
  sigmas = [float(f"{s:.2f}") for s in degradation.gaussian8_sigmas(scale)]
  in_place = storage.is_url(root)
  if final.exists() and in_place and not manifest_path.exists():
    log(f"{name}: {final} has no manifest.json (an interrupted build); rebuilding it")
  elif final.exists():
    try:
      manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
      raise EvaluationError(
        f"dataset {name}: {final} exists but has no readable "
        f"manifest.json; delete it to rebuild ({e})"
      ) from e
    if manifest.get("files") != listing or manifest.get("kernel_size") != GAUSSIAN8_KERNEL_SIZE:
      changed = sorted(set(manifest.get("files", {}).items()) ^ set(listing.items()))[:3]
      raise EvaluationError(
        f"dataset {name}: the cached Gaussian8 set {final} was built "
        f"from other HR images than {hr_dir} (differences: {changed});"
        " delete it or use another --out"
      )
    dirs = sigma_dirs(root, scale)
    stems = {os.path.splitext(n)[0] + ".png" for n in listing}
    for d in dirs.values():
      for sub in ("HR", "LR"):
        folder = storage.path(storage.join(d, sub))
        have = {f.name for f in folder.iterdir()} if folder.is_dir() else set()
        if not stems <= have:
          raise EvaluationError(
            f"dataset {name}: cached set {d}/{sub} lacks "
            f"{sorted(stems - have)[:3]}; delete {final} to rebuild"
          )
    log(f"{name}: using cached Gaussian8 x{scale} set {final}")
    return dirs
  stems = [os.path.splitext(n)[0] for n in listing]
  if len(set(stems)) != len(stems):
    raise EvaluationError(f"dataset {name}: two HR images share a file stem in {hr_dir}")
  tmp = root if in_place else root / f".tmp-x{scale}-{os.getpid()}"
  if not in_place:
    root.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
      tmp.rmtree()
  log(f"{name}: building the Gaussian8 x{scale} set of {len(listing)} image(s) in {final}")
  degradation.write_gaussian8_set(hr_dir, str(tmp), scale, kernel_size=GAUSSIAN8_KERNEL_SIZE)
  (tmp / f"x{scale}" / "manifest.json").write_text(
    json.dumps(
      {
        "source": str(storage.path(hr_dir)),
        "scale": scale,
        "sigmas": sigmas,
        "kernel_size": GAUSSIAN8_KERNEL_SIZE,
        "files": listing,
      },
      indent=1,
    )
  )
  if not in_place:
    (tmp / f"x{scale}").rename(final)
    tmp.rmtree()
  return sigma_dirs(str(root), scale)


def gaussian8_jobs(name: str, dirs: dict[str, str], scale: int) -> list[Job]:
  """Jobs of a Gaussian8 set ({"%.2f" sigma: folder}, from `prepare_gaussian8`)."""
  from dan_jax import degradation

  exact = {f"{s:.2f}": float(s) for s in degradation.gaussian8_sigmas(scale)}
  jobs = []
  for sigma, d in dirs.items():
    for fn in sorted(f.name for f in storage.path(storage.join(d, "LR")).iterdir()):
      jobs.append(
        Job(
          name,
          sigma,
          os.path.splitext(fn)[0],
          storage.join(d, "LR", fn),
          storage.join(d, "HR", fn),
          kernel_sigma=exact[sigma],
        )
      )
  return jobs


def _by_number(folder: str, exts: Sequence[str]) -> dict[int, str]:
  out: dict[int, str] = {}
  for fn in sorted(f.name for f in storage.path(folder).iterdir()):
    if fn.startswith(".") or os.path.splitext(fn)[1].lower() not in exts:
      continue
    m = re.search(r"\d+", fn)
    if not m:
      continue
    n = int(m.group())
    if n in out:
      raise EvaluationError(
        f"{folder}: {os.path.basename(out[n])} and {fn} have the same "
        f"number {n}; files are matched by the number in their names"
      )
    out[n] = storage.join(folder, fn)
  return out


def div2krk_jobs(root: str, scale: int, log=print) -> list[Job]:
  """Jobs of a DIV2KRK folder (gt/, lr_x{scale}/, optional gt_k_x{scale}/)."""
  gt_dir, lr_dir = storage.join(root, "gt"), storage.join(root, f"lr_x{scale}")
  k_dir = storage.join(root, f"gt_k_x{scale}")
  for d in (gt_dir, lr_dir):
    if not storage.path(d).is_dir():
      have = (
        sorted(f.name for f in storage.path(root).iterdir()) if storage.path(root).is_dir() else []
      )
      raise EvaluationError(
        f"DIV2KRK: no folder {d} (DIV2KRK has gt/, lr_x2/, lr_x4/; found {have})"
      )
  gts = _by_number(gt_dir, image_io.IMAGE_EXTENSIONS)
  lrs = _by_number(lr_dir, image_io.IMAGE_EXTENSIONS)
  kernels = _by_number(k_dir, (".mat", ".npy")) if storage.path(k_dir).is_dir() else {}
  if not lrs:
    raise EvaluationError(f"DIV2KRK: no images in {lr_dir}")
  missing = sorted(set(lrs) - set(gts))
  if missing:
    log(f"note: DIV2KRK: no ground truth for LR image(s) {missing[:10]}; skipped")
  if kernels and set(lrs) - set(kernels):
    log(f"note: DIV2KRK: no true kernel for {sorted(set(lrs) - set(kernels))[:10]}")
  return [
    Job(
      DIV2KRK_NAME,
      "",
      os.path.splitext(os.path.basename(lrs[n]))[0],
      lrs[n],
      gts[n],
      kernels.get(n),
    )
    for n in sorted(lrs)
    if n in gts
  ]


def load_kernel(path: str) -> np.ndarray:
  """A true kernel from .mat (variable 'Kernel', else the only 2-D array) or .npy."""
  try:
    data = io.BytesIO(storage.read_bytes(path))
    if path.endswith(".npy"):
      k = np.load(data)
    else:
      import scipy.io

      mat = scipy.io.loadmat(data)
      if "Kernel" in mat:
        k = mat["Kernel"]
      else:
        arrays = [v for n, v in mat.items() if not n.startswith("__") and np.ndim(v) == 2]
        if len(arrays) != 1:
          raise EvaluationError(
            f"{path}: no 'Kernel' variable and not exactly one 2-D array (variables: {sorted(mat)})"
          )
        k = arrays[0]
  except EvaluationError:
    raise
  except Exception as e:  # scipy/numpy raise many types
    raise EvaluationError(f"{path}: unreadable kernel file ({e})") from e
  k = np.asarray(k, np.float64)
  if k.ndim != 2:
    raise EvaluationError(f"{path}: kernel must be 2-D, got shape {k.shape}")
  return k


@functools.lru_cache(maxsize=None)
def _gaussian8_kernel(sigma: float) -> np.ndarray:
  from dan_jax import degradation

  return degradation.isotropic_gaussian_kernel(GAUSSIAN8_KERNEL_SIZE, sigma).numpy()


def true_kernel(job: Job) -> Optional[np.ndarray]:
  """The job's true kernel: DIV2KRK's file, Gaussian8's isotropic kernel, else None."""
  if job.kernel_path:
    return load_kernel(job.kernel_path)
  if job.kernel_sigma is not None:
    return _gaussian8_kernel(job.kernel_sigma)
  return None
