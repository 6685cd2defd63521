"""Export a checkpoint for deployment, and check every artifact against JAX.

An artifact holds the whole alternating loop with the weights baked in: LR RGB
[B, H, W, 3] -> {'sr', 'code'(, 'kernel')} of the last iteration. `FORMATS` is the table
of formats (file, symbolic shapes, writer, runtime, what it needs installed): a new format
is one entry. Each artifact is loaded back with its own runtime and compared with
`model.apply` before it is kept; `exported.ExportedPredictor` runs the StableHLO one.
The manual (formats, checks, manifest, exit status) is `python -m dan_jax.export --help`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from dan_jax.errors import ArtifactCheckError
from dan_jax.errors import Error
from dan_jax.errors import ExportError
from dan_jax.exported import MANIFEST
from dan_jax.runtime import TENSORFLOW_HINT

# Largest difference from `model.apply` allowed per output (SR, code, kernel), relative to
# max(1, max |output|): for a trained model (SR in [0, 1]) an absolute 1e-3, a quarter of
# an 8-bit grey level; an untrained one's SR reaches hundreds, and float32 rounding with
# it. The runtimes only reorder float32 sums (measured: README "Export"); bfloat16 models
# get 3e-2.
TOLERANCE = {"float32": 1e-3, "bfloat16": 3e-2, "float16": 1e-2}
# jax.export / jax2tf lowering platforms of the StableHLO and SavedModel artifacts.
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
EXPORT_HINT = 'pip install "dan_jax[export]" && pip install --no-deps "jax2onnx>=0.17.1,<0.18"'
_MANUAL = """\
  python -m dan_jax.export --checkpoint DIR --out DIR \\
      --format stablehlo,savedmodel,tflite,onnx [--size HxW] [--input_dtype uint8]

Each artifact holds the whole alternating loop with the weights baked in: LR RGB
[B, H, W, 3] (NHWC; float32 in [0, 1], or uint8 in [0, 255] with `--input_dtype uint8`)
-> {'sr': [B, sH, sW, 3] float32 in [0, 1] (unclipped, as `model.apply`), 'code':
[B, code_len] float32, and 'kernel': [B, k, k] float32 when the model estimates one}. The
outputs are the last iteration's, as `infer` and the official `inference.py` report.

Formats (file in --out; runtime that checks it; shapes):
  stablehlo   dan.stablehlo   `jax.export.deserialize`    symbolic batch, height, width
  savedmodel  savedmodel/     TensorFlow (jax2tf, XlaCallModule; signature
                              'serving_default', input 'lr')  symbolic batch, height, width
  tflite      dan.tflite      LiteRT interpreter (ai-edge-litert)  fixed 1 x H x W (--size):
                              the TFLite converter cannot lower the dynamic slices that
                              symbolic shapes produce
  onnx        dan.onnx        onnxruntime (jax2onnx, opset 21)   symbolic batch, height, width
DCLS's artifacts take one LR size (--size), with a symbolic batch where the format has one:
its Fourier deconvolution is built for the image size.

Every artifact is checked when written: loaded back with its own runtime and run on two
crops of real photographs of different sizes (the symbolic formats also at batch 2); the
largest difference from `model.apply` of each output (relative to max(1, max |output|))
must be within the tolerance (1e-3 for float32 models), or the command fails with one
`error:` line, removes that artifact and keeps the ones already written and checked.
`manifest.json` beside the artifacts records the model config, input/output conventions,
each artifact's shapes, measured differences and size, and the package versions used.
`python -m dan_jax.infer --exported DIR` runs the StableHLO artifact without the model
code.

SavedModel and TFLite need TensorFlow (`pip install "dan_jax[tf]"`); TFLite and ONNX need
`pip install "dan_jax[export]"` (onnxruntime, ai-edge-litert, ...) and
`pip install --no-deps "jax2onnx>=0.17.1,<0.18"` (its orbax-checkpoint pin is too old).
Exit status: 0 every artifact written and checked; 1 an artifact failed its check; 2
nothing could be done (bad arguments, bad checkpoint, missing package).
"""
# Original jnp.shape, taken before jax2onnx patches it (see onnx_bytes).
_JNP_SHAPE = jnp.shape


# ---------------------------------------------------------------------------------------
# The exported function
# ---------------------------------------------------------------------------------------


def serving_fn(
  model: Any, variables: dict, input_dtype: str = "float32"
) -> Callable[[jax.Array], dict]:
  """lr [B, H, W, C] -> {'sr', 'code'(, 'kernel')}: the last iteration, weights baked in."""
  variables = jax.tree_util.tree_map(jnp.asarray, variables)

  def fn(lr):
    x = lr.astype(jnp.float32)
    if input_dtype == "uint8":
      x = x / 255.0
    out = model.apply(variables, x)
    # Static slices of the last iteration (not `[-1]`, which is a gather).
    last = lambda a: jax.lax.index_in_dim(a, a.shape[0] - 1, 0, keepdims=False)
    result = {"sr": last(out.sr).astype(jnp.float32), "code": last(out.code).astype(jnp.float32)}
    if out.kernel is not None:
      result["kernel"] = last(out.kernel).astype(jnp.float32)
    return result

  return fn


def _pointwise_as_conv(next_fun, args, kwargs, context):
  """Flax interceptor: 1x1 convolutions as convolutions (TFLite only).

  `layers.Conv2d` runs a 1x1 convolution as a rank-4 dot_general (cheaper on XLA:CPU); the
  TFLite converter lowers that to a `batch_matmul` it then rejects ("invalid output
  rank"). The convolution op gives the same values and converts.
  """
  from dan_jax.models import layers

  m = context.module
  if (
    context.method_name == "_conv"
    and isinstance(m, layers.Conv2d)
    and m.kernel_size == 1
    and m.stride == 1
    and m.padding == 0
  ):
    x, kernel = args
    return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  return next_fun(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# Writers and runners, one pair per format
# ---------------------------------------------------------------------------------------


def _need(module: str, what: str, hint: str = EXPORT_HINT):
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ExportError(
      f"{what} needs the package {module.split('.')[0]!r}, which is not installed: {hint}"
    ) from e


def _in_dtype(input_dtype: str):
  return jnp.uint8 if input_dtype == "uint8" else jnp.float32


def _input_spec(in_shape: Sequence[int | str], input_dtype: str, upper: bool = False):
  """The input's ShapeDtypeStruct: names in `in_shape` ('b', 'h', 'w') become symbolic."""
  dims = ", ".join(str(d).upper() if upper else str(d) for d in in_shape)
  return jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims), _in_dtype(input_dtype))


def stablehlo_bytes(
  fn: Callable, in_shape: Sequence[int | str], input_dtype: str, platforms: Sequence[str]
) -> bytes:
  """jax.export of `fn` at `in_shape` (e.g. ['b', 'h', 'w', 3]: symbolic), serialised."""
  spec = _input_spec(in_shape, input_dtype)
  return bytes(jax.export.export(jax.jit(fn), platforms=tuple(platforms))(spec).serialize())


def _tf_function(
  fn: Callable, in_shape: Sequence[int | str], input_dtype: str, platforms: Sequence[str]
):
  from jax.experimental import jax2tf
  import tensorflow as tf

  symbolic = any(isinstance(d, str) for d in in_shape)
  converted = jax2tf.convert(
    fn,
    polymorphic_shapes=[f"({', '.join(map(str, in_shape))})"] if symbolic else None,
    native_serialization_platforms=tuple(platforms),
  )
  dtype = tf.uint8 if input_dtype == "uint8" else tf.float32
  shape = [None if isinstance(d, str) else d for d in in_shape]
  return tf.function(
    converted, autograph=False, input_signature=[tf.TensorSpec(shape, dtype, name="lr")]
  )


def write_savedmodel(
  fn: Callable, path: str, in_shape: Sequence[int | str], input_dtype: str, platforms: Sequence[str]
) -> None:
  """A TF SavedModel (signature 'serving_default', input 'lr') of `fn` at `path`."""
  import tensorflow as tf

  module = tf.Module()
  module.serve = _tf_function(fn, in_shape, input_dtype, platforms)
  tf.saved_model.save(
    module, path, signatures={"serving_default": module.serve.get_concrete_function()}
  )


def tflite_bytes(fn: Callable, shape: Sequence[int], input_dtype: str) -> bytes:
  """A float32 TFLite flatbuffer of `fn` at the fixed input shape (via a SavedModel)."""
  import flax.linen as nn
  import tensorflow as tf

  def fixed(lr):
    with nn.intercept_methods(_pointwise_as_conv):
      return fn(lr)

  with tempfile.TemporaryDirectory() as tmp:
    write_savedmodel(fixed, tmp, shape, input_dtype, ("cpu",))
    converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
    return bytes(converter.convert())


def onnx_bytes(
  fn: Callable, in_shape: Sequence[int | str], input_dtype: str, names: Sequence[str]
) -> bytes:
  """An ONNX model (opset 21, input 'lr' of `in_shape`, names symbolic: B, H, W) of `fn`
  via jax2onnx."""
  jax2onnx = _need("jax2onnx", "ONNX export")

  def unpatched(lr):
    # jax2onnx replaces jnp.shape by a primitive while tracing; flax's scan needs the
    # static shape it normally returns.
    patched = jnp.shape
    jnp.shape = _JNP_SHAPE
    try:
      out = fn(lr)
    finally:
      jnp.shape = patched
    return tuple(out[k] for k in names)

  proto = jax2onnx.to_onnx(
    unpatched,
    [_input_spec(in_shape, input_dtype, upper=True)],
    model_name="dan",
    opset=21,
    input_names=["lr"],
    output_names=list(names),
  )
  return proto.SerializeToString()


# What each format's writer gets: `fn` traced at `in_shape` (names symbolic), the input
# dtype, the lowering platforms (--platforms) and the output names in order.
Writer = Callable[[epath.Path, Callable, Sequence, str, Sequence[str], Sequence[str]], None]
# An artifact loaded back with its own runtime: lr -> {output name: np.ndarray}.
Runner = Callable[[np.ndarray], dict]


def _write_stablehlo(path, fn, in_shape, input_dtype, platforms, names) -> None:
  del names  # a dict of outputs
  path.write_bytes(stablehlo_bytes(fn, in_shape, input_dtype, platforms))


def _load_stablehlo(path: epath.Path) -> Runner:
  call = jax.jit(jax.export.deserialize(bytearray(path.read_bytes())).call)
  return lambda x: {k: np.asarray(v) for k, v in call(x).items()}


def _write_savedmodel(path, fn, in_shape, input_dtype, platforms, names) -> None:
  del names  # a dict of outputs
  write_savedmodel(fn, str(path), in_shape, input_dtype, platforms)


def _load_savedmodel(path: epath.Path) -> Runner:
  import tensorflow as tf  # checked by _check_request (Format.needs)

  serve = tf.saved_model.load(str(path)).signatures["serving_default"]
  return lambda x: {k: v.numpy() for k, v in serve(lr=tf.constant(x)).items()}


def _write_tflite(path, fn, in_shape, input_dtype, platforms, names) -> None:
  del platforms, names  # the CPU; a dict of outputs
  path.write_bytes(tflite_bytes(fn, in_shape, input_dtype))


def _load_tflite(path: epath.Path) -> Runner:
  litert = _need("ai_edge_litert.interpreter", "Running TFLite (the LiteRT runtime)")
  interpreter = litert.Interpreter(model_content=path.read_bytes(), num_threads=os.cpu_count())
  run = interpreter.get_signature_runner("serving_default")
  return lambda x: {k: np.asarray(v) for k, v in run(lr=x).items()}


def _write_onnx(path, fn, in_shape, input_dtype, platforms, names) -> None:
  del platforms  # the CPU
  path.write_bytes(onnx_bytes(fn, in_shape, input_dtype, names))


def _load_onnx(path: epath.Path) -> Runner:
  ort = _need("onnxruntime", "Running ONNX")
  options = ort.SessionOptions()
  options.log_severity_level = 3  # no notes about unused constants
  session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  return lambda x: dict(zip(names, session.run(None, {"lr": x})))


@dataclasses.dataclass(frozen=True)
class Format:
  """One artifact format: its file, shapes, writer, runtime and what it needs installed."""

  file: str  # the file (or folder) in --out
  symbolic: bool  # batch, height and width symbolic; else one 1 x H x W shape (--size)
  write: Writer
  load: Callable[[epath.Path], Runner]
  # (module, what needs it, install hint), checked before anything is loaded or written.
  needs: tuple[tuple[str, str, str], ...] = ()
  packages: tuple[str, ...] = ()  # distributions whose versions the manifest records
  honours_platforms: bool = False  # lowered for --platforms; else for the CPU alone


_TF = ("tensorflow", "SavedModel and TFLite export (jax2tf)", TENSORFLOW_HINT)

# The formats `--format` offers, in the order --help lists them. TFLite takes one fixed
# shape: its converter cannot lower the dynamic slices that symbolic shapes produce.
FORMATS: dict[str, Format] = {
  "stablehlo": Format(
    "dan.stablehlo", True, _write_stablehlo, _load_stablehlo, honours_platforms=True
  ),
  "savedmodel": Format(
    "savedmodel",
    True,
    _write_savedmodel,
    _load_savedmodel,
    needs=(_TF,),
    packages=("tensorflow",),
    honours_platforms=True,
  ),
  "tflite": Format(
    "dan.tflite",
    False,
    _write_tflite,
    _load_tflite,
    needs=(_TF, ("ai_edge_litert.interpreter", "Running TFLite (the LiteRT runtime)", EXPORT_HINT)),
    packages=("tensorflow", "ai-edge-litert"),
  ),
  "onnx": Format(
    "dan.onnx",
    True,
    _write_onnx,
    _load_onnx,
    needs=(("jax2onnx", "ONNX export", EXPORT_HINT), ("onnxruntime", "Running ONNX", EXPORT_HINT)),
    packages=("jax2onnx", "onnx", "onnxruntime"),
  ),
}


def load_runner(fmt: str, path: epath.Path) -> Runner:
  """Loads an artifact back with its own runtime; returns lr -> {name: np.ndarray}."""
  if fmt not in FORMATS:
    raise ExportError(f"unknown format {fmt!r}")
  return FORMATS[fmt].load(path)


# ---------------------------------------------------------------------------------------
# Check images
# ---------------------------------------------------------------------------------------


def check_images(sizes: Sequence[tuple[int, int]], input_dtype: str) -> list[np.ndarray]:
  """Crops of two real photographs (skimage's astronaut, coffee), one per LR size.

  Returns uint8 [1, H, W, 3] arrays (input_dtype 'uint8') or float32 in [0, 1].
  """
  from skimage import data

  photos = [data.astronaut()[60:, 140:], data.coffee()[40:, 120:]]
  out = []
  for i, (h, w) in enumerate(sizes):
    photo = photos[i % 2]
    if h > photo.shape[0] or w > photo.shape[1]:
      photo = np.tile(photo, (-(-h // photo.shape[0]), -(-w // photo.shape[1]), 1))
    crop = np.ascontiguousarray(photo[:h, :w])[None]
    out.append(crop if input_dtype == "uint8" else (crop / 255.0).astype(np.float32))
  return out


# ---------------------------------------------------------------------------------------
# The export
# ---------------------------------------------------------------------------------------


def _versions(formats: Sequence[str]) -> dict:
  names = ["dan_jax", "jax", "jaxlib", "flax", "numpy"]
  for fmt in formats:
    for name in FORMATS[fmt].packages:
      if name == "tensorflow" and _installed("tensorflow-cpu"):
        name = "tensorflow-cpu"
      if name not in names:
        names.append(name)
  return {n: _installed(n) for n in names}


def _installed(name: str) -> Optional[str]:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def _size_bytes(path: epath.Path) -> int:
  if path.is_dir():
    return sum(_size_bytes(p) for p in path.iterdir())
  return path.stat().length


def _remove(path: epath.Path) -> None:
  if path.is_dir():
    path.rmtree()
  elif path.exists():
    path.unlink()


def parse_formats(text: str) -> list[str]:
  """'stablehlo,onnx' -> ['stablehlo', 'onnx'] (validated, order kept, no repeats)."""
  formats = [f.strip().lower() for f in text.split(",") if f.strip()]
  bad = [f for f in formats if f not in FORMATS]
  if bad or not formats:
    raise ExportError(
      f"unsupported format(s) {bad or [text]}; choose from {', '.join(FORMATS)} (comma separated)"
    )
  return list(dict.fromkeys(formats))


def parse_size(text: Optional[str]) -> Optional[tuple[int, int]]:
  """'180x320' -> (180, 320)."""
  if text is None:
    return None
  try:
    h, w = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ExportError(f"--size must be HxW (e.g. 180x320), got {text!r}") from None
  if h < 1 or w < 1:
    raise ExportError(f"--size must be positive, got {text!r}")
  return h, w


def _check_request(
  formats: Sequence[str], out_dir: epath.Path, size, input_dtype: str, overwrite: bool
) -> None:
  """Refuses bad arguments and missing packages before anything is loaded or written."""
  if input_dtype not in ("float32", "uint8"):
    raise ExportError(f"--input_dtype must be float32 or uint8, got {input_dtype!r}")
  fixed = [f for f in formats if not FORMATS[f].symbolic]
  if fixed and size is None:
    raise ExportError(
      f"{', '.join(fixed)} needs a fixed LR size: pass --size HxW (e.g. --size 180x320)"
    )
  for fmt in formats:
    for module, what, hint in FORMATS[fmt].needs:
      _need(module, what, hint)
  if out_dir.exists() and not out_dir.is_dir():
    raise ExportError(f"--out {out_dir} exists and is not a directory")
  existing = [FORMATS[f].file for f in formats if (out_dir / FORMATS[f].file).exists()]
  if existing and not overwrite:
    raise ExportError(
      f"{out_dir} already holds {', '.join(existing)} (pass --overwrite to "
      "replace them; nothing was changed)"
    )


def fixed_image_size(spec: Any) -> bool:
  """Whether the model's artifacts take one LR size only (symbolic batch at most; DCLS)."""
  from dan_jax import models

  return models.family(spec).fixed_image_size(spec)


def _conventions(spec: Any, names: Sequence[str], input_dtype: str, size) -> dict:
  """The manifest's input/output conventions (names, layouts, shapes, dtypes, ranges)."""
  s = spec.scale
  h, w = size if fixed_image_size(spec) else ("h", "w")
  sr_hw = [s * h, s * w] if fixed_image_size(spec) else [f"{s}*h", f"{s}*w"]
  shapes = {
    "sr": ["b", *sr_hw, spec.in_nc],
    "code": ["b", spec.code_len],
    "kernel": ["b", spec.kernel_size, spec.kernel_size],
  }
  return {
    "input": {
      "name": "lr",
      "layout": "NHWC",
      "shape": ["b", h, w, spec.in_nc],
      "dtype": input_dtype,
      "range": [0, 255] if input_dtype == "uint8" else [0, 1],
      "color": "RGB",
    },
    "outputs": {
      k: {
        "layout": "NHWC" if k == "sr" else None,
        "shape": shapes[k],
        "dtype": "float32",
        "range": "[0, 1], unclipped" if k == "sr" else None,
      }
      for k in names
    },
  }


def _differences(
  fmt: str, run: Callable, reference: Callable, images: Sequence[np.ndarray], names: Sequence[str]
) -> tuple[dict, dict]:
  """(max |artifact - model.apply|, max(1, max |model.apply|)) per output over `images`."""
  diffs, scales = {k: 0.0 for k in names}, {k: 1.0 for k in names}
  for x in images:
    want = jax.device_get(reference(x))
    got = run(x)
    for k in names:
      if got[k].shape != want[k].shape:
        raise ExportError(
          f"{fmt}: output {k} has shape {got[k].shape}, expected "
          f"{want[k].shape} for input {x.shape}"
        )
      diffs[k] = max(diffs[k], float(np.max(np.abs(got[k] - want[k]))))
      scales[k] = max(scales[k], float(np.max(np.abs(want[k]))))
  return diffs, scales


def _export_one(
  fmt: str,
  out_dir: epath.Path,
  fn: Callable,
  reference: Callable,
  spec: Any,
  names: Sequence[str],
  *,
  size,
  input_dtype: str,
  platforms: Sequence[str],
  check_sizes: Sequence[tuple[int, int]],
  tol: float,
  log: Callable[[str], None],
) -> dict:
  """Writes and checks one artifact; returns its manifest entry (removed if it fails)."""
  form = FORMATS[fmt]
  path = out_dir / form.file
  # The image size is symbolic unless the format (tflite) or the model (DCLS) fixes it;
  # the batch is symbolic wherever the format allows, and then also checked at 2.
  fixed_size = not form.symbolic or fixed_image_size(spec)
  images = check_images([size, size] if fixed_size else check_sizes, input_dtype)
  if form.symbolic:
    images[-1] = np.concatenate([images[-1], images[-1][:, ::-1, ::-1]])  # batch 2
  in_shape = (
    ["b" if form.symbolic else 1] + (list(size) if fixed_size else ["h", "w"]) + [spec.in_nc]
  )
  log(f"{fmt}: writing {path}")
  start = time.perf_counter()
  _remove(path)
  try:
    form.write(path, fn, in_shape, input_dtype, platforms, names)
    seconds = time.perf_counter() - start
    diffs, scales = _differences(fmt, load_runner(fmt, path), reference, images, names)
  except ExportError:
    _remove(path)
    raise
  except Exception as e:  # converters and runtimes raise many types
    _remove(path)
    first = str(e).strip().splitlines()
    raise ArtifactCheckError(
      f"{fmt}: export or check failed ({type(e).__name__}: "
      f"{first[0][:300] if first else ''}); {path} was removed, "
      "earlier artifacts are kept"
    ) from e
  checked = [list(x.shape) for x in images]
  line = ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
  relative = {k: diffs[k] / scales[k] for k in names}
  worst = max(relative.values())
  log(
    f"{fmt}: max |difference| from model.apply on {len(images)} photographs "
    f"{checked}: {line}; relative to max(1, max |output|): {worst:.2e} (tolerance "
    f"{tol:g})"
  )
  if not np.isfinite(worst) or worst > tol:
    _remove(path)
    raise ArtifactCheckError(
      f"{fmt}: the artifact differs from model.apply by {worst:.3g} (relative to "
      f"max(1, max |output|)) > tolerance {tol:g} ({line}); {path} was removed, earlier "
      "artifacts are kept"
    )
  return {
    "file": form.file,
    "bytes": _size_bytes(path),
    "input_shape": in_shape,
    "symbolic": form.symbolic,
    "platforms": list(platforms) if form.honours_platforms else ["cpu"],
    "max_abs_diff": diffs,
    "max_rel_diff": relative,
    "tolerance": tol,
    "checked_input_shapes": checked,
    "export_seconds": round(seconds, 1),
  }


def export(
  checkpoint: str,
  out: str,
  formats: Sequence[str],
  *,
  size: Optional[tuple[int, int]] = None,
  input_dtype: str = "float32",
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
  check_sizes: Sequence[tuple[int, int]] = ((24, 40), (36, 28)),
  overwrite: bool = False,
  use_ema: bool = True,
  log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> dict:
  """Exports a checkpoint to `formats` under `out`, checking each; returns the manifest.

  Args:
    checkpoint: a workdir, checkpoints directory or step directory.
    out: output directory (local or gs://); created if missing.
    formats: a subset of FORMATS.
    size: LR (H, W) of the fixed-shape formats (tflite), and of every format for models
      with `fixed_image_size` (DCLS); required for them.
    input_dtype: 'float32' (in [0, 1]) or 'uint8' (in [0, 255]).
    platforms: lowering platforms of the StableHLO and SavedModel artifacts.
    check_sizes: two LR sizes the symbolic formats are checked at.
    overwrite: replace existing artifacts of the requested formats.
    use_ema: export the EMA weights when the checkpoint has them.
  Raises:
    ExportError: bad arguments, a missing package, or an artifact over the tolerance.
    errors.CheckpointError: the checkpoint cannot be loaded.
  """
  from dan_jax import checkpoint as checkpoint_lib
  from dan_jax import models

  formats = parse_formats(",".join(formats))
  out_dir = epath.Path(out)
  _check_request(formats, out_dir, size, input_dtype, overwrite)
  model_config, variables, step = checkpoint_lib.load_model(checkpoint, use_ema=use_ema)
  model = models.create_model(model_config)
  spec = model.spec
  if fixed_image_size(spec) and size is None:
    raise ExportError(
      f"{spec.version} artifacts take one LR size (its Fourier "
      "deconvolution is built for the image size): pass --size HxW, e.g. "
      "--size 180x320; the batch stays symbolic. Nothing was written"
    )
  fn = serving_fn(model, variables, input_dtype)
  reference = jax.jit(fn)
  tol = TOLERANCE[np.dtype(spec.dtype).name]
  out_dir.mkdir(parents=True, exist_ok=True)
  manifest_path = out_dir / MANIFEST
  manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
  names = sorted(reference(check_images([size or (8, 8)], input_dtype)[0]))
  manifest.update(
    {
      "checkpoint": str(checkpoint),
      "step": step,
      "model_config": checkpoint_lib.model_config_to_dict(model_config),
      **_conventions(spec, names, input_dtype, size),
      "tolerance": tol,
      "versions": _versions(formats),
    }
  )
  manifest.setdefault("artifacts", {})
  for fmt in formats:
    manifest["artifacts"][fmt] = _export_one(
      fmt,
      out_dir,
      fn,
      reference,
      spec,
      names,
      size=size,
      input_dtype=input_dtype,
      platforms=platforms,
      check_sizes=check_sizes,
      tol=tol,
      log=log,
    )
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
  return manifest


def _build_parser():
  import argparse

  p = argparse.ArgumentParser(
    prog="python -m dan_jax.export",
    description="Export a DAN checkpoint (StableHLO, SavedModel, TFLite, ONNX).",
    epilog=_MANUAL,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--checkpoint",
    required=True,
    help="training workdir (latest checkpoint), step directory or converted official checkpoint",
  )
  p.add_argument("--out", required=True, help="output directory (local or gs://)")
  p.add_argument(
    "--format",
    default="stablehlo",
    help=f"comma-separated subset of {','.join(FORMATS)} (default stablehlo)",
  )
  p.add_argument(
    "--size",
    default=None,
    help="LR HxW of the fixed-shape formats (tflite; every format for DCLS), e.g. 180x320",
  )
  p.add_argument(
    "--input_dtype",
    default="float32",
    choices=("float32", "uint8"),
    help="input: float32 in [0, 1] (default) or uint8 in [0, 255]",
  )
  p.add_argument(
    "--platforms",
    default=",".join(DEFAULT_PLATFORMS),
    help=f"lowering platforms of stablehlo and savedmodel (default {','.join(DEFAULT_PLATFORMS)})",
  )
  p.add_argument(
    "--use_ema",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="export the EMA weights when the checkpoint has them (default: yes)",
  )
  p.add_argument(
    "--overwrite", action="store_true", help="replace existing artifacts of the requested formats"
  )
  return p


def main(argv: Optional[list[str]] = None) -> int:
  """The command line; returns the exit status (0 ok, 1 a check failed, 2 fatal)."""
  args = _build_parser().parse_args(argv)
  try:
    formats = parse_formats(args.format)
    size = parse_size(args.size)
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    manifest = export(
      args.checkpoint,
      args.out,
      formats,
      size=size,
      input_dtype=args.input_dtype,
      platforms=platforms,
      overwrite=args.overwrite,
      use_ema=args.use_ema,
    )
  except ArtifactCheckError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (Error, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for fmt in formats:
    a = manifest["artifacts"][fmt]
    print(
      f"{fmt}: {args.out}/{a['file']} ({a['bytes'] / 1e6:.2f} MB, max diff "
      f"{max(a['max_abs_diff'].values()):.2e})"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
