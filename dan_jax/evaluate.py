"""Benchmark a DAN checkpoint with the official test protocol.

  python -m dan_jax.evaluate --checkpoint DIR --out WORKDIR \
      --dataset Set5=/data/Set5 --dataset Set14=/data/Set14 --div2krk /data/DIV2KRK

Setting 1 (Gaussian8): each `--dataset NAME=HR_FOLDER` (or `--hr_dirs A=p,B=q`) is turned
into the Gaussian8 test set of the checkpoint's scale exactly as the official
`generate_mod_blur_LR_bic.py` (modcrop, 21x21 isotropic kernels of the 8 widths,
`degradation.write_gaussian8_set`). Sets are cached in WORKDIR/gaussian8/NAME/x{scale}/
with a manifest of the HR files they came from, and reused by later runs; a cache built
from different HR files is an error (delete it), never silently mixed or replaced.

Setting 2 (DIV2KRK, as distributed by KernelGAN): `gt/img_N_gt.png`, `lr_x{2,4}/im_N.png`
and, when present, `gt_k_x{2,4}/kernel_N.mat` (MATLAB, variable `Kernel`; 11x11 for x2,
31x31 for x4). Files are matched by the first number in their names. The estimated kernel
(DANv2) is compared with the true one by `metrics.kernel_error` (the smaller kernel is
zero-padded, centred; no re-centring or normalisation). DANv1 estimates only a PCA code,
and the PCA mean needed to decode it is not part of a checkpoint, so its kernel metrics
are reported as n/a. Gaussian8 rows get the same kernel errors against the true 21x21
isotropic kernel (in the CSV/JSON; the table shows PSNR/SSIM as the paper does).

Protocol (official test.py): SR and GT are converted to uint8 (`metrics.to_uint8`, the
official tensor2img rounding), `crop border = scale` pixels are cut on every side, and
PSNR/SSIM are computed on the MATLAB Y channel (also on RGB, in the CSV). Averages are
plain means over images (a dataset's Gaussian8 average is over all 8 x N images, which
equals the mean of the 8 per-sigma means).

Compilation: images are grouped by exact LR size, and images of one size share a jitted
program and run in batches (`--batch_size`); nothing is padded, so results are those of
single-image inference. Gaussian8 gives 8 same-sized images per HR image; each distinct
size compiles once. `--pad_to_multiple N` pads LR (edge replication) so sizes share
programs: faster to compile, but APPROXIMATE (padding changes borders and the estimator's
global pooling) — not for reported numbers.

Outputs go to a new folder WORKDIR/eval-<time>-x<scale>/: `metrics.csv` (one row per
image), `summary.json` (averages, settings), `table.txt` (the printed tables) and with
`--save_images` the SR images and kernels under `images/`. Exit status: 0, 1 when some
images failed (each gets an `error:` line; the others are evaluated), 2 when nothing
could be done.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import json
import math
import os
import io
import re
import sys
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np

from dan_jax import image_io
from dan_jax import metrics
from dan_jax import storage

GAUSSIAN8_KERNEL_SIZE = 21  # official generate_mod_blur_LR_bic.py
DIV2KRK_NAME = "DIV2KRK"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CSV_FIELDS = ("dataset", "subset", "image", "lr_height", "lr_width", "psnr_y", "ssim_y",
              "psnr_rgb", "ssim_rgb", "kernel_mse", "kernel_mae", "kernel_sad",
              "kernel_psnr")
METRIC_FIELDS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
KERNEL_FIELDS = ("kernel_mse", "kernel_mae", "kernel_sad", "kernel_psnr")


class EvaluationError(ValueError):
  """The datasets or options cannot be evaluated as given."""


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
      raise EvaluationError(f"dataset name {name!r} may use only letters, digits, '_', "
                            "'.', '-'")
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
  from dan_jax import degradation  # pylint: disable=g-import-not-at-top
  return {f"{s:.2f}": storage.join(cache_root, f"x{scale}", f"sig{s:.2f}")
          for s in degradation.gaussian8_sigmas(scale)}


def prepare_gaussian8(name: str, hr_dir: str, workdir: str, scale: int,
                      log=print) -> dict[str, str]:
  """Builds (or reuses) the cached Gaussian8 set of one HR folder; {sigma: folder}.

  The set is written to a temporary folder and renamed into place with its manifest, so an
  interrupted build is never mistaken for a cache. Every folder may be a URL (gs://...):
  object stores have no rename (it copies every object), so there the set is written in
  place and its manifest, written last, marks it complete.
  """
  from dan_jax import degradation  # pylint: disable=g-import-not-at-top
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
      raise EvaluationError(f"dataset {name}: {final} exists but has no readable "
                            f"manifest.json; delete it to rebuild ({e})") from e
    if manifest.get("files") != listing or manifest.get("kernel_size") != \
        GAUSSIAN8_KERNEL_SIZE:
      changed = sorted(set(manifest.get("files", {}).items()) ^ set(listing.items()))[:3]
      raise EvaluationError(f"dataset {name}: the cached Gaussian8 set {final} was built "
                            f"from other HR images than {hr_dir} (differences: {changed});"
                            " delete it or use another --out")
    dirs = sigma_dirs(root, scale)
    stems = {os.path.splitext(n)[0] + ".png" for n in listing}
    for d in dirs.values():
      for sub in ("HR", "LR"):
        folder = storage.path(storage.join(d, sub))
        have = {f.name for f in folder.iterdir()} if folder.is_dir() else set()
        if not stems <= have:
          raise EvaluationError(f"dataset {name}: cached set {d}/{sub} lacks "
                                f"{sorted(stems - have)[:3]}; delete {final} to rebuild")
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
  (tmp / f"x{scale}" / "manifest.json").write_text(json.dumps(
      {"source": str(storage.path(hr_dir)), "scale": scale, "sigmas": sigmas,
       "kernel_size": GAUSSIAN8_KERNEL_SIZE, "files": listing}, indent=1))
  if not in_place:
    (tmp / f"x{scale}").rename(final)
    tmp.rmtree()
  return sigma_dirs(str(root), scale)


def gaussian8_jobs(name: str, dirs: dict[str, str], scale: int) -> list[Job]:
  """Jobs of a Gaussian8 set ({"%.2f" sigma: folder}, from `prepare_gaussian8`)."""
  from dan_jax import degradation  # pylint: disable=g-import-not-at-top
  exact = {f"{s:.2f}": float(s) for s in degradation.gaussian8_sigmas(scale)}
  jobs = []
  for sigma, d in dirs.items():
    for fn in sorted(f.name for f in storage.path(storage.join(d, "LR")).iterdir()):
      jobs.append(Job(name, sigma, os.path.splitext(fn)[0], storage.join(d, "LR", fn),
                      storage.join(d, "HR", fn), kernel_sigma=exact[sigma]))
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
      raise EvaluationError(f"{folder}: {os.path.basename(out[n])} and {fn} have the same "
                            f"number {n}; files are matched by the number in their names")
    out[n] = storage.join(folder, fn)
  return out


def div2krk_jobs(root: str, scale: int, log=print) -> list[Job]:
  """Jobs of a DIV2KRK folder (gt/, lr_x{scale}/, optional gt_k_x{scale}/)."""
  gt_dir, lr_dir = storage.join(root, "gt"), storage.join(root, f"lr_x{scale}")
  k_dir = storage.join(root, f"gt_k_x{scale}")
  for d in (gt_dir, lr_dir):
    if not storage.path(d).is_dir():
      have = (sorted(f.name for f in storage.path(root).iterdir())
              if storage.path(root).is_dir() else [])
      raise EvaluationError(f"DIV2KRK: no folder {d} (DIV2KRK has gt/, lr_x2/, lr_x4/; "
                            f"found {have})")
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
  return [Job(DIV2KRK_NAME, "", os.path.splitext(os.path.basename(lrs[n]))[0], lrs[n],
              gts[n], kernels.get(n)) for n in sorted(lrs) if n in gts]


def load_kernel(path: str) -> np.ndarray:
  """A true kernel from .mat (variable 'Kernel', else the only 2-D array) or .npy."""
  try:
    data = io.BytesIO(storage.read_bytes(path))
    if path.endswith(".npy"):
      k = np.load(data)
    else:
      import scipy.io  # pylint: disable=g-import-not-at-top
      mat = scipy.io.loadmat(data)
      if "Kernel" in mat:
        k = mat["Kernel"]
      else:
        arrays = [v for n, v in mat.items() if not n.startswith("__") and
                  np.ndim(v) == 2]
        if len(arrays) != 1:
          raise EvaluationError(f"{path}: no 'Kernel' variable and not exactly one 2-D "
                                f"array (variables: {sorted(mat)})")
        k = arrays[0]
  except EvaluationError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (scipy/numpy raise many types)
    raise EvaluationError(f"{path}: unreadable kernel file ({e})") from e
  k = np.asarray(k, np.float64)
  if k.ndim != 2:
    raise EvaluationError(f"{path}: kernel must be 2-D, got shape {k.shape}")
  return k


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _gaussian8_kernel(sigma: float) -> np.ndarray:
  from dan_jax import degradation  # pylint: disable=g-import-not-at-top
  return degradation.isotropic_gaussian_kernel(GAUSSIAN8_KERNEL_SIZE, sigma).numpy()


def _image_size(path: str) -> tuple[int, int]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with storage.path(path).open("rb") as f, Image.open(f) as im:
      return im.size[1], im.size[0]
  except Exception:  # pylint: disable=broad-except  (reported when read for real)
    return (0, 0)


def score(job: Job, sr: np.ndarray, kernel: Optional[np.ndarray], scale: int,
          crop_border: int) -> dict:
  """The CSV row of one image (metrics on uint8 images, as official test.py)."""
  gt = image_io.read_image(job.gt_path)
  gt_u8 = image_io.quantize(gt.rgb, 8)
  sr_u8 = metrics.to_uint8(sr)
  if gt_u8.shape != sr_u8.shape:
    h, w = sr_u8.shape[:2]
    gh, gw = gt_u8.shape[:2]
    if h <= gh < h + scale and w <= gw < w + scale:
      gt_u8 = gt_u8[:h, :w]  # GT that was not modcropped
    else:
      raise EvaluationError(f"{job.gt_path}: GT is {gh}x{gw} but the LR image "
                            f"{job.lr_path} gives a {h}x{w} SR image at x{scale}")
  row = {"dataset": job.dataset, "subset": job.subset, "image": job.name,
         "lr_height": sr.shape[0] // scale, "lr_width": sr.shape[1] // scale,
         "psnr_y": metrics.psnr_y(sr_u8, gt_u8, crop_border),
         "ssim_y": metrics.ssim_y(sr_u8, gt_u8, crop_border),
         "psnr_rgb": metrics.psnr_rgb(sr_u8, gt_u8, crop_border),
         "ssim_rgb": metrics.ssim_rgb(sr_u8, gt_u8, crop_border)}
  true_kernel = None
  if kernel is not None and job.kernel_path:
    true_kernel = load_kernel(job.kernel_path)
  elif kernel is not None and job.kernel_sigma is not None:
    true_kernel = _gaussian8_kernel(job.kernel_sigma)
  if true_kernel is not None:
    err = metrics.kernel_error(kernel, true_kernel)
    row.update({f"kernel_{k}": v for k, v in err.items()})
  return row


def _mean(rows: list[dict], field: str) -> Optional[float]:
  values = [r[field] for r in rows if r.get(field) is not None]
  return metrics.average(values) if values else None


def summarize(rows: list[dict]) -> dict:
  """{dataset: {'subsets': {subset: averages}, 'all': averages}} (averages incl. n)."""
  out: dict[str, Any] = {}
  for dataset in dict.fromkeys(r["dataset"] for r in rows):
    drows = [r for r in rows if r["dataset"] == dataset]
    subsets = {}
    for subset in sorted(dict.fromkeys(r["subset"] for r in drows)):
      srows = [r for r in drows if r["subset"] == subset]
      subsets[subset] = {"n": len(srows), **{f: _mean(srows, f)
                                             for f in METRIC_FIELDS + KERNEL_FIELDS}}
    out[dataset] = {"subsets": subsets,
                    "all": {"n": len(drows), **{f: _mean(drows, f)
                                                for f in METRIC_FIELDS + KERNEL_FIELDS}}}
  return out


def _cell(avg: Optional[dict]) -> str:
  if not avg or avg.get("psnr_y") is None:
    return "-"
  return f"{avg['psnr_y']:.2f}/{avg['ssim_y']:.4f}"


def format_tables(summary: dict, scale: int, title: str, crop_border: int) -> str:
  """The paper-shaped tables: Gaussian8 (rows datasets, columns sigmas + average) and
  DIV2KRK (one PSNR/SSIM column and the kernel errors)."""
  from dan_jax import degradation  # pylint: disable=g-import-not-at-top
  lines = []
  g8 = {d: s for d, s in summary.items() if d != DIV2KRK_NAME}
  if g8:
    sigmas = [f"{s:.2f}" for s in degradation.gaussian8_sigmas(scale)]
    headers = ["Dataset"] + [f"sig {s}" for s in sigmas] + ["Average"]
    body = [[d] + [_cell(s["subsets"].get(sig)) for sig in sigmas] + [_cell(s["all"])]
            for d, s in g8.items()]
    lines.append(f"Setting 1 (Gaussian8 x{scale}), {title}: Y-PSNR/SSIM, "
                 f"crop border {crop_border}")
    lines += _grid(headers, body)
  if DIV2KRK_NAME in summary:
    a = summary[DIV2KRK_NAME]["all"]
    fmt = lambda v, f: "n/a" if v is None else format(v, f)
    headers = ["Dataset", "PSNR/SSIM", "kernel MSE", "kernel SAD", "kernel PSNR"]
    body = [[DIV2KRK_NAME, _cell(a), fmt(a["kernel_mse"], ".3e"), fmt(a["kernel_sad"], ".4f"),
             fmt(a["kernel_psnr"], ".2f")]]
    if lines:
      lines.append("")
    lines.append(f"Setting 2 (DIV2KRK x{scale}), {title}: Y-PSNR/SSIM, "
                 f"crop border {crop_border}")
    lines += _grid(headers, body)
  return "\n".join(lines)


def _grid(headers: list[str], body: list[list[str]]) -> list[str]:
  widths = [max(len(r[i]) for r in [headers] + body) for i in range(len(headers))]
  row = lambda r: " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths)))
  return [row(headers), "-+-".join("-" * w for w in widths)] + [row(r) for r in body]


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def run_jobs(predictor, jobs: list[Job], crop_border: int, image_dir: Optional[str] = None,
             log=print) -> tuple[list[dict], list[dict]]:
  """Super-resolves and scores every job; returns (rows, failures).

  Jobs are grouped by LR size so that same-sized images share a program and a batch.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from dan_jax import infer  # pylint: disable=g-import-not-at-top
  sizes = [_image_size(j.lr_path) for j in jobs]
  order = sorted(range(len(jobs)), key=lambda i: (sizes[i], i))
  rows: list[Optional[dict]] = [None] * len(jobs)
  failures = []
  bar = tqdm(total=len(jobs), unit="img", file=sys.stderr, disable=None)
  groups: dict[tuple, list[int]] = {}
  for i in order:
    groups.setdefault(sizes[i], []).append(i)
  for idx in groups.values():
    for start in range(0, len(idx), predictor.batch_size):
      batch, lrs = [], []
      for i in idx[start:start + predictor.batch_size]:
        try:
          lrs.append(image_io.read_image(jobs[i].lr_path).rgb)
          batch.append(i)
        except image_io.ImageError as e:
          failures.append({"file": jobs[i].lr_path, "error": str(e)})
          bar.write(f"error: {e}", file=sys.stderr)
          bar.update(1)
      by_shape: dict[tuple, list[int]] = {}
      for k, lr in enumerate(lrs):  # headers can lie (EXIF rotation): group by pixels
        by_shape.setdefault(lr.shape, []).append(k)
      for ks in by_shape.values():
        try:
          preds = predictor.predict_batch(np.stack([lrs[k] for k in ks]))
        except jax.errors.JaxRuntimeError as e:
          if "RESOURCE_EXHAUSTED" not in str(e):
            raise
          raise EvaluationError(
              f"out of accelerator memory on {len(ks)} image(s) of {lrs[ks[0]].shape[0]}x"
              f"{lrs[ks[0]].shape[1]} pixels; lower --batch_size or use --tile") from e
        for k, pred in zip(ks, preds):
          job = jobs[batch[k]]
          try:
            rows[batch[k]] = score(job, pred.sr, pred.kernel, predictor.scale, crop_border)
            if image_dir:
              sub = storage.join(image_dir, job.dataset, job.subset and f"sig{job.subset}")
              if not storage.is_url(sub):  # object stores have no folders to create
                storage.path(sub).mkdir(parents=True, exist_ok=True)
              paths = infer.output_paths(job.lr_path, sub, predictor.scale,
                                         predictor.has_kernel)
              infer.save_prediction(pred, paths, None, predictor.scale)
          except (image_io.ImageError, EvaluationError, ValueError) as e:
            failures.append({"file": job.lr_path, "error": str(e)})
            bar.write(f"error: {job.lr_path}: {e}", file=sys.stderr)
          bar.update(1)
  bar.close()
  return [r for r in rows if r is not None], failures


def _write_csv(path: str, rows: list[dict]) -> None:
  f = io.StringIO(newline="")
  w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
  w.writeheader()
  for r in rows:
    w.writerow({k: ("" if r.get(k) is None else r[k]) for k in CSV_FIELDS})
  storage.write_bytes(path, f.getvalue().encode())


def _json_safe(x):
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)  # JSON has no inf/nan
  return x


def _new_run_dir(workdir: str, scale: int, ensemble: bool) -> str:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  base = storage.join(workdir, f"eval-{stamp}-x{scale}{'-x8' if ensemble else ''}")
  path, n = base, 1
  while True:
    try:
      if storage.is_url(path):  # no folders on object stores: a free name is enough
        if storage.path(path).exists():
          raise FileExistsError(path)
      else:
        storage.path(path).mkdir(parents=True)
      return path
    except FileExistsError:
      path, n = f"{base}-{n}", n + 1


def _build_parser():
  import argparse  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(
      prog="python -m dan_jax.evaluate",
      description="Evaluate a DAN checkpoint on Gaussian8 (setting 1) and DIV2KRK "
                  "(setting 2) with the official protocol.")
  p.add_argument("--checkpoint", required=True,
                 help="training workdir (latest checkpoint), step directory or converted "
                      "official checkpoint")
  p.add_argument("--dataset", action="append", default=[], metavar="NAME=HR_DIR",
                 help="a folder of HR images evaluated as Gaussian8 (repeatable)")
  p.add_argument("--hr_dirs", default="", metavar="A=DIR,B=DIR",
                 help="several --dataset at once, comma-separated")
  p.add_argument("--div2krk", default=None, help="DIV2KRK folder (gt/, lr_x2/, ...)")
  p.add_argument("--out", required=True,
                 help="workdir: Gaussian8 caches and an eval-<time>-x<scale> results folder")
  p.add_argument("--scale", type=int, default=None,
                 help="must match the checkpoint's scale (default: the checkpoint's)")
  p.add_argument("--crop_border", type=int, default=None,
                 help="pixels cut on each side before the metrics (default: the scale)")
  p.add_argument("--self_ensemble", action="store_true",
                 help="average the 8 flips/transposes (official test_x8)")
  p.add_argument("--save_images", action="store_true",
                 help="also write SR images and estimated kernels")
  p.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True,
                 help="use the EMA weights when the checkpoint has them (default: yes)")
  p.add_argument("--batch_size", type=int, default=8,
                 help="same-sized images per call, sharded over all devices (rounded up to "
                      "a multiple of the device count)")
  p.add_argument("--precision", default="highest", choices=("highest", "default", "bfloat16"),
                 help="matmul/convolution precision: highest (default) = float32 on every "
                      "platform, the paper protocol's numbers; default = the platform's fast "
                      "float32 (one bf16 pass on TPU, TF32 on GPU); bfloat16 = bfloat16 "
                      "activations")
  p.add_argument("--pad_to_multiple", type=int, default=0,
                 help="pad LR to a multiple of N to share compilations (APPROXIMATE)")
  p.add_argument("--tile", type=int, default=0,
                 help="tiled inference for LR images larger than this (see infer)")
  p.add_argument("--tile_overlap", type=int, default=None,
                 help="tile overlap (default: exact for DANv2)")
  return p


def main(argv: Optional[list[str]] = None) -> int:
  """The command line; returns the exit status (0 ok, 1 some images failed, 2 fatal)."""
  args = _build_parser().parse_args(argv)
  log = lambda msg: print(msg, file=sys.stderr)
  from dan_jax import runtime  # pylint: disable=g-import-not-at-top
  # Before JAX starts: XLA:CPU flag on CPU-only hosts; TensorFlow (Gaussian8 synthesis)
  # kept off the accelerators.
  runtime.setup_entry_point()
  from dan_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from dan_jax import infer  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  try:
    hr_sets = parse_datasets(args.dataset, args.hr_dirs)
    if not hr_sets and not args.div2krk:
      raise EvaluationError("nothing to evaluate: give --dataset NAME=HR_DIR, --hr_dirs "
                            "or --div2krk")
    model_config, variables, step = checkpoint_lib.load_model(args.checkpoint,
                                                              use_ema=args.use_ema)
    scale = int(model_config.scale)
    if args.scale is not None and args.scale != scale:
      raise EvaluationError(f"--scale {args.scale} does not match the checkpoint, which is "
                            f"a x{scale} model")
    crop = scale if args.crop_border is None else args.crop_border
    if crop < 0:
      raise EvaluationError(f"--crop_border must be >= 0, got {crop}")
    predictor = infer.Predictor(model_config, variables, self_ensemble=args.self_ensemble,
                                batch_size=args.batch_size,
                                pad_to_multiple=args.pad_to_multiple, tile=args.tile,
                                tile_overlap=args.tile_overlap,
                                precision=args.precision)
    jobs = []
    if args.div2krk:
      jobs += div2krk_jobs(args.div2krk, scale, log)
    if not storage.is_url(args.out):  # object stores have no folders to create
      storage.path(args.out).mkdir(parents=True, exist_ok=True)
    for name, hr_dir in hr_sets.items():
      jobs += gaussian8_jobs(name, prepare_gaussian8(name, hr_dir, args.out, scale, log),
                             scale)
    run_dir = _new_run_dir(args.out, scale, args.self_ensemble)
  except (ValueError, OSError) as e:  # EvaluationError, CheckpointError, InferenceError
    print(f"error: {e}", file=sys.stderr)
    return 2
  spec = predictor.spec
  ensemble = ", x8 self-ensemble" if args.self_ensemble else ""
  title = f"{spec.version} x{scale} (step {step}{ensemble})"
  from dan_jax import parallel  # pylint: disable=g-import-not-at-top
  log(f"evaluating {title} on {len(jobs)} LR image(s) with {parallel.describe(predictor.mesh)}"
      f", precision {args.precision}; results in {run_dir}")
  if args.pad_to_multiple > 1:
    log("note: --pad_to_multiple gives APPROXIMATE results (padding changes the borders and "
        "the kernel estimate)")
  if args.tile and not predictor.tiled_is_exact:
    log("note: tiled results are approximate (see python -m dan_jax.infer --help)")
  image_dir = storage.join(run_dir, "images") if args.save_images else None
  try:
    rows, failures = run_jobs(predictor, jobs, crop, image_dir, log)
  except EvaluationError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  # Gaussian8 before DIV2KRK, datasets in the order given, images in name order.
  rank = {name: i for i, name in enumerate(list(hr_sets) + [DIV2KRK_NAME])}
  rows.sort(key=lambda r: (rank[r["dataset"]], r["subset"], r["image"]))
  summary = summarize(rows)
  table = format_tables(summary, scale, title, crop)
  _write_csv(storage.join(run_dir, "metrics.csv"), rows)
  storage.write_bytes(storage.join(run_dir, "table.txt"), (table + "\n").encode())
  info = {
      "checkpoint": str(storage.path(args.checkpoint)), "step": step,
      "model": checkpoint_lib.model_config_to_dict(model_config), "scale": scale,
      "crop_border": crop, "self_ensemble": args.self_ensemble, "use_ema": args.use_ema,
      "pad_to_multiple": args.pad_to_multiple, "tile": args.tile,
      "precision": args.precision, "devices": predictor.num_devices,
      "protocol": "PSNR/SSIM on the MATLAB Y channel of uint8 images (official "
                  "tensor2img rounding), crop border as given; kernel errors from "
                  "metrics.kernel_error (DANv2 only)",
      "datasets": summary, "failures": failures,
      "seconds": round(time.perf_counter() - start, 3),
  }
  storage.write_bytes(storage.join(run_dir, "summary.json"),
                      json.dumps(_json_safe(info), indent=1).encode())
  print(table)
  log(f"wrote {run_dir}/metrics.csv, summary.json, table.txt")
  if failures:
    log(f"error: {len(failures)} image(s) failed")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
