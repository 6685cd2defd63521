"""Checks of a training config's values: one clear TrainingError per bad field.

Imports neither TensorFlow nor the training loop, so `aot` and other tools that only build
programs from a config can check it on hosts without the input pipeline's packages.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import ml_collections
import numpy as np

from dan_jax import models
from dan_jax import steps
from dan_jax.errors import TrainingError

# Fields every training config has (configs/default.py states them all).
_REQUIRED = (
  "model",
  "degradation",
  "data",
  "seed",
  "batch_size",
  "num_train_steps",
  "learning_rate",
  "lr_milestones",
  "lr_gamma",
  "adam_b1",
  "adam_b2",
  "weight_decay",
  "kernel_loss_weight",
  "supervise_all_iterations",
  "ema_decay",
  "log_every_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "keep_best",
  "image_every_steps",
  "init_checkpoint",
  "write_sr_images",
)


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
  for name in _REQUIRED:
    if name not in config:
      raise TrainingError(f"the config has no field {name!r} (start from configs/default.py)")
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
  need(_is_int(config.batch_size) and config.batch_size > 0, "batch_size", "a positive integer")
  need(
    _is_int(config.num_train_steps) and config.num_train_steps >= 0,
    "num_train_steps",
    "a non-negative integer",
  )
  need(
    _finite(config.learning_rate) and config.learning_rate > 0, "learning_rate", "a positive number"
  )
  ms = tuple(config.lr_milestones or ())
  need(
    all(_is_int(m) and m > 0 for m in ms) and list(ms) == sorted(ms),
    "lr_milestones",
    "increasing positive step numbers",
  )
  need(_finite(config.lr_gamma) and config.lr_gamma > 0, "lr_gamma", "a positive number")
  for f in ("adam_b1", "adam_b2", "ema_decay"):
    need(_finite(config[f]) and 0 <= config[f] < 1, f, "in [0, 1)")
  for f in ("weight_decay", "kernel_loss_weight"):
    need(_finite(config[f]) and config[f] >= 0, f, "a non-negative number")


def _check_schedule(config: ml_collections.ConfigDict) -> None:
  need = functools.partial(_need, config)
  need(
    _is_int(config.log_every_steps) and config.log_every_steps > 0,
    "log_every_steps",
    "a positive integer",
  )
  for f in ("eval_every_steps", "checkpoint_every_steps", "image_every_steps"):
    need(_is_int(config[f]) and config[f] >= 0, f, "a non-negative integer (0: off)")
  need(
    _is_int(config.keep_checkpoints) and config.keep_checkpoints > 0,
    "keep_checkpoints",
    "a positive integer",
  )


def _check_recovery(config: ml_collections.ConfigDict) -> None:
  """Recovery fields (configs written before they existed get the defaults' behaviour)."""
  need = functools.partial(_need, config)
  fields = steps.recovery_fields(config)
  need(
    _finite(fields["clip_grad_norm"]) and fields["clip_grad_norm"] >= 0,
    "clip_grad_norm",
    "a non-negative number (0: off)",
  )
  need(
    _finite(fields["collapse_psnr_drop"]) and fields["collapse_psnr_drop"] >= 0,
    "collapse_psnr_drop",
    "a non-negative number of dB (0: off)",
  )
  for f in ("max_consecutive_nonfinite", "max_rollbacks"):
    need(_is_int(fields[f]) and fields[f] >= 0, f, "a non-negative integer")
  try:
    faults = steps.faults_from_config(config)
  except (TypeError, ValueError) as e:
    raise TrainingError(f"config.debug: {e}") from e
  need(all(s > 0 for s in faults.nan_at_steps), "debug.nan_at_steps", "positive step numbers")
  need(faults.collapse_at_step >= 0, "debug.collapse_at_step", "a step number (0: off)")


def _check_model_fit(config: ml_collections.ConfigDict, spec: Any) -> None:
  """The degradation, precision and backend fit the model `spec`."""
  need = functools.partial(_need, config)
  need(
    config.degradation.kernel_size == spec.kernel_size,
    "degradation.kernel_size",
    f"the model's kernel size {spec.kernel_size}",
  )
  need(
    _is_int(config.degradation.pca_samples) and config.degradation.pca_samples >= spec.code_len,
    "degradation.pca_samples",
    f"an integer >= model.code_len ({spec.code_len})",
  )
  need(
    spec.code_len <= spec.kernel_size**2,
    "model.code_len",
    f"at most kernel_size^2 = {spec.kernel_size**2}",
  )
  need(
    config.get("matmul_precision", "default") in ("default", "highest"),
    "matmul_precision",
    '"default" or "highest" (bfloat16 activations: model.dtype)',
  )
  if spec.conv_backward == "gemm" and jax.default_backend() != "cpu":
    raise TrainingError(
      f"config.model.conv_backward = 'gemm' is for the CPU only (this run is on "
      f"{jax.default_backend()}, where it becomes a convolution with a whole-image "
      "window): use 'auto' or 'xla'"
    )


def preemption_check_every(config: ml_collections.ConfigDict) -> int:
  """config.preemption_check_every_steps (default 10), checked. Raises TrainingError."""
  every = config.get("preemption_check_every_steps", 10)
  if not _is_int(every) or every <= 0:
    raise TrainingError(
      f"config.preemption_check_every_steps must be a positive integer, got {every!r}"
    )
  return int(every)
