"""Training configs: load a config file, apply dotted overrides, serialise.

The one place where a config spec (`configs/x4.py:v1`) becomes a ConfigDict and where a
`FIELD=VALUE` string becomes a field's value; `main`, `launch/sweep.py`, the notebooks and
the tests all go through it, so a value means the same everywhere:

  config = config_lib.load("configs/x4.py:v1")
  config_lib.apply_overrides(config, ["model.scale=2", "--config.batch_size=32"])

Configs ship with the package (`dan_jax/configs` in an installed wheel, the top-level
`configs/` of a checkout), so `configs/NAME.py` also resolves where no such file is beside
the working directory. `validate_config` checks a training config's values.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import json
import math
import os
import pathlib
from typing import Any, Iterable, Mapping, Union

import ml_collections
import numpy as np

from dan_jax.errors import TrainingError

# `configs/` of a source checkout (beside the package), else the copy a wheel installs.
_CHECKOUT_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
_PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
  """A config file or a config override is unusable; the message names which."""


def configs_dir() -> pathlib.Path:
  """The directory of the shipped configs (a checkout's `configs/` or the installed copy)."""
  if (_CHECKOUT_CONFIGS / "default.py").is_file():
    return _CHECKOUT_CONFIGS
  return _PACKAGED_CONFIGS


def default_spec() -> str:
  """The config `python -m dan_jax.main` runs without --config: the demo."""
  return str(configs_dir() / "demo.py")


def resolve_path(path: str) -> str:
  """A config file path; `configs/NAME.py` falls back to the shipped config of that name."""
  if os.path.isfile(path):
    return path
  parts = pathlib.PurePath(path).parts
  if len(parts) == 2 and parts[0] == "configs":
    shipped = configs_dir() / parts[1]
    if shipped.is_file():
      return str(shipped)
  raise ConfigError(f"no such config file: {path}")


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]`: the file's `get_config(arg)` (as absl config_flags).

  Raises:
    ConfigError: no such file, or `get_config` rejected its argument.
  """
  path, _, arg = spec.partition(":")
  path = resolve_path(path)
  module_spec = importlib.util.spec_from_file_location("_dan_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # a broken config file: one line naming it, not a traceback
    raise ConfigError(f"{path}: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path}: a config file must define get_config()")
  try:
    return module.get_config(arg) if arg else module.get_config()
  except (ValueError, TypeError, KeyError, AttributeError) as e:  # e.g. a bad `:arg`
    raise ConfigError(f"{spec}: {e}") from e


def parse_value(old: Any, text: str, key: str = "value") -> Any:
  """A command-line string as a value of the type of the field's current value `old`.

  The one conversion rule: bools take true/false/1/0 (any case); ints and floats their
  Python spelling; strings are taken as written; tuples, lists and fields that are None
  take a Python literal (a None field keeps the text as a string if it is not one).
  """
  try:
    if isinstance(old, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
      return text.lower() in ("true", "1")
    if isinstance(old, (tuple, list)):
      value = ast.literal_eval(text)
      return type(old)(value if isinstance(value, (tuple, list)) else (value,))
    if old is None:
      try:
        return ast.literal_eval(text)
      except (ValueError, SyntaxError):
        return text
    if isinstance(old, str):
      return text
    if isinstance(old, int):
      return int(text)
    if isinstance(old, float):
      return float(text)
    return type(old)(text)
  except (ValueError, SyntaxError, TypeError) as e:
    raise ConfigError(f"{key}={text}: not a valid {type(old).__name__}") from e


def _unknown(key: str, name: str, node: ml_collections.ConfigDict) -> ConfigError:
  guess = difflib.get_close_matches(name, list(node.keys()), n=1)
  hint = f" (did you mean {guess[0]!r}?)" if guess else ""
  return ConfigError(f"{key}: no such config field{hint}")


def set_field(config: ml_collections.ConfigDict, key: str, value: Any,
              parse: bool = False) -> None:
  """config.a.b = value for key "a.b", refusing fields the config does not have.

  Args:
    config: the config, changed in place.
    key: dotted field name (a leading `--config.` or `config.` is dropped).
    value: the new value, or its command-line text with `parse`.
    parse: convert `value` with `parse_value` to the type of the current value.
  """
  *parents, leaf = key.lstrip("-").removeprefix("config.").split(".")
  node = config
  for name in parents:
    child = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(child, ml_collections.ConfigDict):
      raise _unknown(key, name, node)
    node = child
  if leaf not in node:
    raise _unknown(key, leaf, node)
  node[leaf] = parse_value(node[leaf], value, key) if parse else value


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Union[Iterable[str], Mapping[str, Any]]
                    ) -> ml_collections.ConfigDict:
  """Applies `FIELD=VALUE` strings (`--config.` prefix optional) or a {field: value} dict.

  Strings are converted with `parse_value`; dict values are set as given. Returns `config`.
  """
  if isinstance(overrides, Mapping):
    for key, value in overrides.items():
      set_field(config, key, value)
    return config
  for item in overrides:
    key, eq, text = item.partition("=")
    if not eq:
      raise ConfigError(f"{item}: expected FIELD=VALUE")
    set_field(config, key, text, parse=True)
  return config


def load_with_overrides(spec: str, overrides: Union[Iterable[str], Mapping[str, Any]] = ()
                        ) -> ml_collections.ConfigDict:
  """`load(spec)` then `apply_overrides`."""
  return apply_overrides(load(spec), overrides)


def to_json(config: ml_collections.ConfigDict) -> str:
  """The config as JSON text (for the checkpoint's `meta` item and logs)."""
  return json.dumps(config.to_dict(), default=str, sort_keys=True)


def split_override_args(argv: Iterable[str], prefix: str = "--config."
                        ) -> tuple[list[str], list[str]]:
  """Splits command-line `--config.FIELD=VALUE` arguments off the others.

  Also accepts `--config.FIELD VALUE`, `--config.FIELD` (true) and `--noconfig.FIELD`
  (false), as absl's config_flags does. Returns (other args, ["--config.FIELD=VALUE", ...]).
  """
  argv = list(argv)
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    negated = arg.startswith("--no" + prefix[2:])
    if arg.startswith(prefix) or negated:
      body = prefix + arg[len(prefix) + (2 if negated else 0):]
      if "=" in body:
        overrides.append(body)
      elif negated:
        overrides.append(f"{body}=false")
      elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        overrides.append(f"{body}={argv[i + 1]}")
        i += 1
      else:
        overrides.append(f"{body}=true")
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


# ---------------------------------------------------------------------------------------
# Checking a training config's values
# ---------------------------------------------------------------------------------------

# Fields every training config has (configs/default.py states them all).
_REQUIRED = ("model", "degradation", "data", "seed", "batch_size", "num_train_steps",
             "learning_rate", "lr_milestones", "lr_gamma", "adam_b1", "adam_b2",
             "weight_decay", "kernel_loss_weight", "supervise_all_iterations",
             "ema_decay", "log_every_steps", "eval_every_steps",
             "checkpoint_every_steps", "keep_checkpoints", "keep_best",
             "image_every_steps", "init_checkpoint", "write_sr_images")


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _finite(x: Any) -> bool:
  return isinstance(x, (int, float, np.number)) and math.isfinite(x)


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
  for part in path.split("."):
    config = config[part]
  return config


def _need(config: ml_collections.ConfigDict, ok: bool, field: str, what: str) -> None:
  if not ok:
    raise TrainingError(f"config.{field} must be {what}, got {_get(config, field)!r}")


def validate_config(config: ml_collections.ConfigDict) -> Any:
  """Checks the training fields; returns the model spec. Raises errors.TrainingError."""
  from dan_jax import models  # pylint: disable=g-import-not-at-top  (keeps this jax-free)
  for name in _REQUIRED:
    if name not in config:
      raise TrainingError(f"the config has no field {name!r} (start from "
                          "configs/default.py)")
  try:
    spec = models.spec_from_config(config.model)
  except ValueError as e:
    raise TrainingError(f"config.{e}" if str(e).startswith("model.") else str(e)) from e
  _check_optimization(config)
  _check_schedule(config)
  _check_recovery(config)
  _check_model_fit(config, spec)
  return spec


def _check_optimization(config: ml_collections.ConfigDict) -> None:
  need = functools.partial(_need, config)
  need(_is_int(config.batch_size) and config.batch_size > 0, "batch_size",
       "a positive integer")
  need(_is_int(config.num_train_steps) and config.num_train_steps >= 0, "num_train_steps",
       "a non-negative integer")
  need(_finite(config.learning_rate) and config.learning_rate > 0, "learning_rate",
       "a positive number")
  ms = tuple(config.lr_milestones or ())
  need(all(_is_int(m) and m > 0 for m in ms) and list(ms) == sorted(ms), "lr_milestones",
       "increasing positive step numbers")
  need(_finite(config.lr_gamma) and config.lr_gamma > 0, "lr_gamma", "a positive number")
  for f in ("adam_b1", "adam_b2", "ema_decay"):
    need(_finite(config[f]) and 0 <= config[f] < 1, f, "in [0, 1)")
  for f in ("weight_decay", "kernel_loss_weight"):
    need(_finite(config[f]) and config[f] >= 0, f, "a non-negative number")


def _check_schedule(config: ml_collections.ConfigDict) -> None:
  need = functools.partial(_need, config)
  need(_is_int(config.log_every_steps) and config.log_every_steps > 0, "log_every_steps",
       "a positive integer")
  for f in ("eval_every_steps", "checkpoint_every_steps", "image_every_steps"):
    need(_is_int(config[f]) and config[f] >= 0, f, "a non-negative integer (0: off)")
  need(_is_int(config.keep_checkpoints) and config.keep_checkpoints > 0,
       "keep_checkpoints", "a positive integer")


def _check_recovery(config: ml_collections.ConfigDict) -> None:
  """Recovery fields (configs written before they existed get the defaults' behaviour)."""
  from dan_jax import recovery  # pylint: disable=g-import-not-at-top
  need = functools.partial(_need, config)
  fields = recovery.recovery_fields(config)
  need(_finite(fields["clip_grad_norm"]) and fields["clip_grad_norm"] >= 0,
       "clip_grad_norm", "a non-negative number (0: off)")
  need(_finite(fields["collapse_psnr_drop"]) and fields["collapse_psnr_drop"] >= 0,
       "collapse_psnr_drop", "a non-negative number of dB (0: off)")
  for f in ("max_consecutive_nonfinite", "max_rollbacks"):
    need(_is_int(fields[f]) and fields[f] >= 0, f, "a non-negative integer")
  try:
    faults = recovery.faults_from_config(config)
  except (TypeError, ValueError) as e:
    raise TrainingError(f"config.debug: {e}") from e
  need(all(s > 0 for s in faults.nan_at_steps), "debug.nan_at_steps",
       "positive step numbers")
  need(faults.collapse_at_step >= 0, "debug.collapse_at_step", "a step number (0: off)")


def _check_model_fit(config: ml_collections.ConfigDict, spec: Any) -> None:
  """The degradation, precision and backend fit the model `spec`."""
  import jax  # pylint: disable=g-import-not-at-top
  need = functools.partial(_need, config)
  need(config.degradation.kernel_size == spec.kernel_size, "degradation.kernel_size",
       f"the model's kernel size {spec.kernel_size}")
  need(_is_int(config.degradation.pca_samples) and
       config.degradation.pca_samples >= spec.code_len, "degradation.pca_samples",
       f"an integer >= model.code_len ({spec.code_len})")
  need(spec.code_len <= spec.kernel_size**2, "model.code_len",
       f"at most kernel_size^2 = {spec.kernel_size**2}")
  need(config.get("matmul_precision", "default") in ("default", "highest"),
       "matmul_precision", '"default" or "highest" (bfloat16 activations: model.dtype)')
  if spec.conv_backward == "gemm" and jax.default_backend() != "cpu":
    raise TrainingError(
        f"config.model.conv_backward = 'gemm' is for the CPU only (this run is on "
        f"{jax.default_backend()}, where it becomes a convolution with a whole-image "
        "window): use 'auto' or 'xla'")


def preemption_check_every(config: ml_collections.ConfigDict) -> int:
  """config.preemption_check_every_steps (default 10), checked. Raises TrainingError."""
  every = config.get("preemption_check_every_steps", 10)
  if not _is_int(every) or every <= 0:
    raise TrainingError("config.preemption_check_every_steps must be a positive integer, "
                        f"got {every!r}")
  return int(every)
