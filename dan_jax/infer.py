"""Super-resolve image files with a trained or converted checkpoint, or an export.

The command line around a `prediction.SRPredictor`: `predict.Predictor` for
`--checkpoint` (whole images, tiles, self-ensemble) or `exported.ExportedPredictor` for
`--exported`. It reads every image of a file or folder, and writes each SR image with its
kernel estimate (or code) beside it, one `error:` line per image that fails. The manual
(modes, files, exit status) is `python -m dan_jax.infer --help`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import jax
from tqdm import tqdm

from dan_jax import checkpoint as checkpoint_lib
from dan_jax import ensemble
from dan_jax import exported
from dan_jax import image_io
from dan_jax import parallel
from dan_jax import prediction_io
from dan_jax import runtime
from dan_jax import storage
from dan_jax.errors import Error
from dan_jax.errors import InferenceError
from dan_jax.prediction import SRPredictor

_MANUAL = """\
  python -m dan_jax.infer --checkpoint DIR --input PATH_OR_FOLDER --output FOLDER
  python -m dan_jax.infer --exported DIR --input ... --output ...   # a dan_jax.export dir

`--checkpoint` is a training workdir (its latest checkpoint), one step's directory, or a
converted official checkpoint; the model config is stored with every checkpoint.
`--exported` runs the StableHLO artifact of `python -m dan_jax.export` instead (whole
images, `--self_ensemble` too; no model code, same results).

Whole-image inference (default) runs the model's full alternating loop on each image, as
the official `inference.py` does: the SR image is the last iteration's, the kernel (DANv2)
or code (DANv1) the last estimate.

Tiled inference (`--tile T`) runs the *same* alternating loop tile by tile, so it gives the
whole-image result for images too large for the accelerator:
  * Restorer: tiles of T x T LR pixels, neighbours overlapping by `--tile_overlap` O pixels;
    every tile's SR output is weighted by a window that is zero within `margin` LR pixels of
    a cut edge (image borders are not cut edges), rises with a raised cosine across the rest
    of the overlap and is one elsewhere; the SR image is the normalised weighted sum.
  * Estimator: DAN's Estimator is convolutional up to one global average pool, so the pool
    is computed exactly as the same weighted sum of per-tile features (of the SR image
    assembled above), and the code/kernel head is applied to the pooled features.
  * With O >= 2 x the receptive-field radius R of the Restorer (the family's
    `receptive_fields`), the
    margin is R and every pixel that counts was computed with its whole receptive field
    inside its tile: DANv2 results then equal whole-image inference to float rounding, at
    every iteration (this is the default overlap). With a smaller O the margin is 0 and
    tiles are feathered over the whole overlap: approximate, seams hidden.
  * DANv1 is always approximate when tiled: its channel attention pools every block's
    features over the image, which a tile sees only part of.
  * The model's family says what tiles need (`models.spec.Tiling`): DCLS refuses tiles (its
    Fourier deconvolution sees the whole image); the baseline (no Estimator) tiles exactly.
The code is therefore estimated from the whole image in both modes (no representative-tile
heuristic), and each alternating iteration costs one tiled pass of each network.

Self-ensemble (`--self_ensemble`): the official test_x8 (EDSR's): the 8 flips/transposes of
the LR image are super-resolved, transformed back and averaged. DANv2 kernels are
transformed back the same way and averaged; DANv1 reports the code of the untransformed
image (a PCA code has no flip).

Files: PNG, JPEG, BMP, TIFF, WebP in; 8- and 16-bit; grayscale is processed as 3 channels
and written back as grayscale; an alpha channel is upscaled separately with MATLAB bicubic
(`degradation.imresize`) and written back; EXIF orientation is applied. Results are PNG
(`{stem}_x{scale}.png`, 16-bit for 16-bit input) with the estimated kernel beside them
(DANv2: `{stem}_x{scale}_kernel.png` scaled for display and `_kernel.npy` with the values;
DANv1: `{stem}_x{scale}_code.npy`). Existing files are never replaced without
`--overwrite`, inputs never, and an output folder equal to the input folder is refused.

Exit status: 0 when every image was written; 1 when some failed (corrupt or unreadable
images, existing outputs; each gets one `error:` line and the others are still processed);
2 when nothing could be done (bad arguments, no images, bad checkpoint). Files in an input
folder without an image extension are skipped with a note and do not fail the run.
"""


def list_inputs(input_path: str) -> tuple[list[str], list[str]]:
  """(image files, skipped non-image files) of a file or a folder (not recursive).

  Raises:
    InferenceError: the path does not exist, or a folder holds no image files.
  """
  folder = storage.path(input_path)
  if folder.is_file():
    return [input_path], []
  if not folder.is_dir():
    raise InferenceError(f"input {input_path} does not exist")
  files = sorted(
    storage.join(input_path, f.name)
    for f in folder.iterdir()
    if not f.name.startswith(".") and f.is_file()
  )
  images = [f for f in files if image_io.is_image_name(f)]
  skipped = [f for f in files if not image_io.is_image_name(f)]
  if not images:
    what = (
      f" (only non-image files: {', '.join(os.path.basename(f) for f in skipped[:5])})"
      if skipped
      else ""
    )
    raise InferenceError(
      f"no images in {input_path}{what}; supported extensions: "
      f"{', '.join(image_io.IMAGE_EXTENSIONS)}"
    )
  return images, skipped


def _same_path(a: str, b: str) -> bool:
  return storage.canonical(a) == storage.canonical(b)


def _build_parser():
  p = argparse.ArgumentParser(
    prog="python -m dan_jax.infer",
    description="Blind super-resolution of images with a DAN checkpoint.",
    epilog=_MANUAL,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--checkpoint",
    default=None,
    help="training workdir (latest checkpoint), step directory or converted official checkpoint",
  )
  p.add_argument(
    "--exported",
    default=None,
    help="instead of --checkpoint: a `python -m dan_jax.export` directory; "
    "runs its StableHLO artifact (whole images, no model code)",
  )
  p.add_argument("--input", required=True, help="an image file or a folder of images")
  p.add_argument("--output", required=True, help="output folder (created if missing)")
  prediction_io.add_predictor_flags(p)
  p.add_argument(
    "--overwrite", action="store_true", help="replace existing output files (never the inputs)"
  )
  return p


def _exported_predictor(args) -> tuple[SRPredictor, int]:
  """`--exported DIR`: the StableHLO artifact's predictor (whole images; self-ensemble as
  a wrapper)."""
  given = [f"--{n}" for n in ("tile", "pad_to_multiple", "tile_overlap") if getattr(args, n)]
  if given:
    raise InferenceError(
      f"{', '.join(given)} cannot be used with --exported (the "
      "artifact runs whole images as exported)"
    )
  predictor = exported.ExportedPredictor(args.exported, batch_size=args.batch_size)
  step = predictor.step
  if args.self_ensemble:
    predictor = ensemble.SelfEnsemble(predictor)
  return predictor, step


def _setup(args) -> tuple[list[str], list[str], SRPredictor, int]:
  """(inputs, skipped files, predictor, step); raises errors.Error/OSError on bad input."""
  inputs, skipped = list_inputs(args.input)
  output = storage.path(args.output)
  if storage.path(args.input).is_dir() and output.exists() and _same_path(args.input, args.output):
    raise InferenceError(
      f"--output {args.output} is the input folder; choose another "
      "folder (inputs are never overwritten)"
    )
  if output.exists() and not output.is_dir():
    raise InferenceError(f"--output {args.output} exists and is not a folder")
  if (args.checkpoint is None) == (args.exported is None):
    raise InferenceError("give exactly one of --checkpoint and --exported")
  if args.exported is not None:
    predictor, step = _exported_predictor(args)
  else:
    model_config, variables, step = checkpoint_lib.load_model(args.checkpoint, use_ema=args.use_ema)
    predictor = prediction_io.build_predictor(args, model_config, variables)
  if not storage.is_url(output):  # object stores have no folders to create
    output.mkdir(parents=True, exist_ok=True)
  return inputs, skipped, predictor, step


def _print_notes(args, predictor: SRPredictor, skipped: list[str]) -> None:
  """Skipped files and the approximations the chosen flags make."""
  for f in skipped:
    print(
      f"note: skipping {f}: not an image file (supported: {', '.join(image_io.IMAGE_EXTENSIONS)})",
      file=sys.stderr,
    )
  if args.tile and not predictor.tiled_is_exact:
    why = predictor.tiled_approximation
    print(f"note: tiled results are approximate: {why}", file=sys.stderr)
  if args.pad_to_multiple > 1:
    print(
      "note: --pad_to_multiple results are approximate (padding changes borders and "
      "the kernel estimate)",
      file=sys.stderr,
    )


def _check_outputs(path: str, paths: dict, input_set: set, claimed: dict, overwrite: bool) -> None:
  """Refuses outputs that would replace an input, another image's output or a file."""
  for p in paths.values():
    if storage.canonical(p) in input_set:
      raise InferenceError(f"{path}: output {p} would replace an input file")
    if storage.canonical(p) in claimed:
      raise InferenceError(
        f"{path}: output {p} is already written for "
        f"{claimed[storage.canonical(p)]} (same file stem)"
      )
    if not overwrite and storage.path(p).exists():
      raise InferenceError(f"{path}: output {p} exists (pass --overwrite to replace)")


def _print_speed(args, n_inputs: int, times: list[float], megapixels: list[float]) -> None:
  total_t, total_mp = sum(times), sum(megapixels)
  line = (
    f"wrote {len(times)} of {n_inputs} image(s) to {args.output} in {total_t:.1f} s: "
    f"{total_t / total_mp:.2f} s per output megapixel"
  )
  if len(times) > 1:
    line += (
      f" ({sum(times[1:]) / sum(megapixels[1:]):.2f} s/MP after the first image, "
      "which includes compilation)"
    )
  print(line, file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
  """The command line; returns the exit status (0 ok, 1 some images failed, 2 fatal)."""
  args = _build_parser().parse_args(argv)
  # Before JAX starts. TensorFlow is imported only for alpha channels (upscale_alpha,
  # which hides the accelerators from it first), so it is not imported here.
  runtime.setup_entry_point(tensorflow=False)
  try:
    inputs, skipped, predictor, step = _setup(args)
  except (Error, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  spec = predictor.spec
  print(
    f"{spec.version} x{spec.scale} (step {step}) on {len(inputs)} image(s) -> "
    f"{args.output}; {parallel.describe(predictor.mesh)}, precision {args.precision}",
    file=sys.stderr,
  )
  _print_notes(args, predictor, skipped)

  input_set = {storage.canonical(f) for f in inputs}
  claimed: dict[str, str] = {}
  failed, times, megapixels = 0, [], []
  for path in tqdm(inputs, unit="img", file=sys.stderr, disable=None):
    start = time.perf_counter()
    try:
      paths = prediction_io.output_paths(path, args.output, spec.scale, predictor.has_kernel)
      _check_outputs(path, paths, input_set, claimed, args.overwrite)
      image = image_io.read_image(path)
      try:
        pred = predictor.predict(image.rgb)
      except InferenceError as e:  # an image this model or artifact cannot take
        raise InferenceError(f"{path}: {e}") from e
      prediction_io.save_prediction(pred, paths, image, spec.scale, args.overwrite)
      for p in paths.values():
        claimed[storage.canonical(p)] = path
    except Error as e:  # this image only: ImageError, InferenceError, a missing package
      tqdm.write(f"error: {e}", file=sys.stderr)
      failed += 1
      continue
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      tqdm.write(
        f"error: {path}: out of accelerator memory for a {image.height}x"
        f"{image.width} image; use --tile (e.g. --tile 256)",
        file=sys.stderr,
      )
      failed += 1
      continue
    times.append(time.perf_counter() - start)
    megapixels.append(pred.sr.shape[0] * pred.sr.shape[1] / 1e6)
  if times:
    _print_speed(args, len(inputs), times, megapixels)
  if failed:
    print(f"error: {failed} of {len(inputs)} image(s) failed", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
