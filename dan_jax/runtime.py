"""Process set-up that every entry point runs before JAX or TensorFlow start a device.

`setup_entry_point()` applies the XLA:CPU flag where it belongs (`xla_cpu`) and keeps
TensorFlow, which only feeds the input pipeline, off the accelerators; `main`, `evaluate`,
`infer`, the launchers, the benchmarks and the notebooks call it first.
`require_tensorflow()` turns a missing TensorFlow into one error line.
`enable_compilation_cache(dir)` turns on JAX's persistent compilation cache (training,
evaluation and inference), so a run resumed after a preemption skips recompiling.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from dan_jax import platform
from dan_jax import xla_cpu
from dan_jax.errors import ConfigError
from dan_jax.errors import MissingPackageError

TENSORFLOW_HINT = (
  'pip install "dan_jax[tf]" (or use the TensorFlow your environment already has, e.g. Colab\'s)'
)


def require_tensorflow(what: str) -> Any:
  """The `tensorflow` module; MissingPackageError naming `what` needs it when it is absent."""
  try:
    import tensorflow as tf  # imported only by the features that need it
  except ImportError as e:
    raise MissingPackageError(
      f"{what} needs TensorFlow, which is not installed: {TENSORFLOW_HINT}"
    ) from e
  return tf


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
      import tensorflow  # noqa: F401  (TensorFlow's devices, below)
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
          "TensorFlow already started on %s devices; it may hold accelerator memory (%s)", kind, e
        )
        ok = False
  return ok


def setup_entry_point(tensorflow: bool = True) -> None:
  """What every command line and notebook runs first, before JAX starts a backend.

  Applies the XLA:CPU flag (dan_jax.xla_cpu) when the process is CPU-only, and hides
  accelerators from TensorFlow (importing it unless `tensorflow` is False, in which case
  only an already imported TensorFlow is touched).
  """
  if platform.cpu_only() and platform.idle_tpu_compiler() and not os.environ.get("JAX_PLATFORMS"):
    # libtpu on a host without TPUs (`dan_jax.aot`'s compiler) would only print its failed
    # start-up and take the TPU lock: a CPU run leaves it alone.
    os.environ["JAX_PLATFORMS"] = "cpu"
  xla_cpu.configure()
  hide_accelerators_from_tensorflow(import_tensorflow=tensorflow)


# config.compilation_cache_dir / --compilation_cache_dir: "auto" is DEFAULT_CACHE_SUBDIR
# under the user's cache directory ($XDG_CACHE_HOME, else ~/.cache); "" turns it off.
AUTO_CACHE = "auto"
DEFAULT_CACHE_SUBDIR = "dan_jax/jax_compilation_cache"


def compilation_cache_dir(setting: Any) -> str:
  """The folder a compilation_cache_dir setting names ("" when off). Raises ConfigError."""
  if setting is None or not isinstance(setting, str):
    raise ConfigError(
      f"compilation_cache_dir must be a folder, gs:// URL, 'auto' or '' (off), got {setting!r}"
    )
  if setting.strip() != AUTO_CACHE:
    return setting.strip()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, DEFAULT_CACHE_SUBDIR)


def enable_compilation_cache(setting: Any) -> str:
  """Turns on JAX's persistent compilation cache in the folder `setting` names (see
  `compilation_cache_dir`; local or gs://). Returns the folder, "" when off."""
  directory = compilation_cache_dir(setting)
  if directory:
    import jax  # only here: this module runs before JAX starts

    jax.config.update("jax_compilation_cache_dir", directory)
  return directory


def add_compilation_cache_flag(parser: Any) -> None:
  """`--compilation_cache_dir` of the inference command lines (evaluate, infer)."""
  parser.add_argument(
    "--compilation_cache_dir",
    default=AUTO_CACHE,
    help="JAX's persistent compilation cache: a folder or gs:// URL; 'auto' (default): "
    f"$XDG_CACHE_HOME or ~/.cache, /{DEFAULT_CACHE_SUBDIR}; '' turns it off",
  )
