"""Process set-up that every entry point shares: TensorFlow kept off the accelerators, the
XLA:CPU flag only where it belongs, and the numerical precision of matmuls/convolutions.

A leaf module (imports only the standard library at import time), so that `main`,
`evaluate`, `infer`, `launch/sweep.py`, the benchmarks and the notebooks can call
`setup_entry_point()` before JAX or TensorFlow start a device:

  from dan_jax import runtime
  runtime.setup_entry_point()   # XLA:CPU flag (CPU-only processes) + TF off accelerators

Precision: `precision_scope(name)` is the context every jitted function of dan_jax is
traced in; `PRECISIONS` documents the choices.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import re
import sys
from typing import Any, Iterator

# name -> (jax default_matmul_precision, compute dtype or None for the model's own).
# 'highest': float32 matmuls and convolutions on every platform (TPUs run 6 bf16 passes,
#   GPUs plain FP32 instead of TF32): the paper protocol's numbers; the CPU computes
#   this anyway.
# 'default': the platform's fastest float32 (one bf16 pass on TPU, TF32 on Ampere+ GPUs).
# 'bfloat16': activations in bfloat16 (params and the loss stay float32), default passes.
PRECISIONS = {"highest": ("highest", None), "default": (None, None),
              "bfloat16": (None, "bfloat16")}

# Distributions that register a JAX accelerator backend (PJRT plugins, libtpu).
_PLUGIN_RE = re.compile(r"^(jax[-_.]?cuda\d*[-_.]plugin|jax[-_.]?cuda\d*[-_.]pjrt|"
                        r"jax[-_.]?rocm\d*[-_.]plugin|jax[-_.]?rocm\d*[-_.]pjrt|libtpu.*|"
                        r"jax[-_.]?tpu.*)$", re.IGNORECASE)


def accelerator_plugins() -> list[str]:
  """Installed JAX accelerator plugins (by distribution name), without starting JAX."""
  found = set()
  for dist in importlib.metadata.distributions():
    name = (dist.metadata.get("Name") or "")
    if _PLUGIN_RE.match(name):
      found.add(name)
  try:
    found.update(ep.name for ep in importlib.metadata.entry_points(group="jax_plugins"))
  except Exception:  # pylint: disable=broad-except  (odd metadata must not stop a run)
    pass
  return sorted(found)


def cpu_only() -> bool:
  """Whether JAX will run on the CPU alone, decided without starting a backend.

  True when JAX_PLATFORMS names only 'cpu', or when it is unset and no accelerator
  plugin is installed.
  """
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if "jax" in sys.modules and not platforms:  # jax.config.update('jax_platforms', ...)
    try:
      platforms = sys.modules["jax"].config.jax_platforms or ""
    except Exception:  # pylint: disable=broad-except
      platforms = ""
  if platforms:
    return {p.strip().lower() for p in platforms.split(",") if p.strip()} == {"cpu"}
  return not accelerator_plugins()


def hide_accelerators_from_tensorflow(import_tensorflow: bool = True) -> bool:
  """Makes GPUs and TPUs invisible to TensorFlow (it only feeds the input pipeline).

  Call it before TensorFlow's first op; with full `tensorflow` installed, TF otherwise
  takes accelerator memory that JAX needs. Without TensorFlow installed (or with
  import_tensorflow=False and TF not yet imported) nothing happens. Returns whether TF
  sees no accelerator afterwards; when TF had already started on an accelerator it
  logs a warning and returns False.
  """
  if "tensorflow" not in sys.modules:
    if not import_tensorflow:
      return True
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      return True
  tf = sys.modules["tensorflow"]
  ok = True
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError) as e:  # TF already initialised its devices
      if tf.config.get_visible_devices(kind):
        logging.getLogger(__name__).warning(
            "TensorFlow already started on %s devices; it may hold accelerator memory "
            "(%s)", kind, e)
        ok = False
  return ok


def setup_entry_point(tensorflow: bool = True) -> None:
  """What every command line and notebook runs first, before JAX starts a backend.

  Applies the XLA:CPU flag (dan_jax.xla_cpu) when the process is CPU-only, and hides
  accelerators from TensorFlow (importing it unless `tensorflow` is False, in which case
  only an already imported TensorFlow is touched).
  """
  from dan_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.configure()
  hide_accelerators_from_tensorflow(import_tensorflow=tensorflow)


def add_precision_flag(parser: Any) -> None:
  """`--precision` of the inference command lines (evaluate, infer): one of PRECISIONS."""
  parser.add_argument(
      "--precision", default="highest", choices=tuple(PRECISIONS),
      help="matmul/convolution precision: highest (default) = float32 on every platform, "
           "the paper protocol's numbers; default = the platform's fast float32 (one bf16 "
           "pass on TPU, TF32 on GPU); bfloat16 = bfloat16 activations")


def check_precision(name: str) -> str:
  """`name` if it is one of PRECISIONS, else ValueError with the choices."""
  if name not in PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
  return name


def compute_dtype(name: str, model_dtype: str = "float32") -> str:
  """The model compute dtype a precision asks for (bfloat16 overrides the model's)."""
  return PRECISIONS[check_precision(name)][1] or model_dtype


@contextlib.contextmanager
def precision_scope(name: str) -> Iterator[None]:
  """Traces (and so compiles) JAX code inside it at the matmul/conv precision `name`.

  jax.default_matmul_precision is read when an op is traced, and is part of jit's cache
  key: a function jitted once and called inside different scopes compiles once per
  precision.
  """
  matmul = PRECISIONS[check_precision(name)][0]
  if matmul is None:
    yield
    return
  import jax  # pylint: disable=g-import-not-at-top
  with jax.default_matmul_precision(matmul):
    yield
