"""The sweep's results: results.csv, results.md (mean +- std over seeds), one matplotlib
heatmap per test set and TensorBoard HParams (used by launch/sweep.py)."""

from __future__ import annotations

import csv
import io
import math
from typing import Optional, Sequence

import numpy as np
import sweep_eval

from dan_jax import storage

CSV_FIELDS = (
  "method",
  "train_space",
  "seed",
  "test_set",
  "test_space",
  "psnr_y",
  "ssim_y",
  "kernel_mse",
  "n_images",
  "step",
  "status",
)
TITLES = {
  "psnr_y": ("Y-PSNR (dB)", 1.0, ".2f"),
  "ssim_y": ("SSIM (Y)", 1.0, ".4f"),
  "kernel_mse": ("Kernel MSE (x1e-4)", 1e4, ".2f"),
}
MISSING = "—"


def _values(results: dict, label: str, key: str, metric: str) -> tuple[list[float], int]:
  """(metric values over the seeds of one row and cell, number of seeds planned)."""
  vals, planned = [], 0
  for r in results.values():
    if r["run"].label != label:
      continue
    planned += 1
    s = r.get("scores", {}).get(key) if r["status"] == "done" else None
    if s and s.get(metric) is not None:
      vals.append(float(s[metric]))
  return vals, planned


def cell(vals: Sequence[float], planned: int, factor: float, fmt: str) -> str:
  """'mean ± std' over seeds ('mean' for one seed), '(k/n)' when some seeds are missing."""
  if not vals:
    return MISSING
  v = np.asarray(vals) * factor
  text = format(v.mean(), fmt)
  if planned > 1 and len(v) > 1:
    text += " ± " + format(v.std(ddof=1), fmt)
  if len(v) < planned:
    text += f" ({len(v)}/{planned})"
  return text


def write_csv(path: str, results: dict, test_keys: Sequence[str]) -> None:
  f = io.StringIO(newline="")
  w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
  w.writeheader()
  for r in results.values():
    run = r["run"]
    for key in test_keys:
      test_set, space = key.split("/")
      s = (r.get("scores") or {}).get(key) or {}
      done = r["status"] == "done" and bool(s)
      fmt = lambda m: "" if not done or s.get(m) is None else f"{s[m]:.6g}"
      w.writerow(
        {
          "method": run.version,
          "train_space": run.space,
          "seed": run.seed,
          "test_set": test_set,
          "test_space": space,
          "psnr_y": fmt("psnr_y"),
          "ssim_y": fmt("ssim_y"),
          "kernel_mse": fmt("kernel_mse"),
          "n_images": s.get("n", "") if done else "",
          "step": r.get("step", "") if done else "",
          "status": r["status"],
        }
      )
  storage.write_bytes(path, f.getvalue().encode(), overwrite=True)


def markdown(
  results: dict, labels: Sequence[str], test_sets: Sequence[str], test_spaces: Sequence[str]
) -> str:
  """One table per test set and metric: rows method/train space, columns test space."""
  seeds = sorted({r["run"].seed for r in results.values()})
  lines = [
    f"Rows: method/train kernel space; columns: test kernel space; mean ± std over seeds "
    f"{','.join(map(str, seeds))}; {MISSING}: not finished (see --mode=collect).",
  ]
  for ts in test_sets:
    for metric, (title, factor, fmt) in TITLES.items():
      body = []
      for label in labels:
        row = [
          cell(*_values(results, label, f"{ts}/{sp}", metric), factor, fmt) for sp in test_spaces
        ]
        body.append(row)
      if metric == "kernel_mse" and all(c == MISSING for row in body for c in row):
        continue  # no method estimates kernels of the test kernels' size
      lines += ["", f"{ts}: {title}", ""]
      lines.append("| train \\ test | " + " | ".join(test_spaces) + " |")
      lines.append("|---" * (len(test_spaces) + 1) + "|")
      lines += [f"| {label} | " + " | ".join(row) + " |" for label, row in zip(labels, body)]
  return "\n".join(lines) + "\n"


def heatmap(
  path: str, results: dict, labels: Sequence[str], test_set: str, test_spaces: Sequence[str]
) -> None:
  """Mean Y-PSNR over seeds: rows method/train space, columns test space, a colour bar."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  values = np.full((len(labels), len(test_spaces)), np.nan)
  for i, label in enumerate(labels):
    for j, sp in enumerate(test_spaces):
      vals, _ = _values(results, label, f"{test_set}/{sp}", "psnr_y")
      if vals:
        values[i, j] = float(np.mean(vals))
  fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(test_spaces), 1.2 + 0.55 * len(labels)), dpi=100)
  masked = np.ma.masked_invalid(values)
  im = ax.imshow(masked, cmap="viridis", aspect="auto")
  fig.colorbar(im, ax=ax, label="Y-PSNR (dB)")
  ax.set_xticks(range(len(test_spaces)), labels=list(test_spaces))
  ax.set_yticks(range(len(labels)), labels=list(labels))
  ax.set_xlabel("test kernel space")
  ax.set_ylabel("method / train kernel space")
  ax.set_title(f"{test_set}: Y-PSNR, mean over seeds")
  finite = values[np.isfinite(values)]
  mid = float(finite.mean()) if finite.size else 0.0
  for i in range(len(labels)):
    for j in range(len(test_spaces)):
      v = values[i, j]
      text = MISSING if math.isnan(v) else f"{v:.2f}"
      color = "black" if math.isnan(v) or v > mid else "white"
      ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  storage.write_bytes(path, buf.getvalue(), overwrite=True)


def write_hparams(logdir: str, results: dict) -> Optional[str]:
  """Each finished run as a TensorBoard HParams session (method, train space, seed ->
  scores), one folder per run under `logdir`."""
  from clu import metric_writers

  written = 0
  for name, r in results.items():
    if r["status"] != "done":
      continue
    run = r["run"]
    old = storage.path(storage.join(logdir, name))
    if old.exists():  # one session per run: the last collect's scores
      old.rmtree()
    writer = metric_writers.create_default_writer(storage.join(logdir, name), asynchronous=False)
    writer.write_hparams({"method": run.version, "train_space": run.space, "seed": run.seed})
    scalars = {
      f"{key}/{m}": s[m]
      for key, s in r["scores"].items()
      for m in sweep_eval.METRICS
      if s.get(m) is not None
    }
    writer.write_scalars(int(r.get("step", 0)), scalars)
    writer.close()
    written += 1
  return logdir if written else None
