"""Kernel-space ablation sweep: train on each kernel space, test on each kernel space.

  python launch/sweep.py --config=configs/demo.py --workdir=/tmp/sweep \
      --train_spaces=iso,aniso,motion --test_spaces=iso,aniso,motion,plateau
  python launch/sweep.py ... --mode=plan   # print one training command per train space
  python launch/sweep.py ... --mode=collect  # evaluate runs trained elsewhere (the plan)

Kernel spaces are `dan_jax.degradation.KERNEL_SPACES` (iso = setting 1, aniso = setting 2,
generalized, plateau, motion, mixed); each run's PCA is built on its own kernel space.
Every trained model is tested on one fixed synthesized test set per test space (held-out
photos, kernels drawn with a fixed seed, 8-bit LR), so all train spaces see the same
images. Results: WORKDIR/results.csv, results.md (Y-PSNR table, and kernel error for
DANv2 and DCLS) and heatmap.png. Extra arguments are config overrides (`num_train_steps=200`).

Methods on an axis: `--methods=v2,dcls` trains the config file with each argument
(`configs/demo.py:v2`, `configs/demo.py:dcls`) on each train space, into
WORKDIR/train_<method>_<space>; the tables then have one row per (method, train space).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from typing import Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

TEST_SEED = 1234  # the test sets' kernels and noise: the same for every trained model


def space_overrides(space: str, kernel_size: int) -> dict:
  from dan_jax import degradation  # pylint: disable=g-import-not-at-top

  if space not in degradation.KERNEL_SPACES:
    raise ValueError(f"unknown kernel space {space!r}; known: {degradation.KERNEL_SPACES}")
  return degradation.kernel_space_overrides(space, kernel_size)


def train_config(config_spec: str, space: str, overrides: Sequence[str]):
  """The config of one training run: the base config, the overrides, the kernel space."""
  from dan_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.load_with_overrides(config_spec, overrides)
  config.degradation.update(space_overrides(space, config.model.kernel_size))
  return config


def plan_runs(args, overrides: Sequence[str]) -> list[tuple[str, str, str, str]]:
  """(row label, config spec, run dir, train space) of every training run."""
  runs = []
  methods = [m for m in (args.methods or "").split(",") if m]
  for method in methods or [None]:
    spec = args.config if method is None else f"{args.config.partition(':')[0]}:{method}"
    version = train_config(spec, "iso", overrides).model.version if method else ""
    for space in args.train_spaces.split(","):
      label = space if method is None else f"{version}/{space}"
      run = f"train_{space}" if method is None else f"train_{method}_{space}"
      runs.append((label, spec, _join(args.workdir, run), space))
  return runs


def plan_commands(args, overrides: Sequence[str]) -> list[list[str]]:
  """One `python -m dan_jax.main` per training run, for a cluster's scheduler."""
  commands = []
  for _, spec, run_dir, space in plan_runs(args, overrides):
    # The kernel space's ranges depend on the kernel size of the config being launched.
    kernel_size = train_config(spec, space, overrides).model.kernel_size
    extra = [
      f"degradation.{k}={v}"
      for k, v in space_overrides(space, kernel_size).items()
      if k != "kernel_size"
    ]
    commands.append(_common.train_command(spec, run_dir, list(overrides) + extra))
  return commands


def make_test_set(space: str, config, num_images: int, crop: int) -> dict:
  """Fixed HR crops of the held-out photos, degraded with kernels from `space`."""
  from dan_jax import degradation  # pylint: disable=g-import-not-at-top
  from dan_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  scale, k = config.model.scale, config.model.kernel_size
  hrs = []
  for img in input_pipeline.demo_images("val"):
    h, w = img.shape[:2]
    for y in range(0, h - crop + 1, crop):
      for x in range(0, w - crop + 1, crop):
        hrs.append(img[y : y + crop, x : x + crop])
  if len(hrs) < num_images:
    raise ValueError(f"only {len(hrs)} test crops of {crop} px; lower --test_images")
  pick = np.random.default_rng(TEST_SEED).choice(len(hrs), num_images, replace=False)
  hr = np.stack([hrs[i] for i in sorted(pick)]).astype(np.float32) / 255.0
  spec = degradation.kernel_space(space, k)
  kernels = degradation.sample_kernels(num_images, spec, [TEST_SEED, 0]).numpy()
  lr = degradation.quantize_8bit(degradation.degrade(hr, kernels, scale)).numpy()
  return {"hr": hr, "lr": np.clip(lr, 0, 1), "kernel": kernels}


def evaluate_run(workdir: str, tests: dict) -> dict:
  """Y-PSNR (and kernel error for DANv2/DCLS) of one trained run on every test set."""
  import jax  # pylint: disable=g-import-not-at-top

  from dan_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from dan_jax import metrics  # pylint: disable=g-import-not-at-top
  from dan_jax import models  # pylint: disable=g-import-not-at-top

  model_config, variables, _ = checkpoint.load_model(workdir)
  model = models.create_model(model_config)
  apply = jax.jit(model.apply)
  scale = model.spec.scale
  out = {}
  for space, t in tests.items():
    res = apply(variables, t["lr"])
    sr = np.asarray(res.sr[-1])
    # Kernel errors only when the estimate has the test kernels' size.
    scored = res.kernel is not None and res.kernel.shape[-1] == t["kernel"].shape[-1]
    est = np.asarray(res.kernel[-1]) if scored else [None] * len(sr)
    scores = [
      metrics.score_prediction(s, h, scale, kernel=e, true_kernel=k)
      for s, h, e, k in zip(sr, t["hr"], est, t["kernel"])
    ]
    row = {"psnr_y": float(np.mean([r["psnr_y"] for r in scores])), "method": model.spec.version}
    if scored:
      row["kernel_mse"] = float(np.mean([r["kernel_mse"] for r in scores]))
    out[space] = row
  return out


def _join(workdir: str, name: str) -> str:
  from dan_jax import storage  # pylint: disable=g-import-not-at-top

  return storage.join(workdir, name)


def _write(path: str, data: bytes) -> None:
  """Writes (replaces) a result file, local or in an object store (gs://...)."""
  from dan_jax import storage  # pylint: disable=g-import-not-at-top

  storage.write_bytes(path, data, overwrite=True)


def write_results(workdir: str, results: dict, train_spaces, test_spaces) -> str:
  """results.csv, results.md and heatmap.png; returns the Markdown."""
  f = io.StringIO(newline="")
  w = csv.writer(f)
  w.writerow(["method", "train_space", "test_space", "psnr_y", "kernel_mse"])
  for tr in train_spaces:
    for te in test_spaces:
      r = results[tr][te]
      w.writerow(
        [
          r["method"],
          tr.rpartition("/")[2],
          te,
          f"{r['psnr_y']:.4f}",
          f"{r['kernel_mse']:.6g}" if "kernel_mse" in r else "",
        ]
      )
  _write(_join(workdir, "results.csv"), f.getvalue().encode())
  lines = [
    "Y-PSNR (dB), rows: train kernel space, columns: test kernel space",
    "",
    "| train \\ test | " + " | ".join(test_spaces) + " |",
    "|---" * (len(test_spaces) + 1) + "|",
  ]
  for tr in train_spaces:
    lines.append(
      f"| {tr} | " + " | ".join(f"{results[tr][te]['psnr_y']:.2f}" for te in test_spaces) + " |"
    )
  if all("kernel_mse" in results[tr][te] for tr in train_spaces for te in test_spaces):
    lines += [
      "",
      "Kernel MSE (x1e-4)",
      "",
      "| train \\ test | " + " | ".join(test_spaces) + " |",
      "|---" * (len(test_spaces) + 1) + "|",
    ]
    for tr in train_spaces:
      lines.append(
        f"| {tr} | "
        + " | ".join(f"{1e4 * results[tr][te]['kernel_mse']:.2f}" for te in test_spaces)
        + " |"
      )
  markdown = "\n".join(lines) + "\n"
  _write(_join(workdir, "results.md"), markdown.encode())
  heatmap(results, train_spaces, test_spaces, _join(workdir, "heatmap.png"))
  return markdown


def heatmap(results: dict, train_spaces, test_spaces, path: str) -> None:
  """A PSNR heatmap (rows train, columns test) drawn with Pillow."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top

  cell, margin = 90, 100
  values = np.array([[results[tr][te]["psnr_y"] for te in test_spaces] for tr in train_spaces])
  lo, hi = float(values.min()), float(values.max())
  img = Image.new(
    "RGB", (margin + cell * len(test_spaces), margin + cell * len(train_spaces)), "white"
  )
  draw = ImageDraw.Draw(img)
  font = ImageFont.load_default()
  for j, te in enumerate(test_spaces):
    draw.text((margin + j * cell + 8, margin - 20), te, fill="black", font=font)
  for i, tr in enumerate(train_spaces):
    draw.text((8, margin + i * cell + cell // 2), tr, fill="black", font=font)
    for j in range(len(test_spaces)):
      t = 0.5 if hi == lo else (values[i, j] - lo) / (hi - lo)
      color = (int(255 * t), int(80 + 100 * (1 - abs(2 * t - 1))), int(255 * (1 - t)))
      box = (
        margin + j * cell,
        margin + i * cell,
        margin + (j + 1) * cell - 2,
        margin + (i + 1) * cell - 2,
      )
      draw.rectangle(box, fill=color)
      draw.text(
        (box[0] + 20, box[1] + cell // 2 - 6), f"{values[i, j]:.2f}", fill="white", font=font
      )
  draw.text((8, 8), "Y-PSNR: rows train space, columns test space", fill="black", font=font)
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  _write(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/demo.py", help="base config file[:arg]")
  parser.add_argument("--workdir", required=True, help="sweep directory")
  parser.add_argument("--train_spaces", default="iso,aniso,motion")
  parser.add_argument("--test_spaces", default="iso,aniso,motion")
  parser.add_argument(
    "--methods", default="", help="config arguments to compare, e.g. v2,dcls (default: --config's)"
  )
  parser.add_argument(
    "--mode",
    default="local",
    choices=("local", "plan", "collect"),
    help="local: train one after another here, then evaluate; plan: "
    "print the training commands; collect: evaluate existing runs",
  )
  parser.add_argument("--test_images", type=int, default=8, help="test crops per space")
  parser.add_argument("--test_crop", type=int, default=96, help="HR size of a test crop")
  args, overrides = parser.parse_known_args(argv)
  from dan_jax import runtime  # pylint: disable=g-import-not-at-top

  runtime.setup_entry_point()  # before JAX starts; TensorFlow synthesizes the test sets
  train_spaces = args.train_spaces.split(",")
  test_spaces = args.test_spaces.split(",")
  try:
    for space in train_spaces + test_spaces:
      space_overrides(space, 21)
    if args.mode == "plan":
      return _common.run_all(plan_commands(args, overrides), dry_run=True)
    from dan_jax import train  # pylint: disable=g-import-not-at-top

    base = train_config(args.config, train_spaces[0], overrides)
    tests = {s: make_test_set(s, base, args.test_images, args.test_crop) for s in test_spaces}
    from dan_jax import storage  # pylint: disable=g-import-not-at-top

    if not storage.is_url(args.workdir):  # object stores have no folders to create
      storage.path(args.workdir).mkdir(parents=True, exist_ok=True)
    results = {}
    runs = plan_runs(args, overrides)
    for label, spec, run_dir, space in runs:
      if args.mode == "local":
        print(f"== training {label} on kernel space {space!r} -> {run_dir}", flush=True)
        train.train_and_evaluate(train_config(spec, space, overrides), run_dir)
      results[label] = evaluate_run(run_dir, tests)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(write_results(args.workdir, results, [r[0] for r in runs], test_spaces))
  print(f"wrote {args.workdir}/results.csv, results.md, heatmap.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
