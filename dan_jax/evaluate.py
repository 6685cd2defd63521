"""Benchmark a checkpoint with the official test protocol: Gaussian8 and DIV2KRK.

Super-resolves every LR image of the test sets (`benchmark_sets` builds or reads them),
scores it as the official test.py does (uint8, MATLAB Y channel, border = scale) and
writes the paper-shaped tables, a CSV row per image and a JSON summary. Images are grouped
by LR size so that same-sized images share a compiled program and a batch. The manual
(settings, protocol, outputs, exit status) is `python -m dan_jax.evaluate --help`.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import sys
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from tqdm import tqdm

from dan_jax import benchmark_sets
from dan_jax import checkpoint as checkpoint_lib
from dan_jax import image_io
from dan_jax import metrics
from dan_jax import parallel
from dan_jax import prediction_io
from dan_jax import runtime
from dan_jax import storage
from dan_jax.benchmark_sets import div2krk_jobs
from dan_jax.benchmark_sets import DIV2KRK_NAME
from dan_jax.benchmark_sets import gaussian8_jobs
from dan_jax.benchmark_sets import Job
from dan_jax.benchmark_sets import parse_datasets
from dan_jax.benchmark_sets import prepare_gaussian8
from dan_jax.errors import Error
from dan_jax.errors import EvaluationError
from dan_jax.errors import ImageError
from dan_jax.prediction import SRPredictor

_MANUAL = """\
  python -m dan_jax.evaluate --checkpoint DIR --out WORKDIR \\
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
CSV_FIELDS = (
  "dataset",
  "subset",
  "image",
  "lr_height",
  "lr_width",
  "psnr_y",
  "ssim_y",
  "psnr_rgb",
  "ssim_rgb",
  "kernel_mse",
  "kernel_mae",
  "kernel_sad",
  "kernel_psnr",
)
METRIC_FIELDS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
KERNEL_FIELDS = ("kernel_mse", "kernel_mae", "kernel_sad", "kernel_psnr")


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------


def _image_size(path: str) -> tuple[int, int]:
  from PIL import Image  # noqa: PLC0415

  try:
    with storage.path(path).open("rb") as f, Image.open(f) as im:
      return im.size[1], im.size[0]
  except Exception:  # reported when read for real
    return (0, 0)


def score(
  job: Job, sr: np.ndarray, kernel: Optional[np.ndarray], scale: int, crop_border: int
) -> dict:
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
      raise EvaluationError(
        f"{job.gt_path}: GT is {gh}x{gw} but the LR image "
        f"{job.lr_path} gives a {h}x{w} SR image at x{scale}"
      )
  true_kernel = None if kernel is None else benchmark_sets.true_kernel(job)
  return {
    "dataset": job.dataset,
    "subset": job.subset,
    "image": job.name,
    "lr_height": sr.shape[0] // scale,
    "lr_width": sr.shape[1] // scale,
    **metrics.score_prediction(
      sr_u8, gt_u8, scale, crop_border=crop_border, kernel=kernel, true_kernel=true_kernel, rgb=True
    ),
  }


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
      subsets[subset] = {
        "n": len(srows),
        **{f: _mean(srows, f) for f in METRIC_FIELDS + KERNEL_FIELDS},
      }
    out[dataset] = {
      "subsets": subsets,
      "all": {"n": len(drows), **{f: _mean(drows, f) for f in METRIC_FIELDS + KERNEL_FIELDS}},
    }
  return out


def _cell(avg: Optional[dict]) -> str:
  if not avg or avg.get("psnr_y") is None:
    return "-"
  return f"{avg['psnr_y']:.2f}/{avg['ssim_y']:.4f}"


def format_tables(summary: dict, scale: int, title: str, crop_border: int) -> str:
  """The paper-shaped tables: Gaussian8 (rows datasets, columns sigmas + average) and
  DIV2KRK (one PSNR/SSIM column and the kernel errors)."""
  from dan_jax import degradation  # TensorFlow: only where Gaussian8 sets were built

  lines = []
  g8 = {d: s for d, s in summary.items() if d != DIV2KRK_NAME}
  if g8:
    sigmas = [f"{s:.2f}" for s in degradation.gaussian8_sigmas(scale)]
    headers = ["Dataset"] + [f"sig {s}" for s in sigmas] + ["Average"]
    body = [
      [d] + [_cell(s["subsets"].get(sig)) for sig in sigmas] + [_cell(s["all"])]
      for d, s in g8.items()
    ]
    lines.append(f"Setting 1 (Gaussian8 x{scale}), {title}: Y-PSNR/SSIM, crop border {crop_border}")
    lines += _grid(headers, body)
  if DIV2KRK_NAME in summary:
    a = summary[DIV2KRK_NAME]["all"]
    fmt = lambda v, f: "n/a" if v is None else format(v, f)
    headers = ["Dataset", "PSNR/SSIM", "kernel MSE", "kernel SAD", "kernel PSNR"]
    body = [
      [
        DIV2KRK_NAME,
        _cell(a),
        fmt(a["kernel_mse"], ".3e"),
        fmt(a["kernel_sad"], ".4f"),
        fmt(a["kernel_psnr"], ".2f"),
      ]
    ]
    if lines:
      lines.append("")
    lines.append(f"Setting 2 (DIV2KRK x{scale}), {title}: Y-PSNR/SSIM, crop border {crop_border}")
    lines += _grid(headers, body)
  return "\n".join(lines)


def _grid(headers: list[str], body: list[list[str]]) -> list[str]:
  widths = [max(len(r[i]) for r in [headers] + body) for i in range(len(headers))]
  row = lambda r: " | ".join(
    c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
  )
  return [row(headers), "-+-".join("-" * w for w in widths)] + [row(r) for r in body]


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def run_jobs(
  predictor: SRPredictor,
  jobs: list[Job],
  crop_border: int,
  image_dir: Optional[str] = None,
  log=print,
) -> tuple[list[dict], list[dict]]:
  """Super-resolves and scores every job; returns (rows, failures).

  Jobs are grouped by LR size so that same-sized images share a program and a batch.
  """
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
      for i in idx[start : start + predictor.batch_size]:
        try:
          lrs.append(image_io.read_image(jobs[i].lr_path).rgb)
          batch.append(i)
        except ImageError as e:
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
            f"{lrs[ks[0]].shape[1]} pixels; lower --batch_size or use --tile"
          ) from e
        for k, pred in zip(ks, preds):
          job = jobs[batch[k]]
          try:
            rows[batch[k]] = score(job, pred.sr, pred.kernel, predictor.scale, crop_border)
            if image_dir:
              sub = storage.join(image_dir, job.dataset, job.subset and f"sig{job.subset}")
              if not storage.is_url(sub):  # object stores have no folders to create
                storage.path(sub).mkdir(parents=True, exist_ok=True)
              paths = prediction_io.output_paths(
                job.lr_path, sub, predictor.scale, predictor.has_kernel
              )
              prediction_io.save_prediction(pred, paths, None, predictor.scale)
          except (Error, ValueError) as e:  # this image only
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
  p = argparse.ArgumentParser(
    prog="python -m dan_jax.evaluate",
    description="Evaluate a DAN checkpoint on Gaussian8 (setting 1) and DIV2KRK "
    "(setting 2) with the official protocol.",
    epilog=_MANUAL,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--checkpoint",
    required=True,
    help="training workdir (latest checkpoint), step directory or converted official checkpoint",
  )
  p.add_argument(
    "--dataset",
    action="append",
    default=[],
    metavar="NAME=HR_DIR",
    help="a folder of HR images evaluated as Gaussian8 (repeatable)",
  )
  p.add_argument(
    "--hr_dirs",
    default="",
    metavar="A=DIR,B=DIR",
    help="several --dataset at once, comma-separated",
  )
  p.add_argument("--div2krk", default=None, help="DIV2KRK folder (gt/, lr_x2/, ...)")
  p.add_argument(
    "--out",
    required=True,
    help="workdir: Gaussian8 caches and an eval-<time>-x<scale> results folder",
  )
  p.add_argument(
    "--scale",
    type=int,
    default=None,
    help="must match the checkpoint's scale (default: the checkpoint's)",
  )
  p.add_argument(
    "--crop_border",
    type=int,
    default=None,
    help="pixels cut on each side before the metrics (default: the scale)",
  )
  p.add_argument(
    "--save_images", action="store_true", help="also write SR images and estimated kernels"
  )
  prediction_io.add_predictor_flags(p)
  return p


def _setup(args, log: Callable[[str], None]) -> dict:
  """Checks the flags, loads the checkpoint, builds the predictor and the jobs (test sets
  synthesized or read); raises errors.Error/OSError on bad input."""
  hr_sets = parse_datasets(args.dataset, args.hr_dirs)
  if not hr_sets and not args.div2krk:
    raise EvaluationError("nothing to evaluate: give --dataset NAME=HR_DIR, --hr_dirs or --div2krk")
  if hr_sets:
    runtime.require_tensorflow("Building Gaussian8 test sets (--dataset, --hr_dirs)")
  model_config, variables, step = checkpoint_lib.load_model(args.checkpoint, use_ema=args.use_ema)
  scale = int(model_config.scale)
  if args.scale is not None and args.scale != scale:
    raise EvaluationError(
      f"--scale {args.scale} does not match the checkpoint, which is a x{scale} model"
    )
  crop = scale if args.crop_border is None else args.crop_border
  if crop < 0:
    raise EvaluationError(f"--crop_border must be >= 0, got {crop}")
  predictor = prediction_io.build_predictor(args, model_config, variables)
  jobs = []
  if args.div2krk:
    jobs += div2krk_jobs(args.div2krk, scale, log)
  if not storage.is_url(args.out):  # object stores have no folders to create
    storage.path(args.out).mkdir(parents=True, exist_ok=True)
  for name, hr_dir in hr_sets.items():
    jobs += gaussian8_jobs(name, prepare_gaussian8(name, hr_dir, args.out, scale, log), scale)
  return dict(
    hr_sets=hr_sets,
    model_config=model_config,
    step=step,
    scale=scale,
    crop=crop,
    predictor=predictor,
    jobs=jobs,
    run_dir=_new_run_dir(args.out, scale, args.self_ensemble),
  )


def _write_report(
  args, run: dict, rows: list[dict], failures: list, title: str, start: float
) -> str:
  """Sorts the rows, writes metrics.csv, table.txt and summary.json; returns the table."""
  run_dir, scale, crop = run["run_dir"], run["scale"], run["crop"]
  # Gaussian8 before DIV2KRK, datasets in the order given, images in name order.
  rank = {name: i for i, name in enumerate(list(run["hr_sets"]) + [DIV2KRK_NAME])}
  rows.sort(key=lambda r: (rank[r["dataset"]], r["subset"], r["image"]))
  summary = summarize(rows)
  table = format_tables(summary, scale, title, crop)
  _write_csv(storage.join(run_dir, "metrics.csv"), rows)
  storage.write_bytes(storage.join(run_dir, "table.txt"), (table + "\n").encode())
  info = {
    "checkpoint": str(storage.path(args.checkpoint)),
    "step": run["step"],
    "model": checkpoint_lib.model_config_to_dict(run["model_config"]),
    "scale": scale,
    "crop_border": crop,
    "self_ensemble": args.self_ensemble,
    "use_ema": args.use_ema,
    "pad_to_multiple": args.pad_to_multiple,
    "tile": args.tile,
    "precision": args.precision,
    "devices": run["predictor"].num_devices,
    "protocol": "PSNR/SSIM on the MATLAB Y channel of uint8 images (official "
    "tensor2img rounding), crop border as given; kernel errors from "
    "metrics.kernel_error (DANv2 and DCLS)",
    "datasets": summary,
    "failures": failures,
    "seconds": round(time.perf_counter() - start, 3),
  }
  storage.write_bytes(
    storage.join(run_dir, "summary.json"), json.dumps(_json_safe(info), indent=1).encode()
  )
  return table


def main(argv: Optional[list[str]] = None) -> int:
  """The command line; returns the exit status (0 ok, 1 some images failed, 2 fatal)."""
  args = _build_parser().parse_args(argv)
  log = lambda msg: print(msg, file=sys.stderr)
  # Before JAX starts: XLA:CPU flag on CPU-only hosts; TensorFlow (Gaussian8 synthesis)
  # kept off the accelerators.
  runtime.setup_entry_point()
  start = time.perf_counter()
  try:
    run = _setup(args, log)
  except (Error, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  predictor, run_dir = run["predictor"], run["run_dir"]
  ensemble = ", x8 self-ensemble" if args.self_ensemble else ""
  title = f"{predictor.spec.version} x{run['scale']} (step {run['step']}{ensemble})"
  log(
    f"evaluating {title} on {len(run['jobs'])} LR image(s) with "
    f"{parallel.describe(predictor.mesh)}, precision {args.precision}; results in {run_dir}"
  )
  if args.pad_to_multiple > 1:
    log(
      "note: --pad_to_multiple gives APPROXIMATE results (padding changes the borders and "
      "the kernel estimate)"
    )
  if args.tile and not predictor.tiled_is_exact:
    log("note: tiled results are approximate (see python -m dan_jax.infer --help)")
  image_dir = storage.join(run_dir, "images") if args.save_images else None
  try:
    rows, failures = run_jobs(predictor, run["jobs"], run["crop"], image_dir, log)
  except Error as e:  # out of accelerator memory: nothing more can be done
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(_write_report(args, run, rows, failures, title, start))
  log(f"wrote {run_dir}/metrics.csv, summary.json, table.txt")
  if failures:
    log(f"error: {len(failures)} image(s) failed")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
