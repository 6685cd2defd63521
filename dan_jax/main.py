"""Trains DAN: `python -m dan_jax.main --config=configs/x4.py:v2 --workdir=DIR`.

  python -m dan_jax.main --config=configs/demo.py --workdir=/tmp/demo   # minutes on a CPU

`--config.FIELD=VALUE` overrides any config field; without --config the demo runs. A run
resumes from the latest checkpoint in its workdir; SIGTERM saves one and exits 0.
`--distributed` (or DAN_JAX_DISTRIBUTED=1) calls `jax.distributed.initialize()` first, one
process per host. Bad input is one `error:` line on stderr and exit status 1 (2: bad flags
or config, a missing package). All logic lives in `train.train_and_evaluate`.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from dan_jax import config as config_lib
from dan_jax.errors import ConfigError
from dan_jax.errors import Error
from dan_jax.errors import MissingPackageError

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "workdir",
  None,
  "Directory for checkpoints, TensorBoard logs and validation images (local or gs://).",
)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string(
  "coordinator_address",
  None,
  "HOST:PORT of process 0's coordinator, "
  "for jax.distributed.initialize where it cannot detect the cluster "
  "(implies --distributed).",
)
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer(
  "process_id", None, "This process's index in [0, num_processes) (with --coordinator_address)."
)
# `--config.FIELD=VALUE` arguments are not absl flags: `_parse_flags` takes them off the
# command line and applies them with dan_jax.config (the rule every entry point shares).
flags.DEFINE_string(
  "config",
  None,
  "Training config file[:arg], e.g. configs/x4.py:v1 (default: the demo, "
  "configs/demo.py); `--config.FIELD=VALUE` overrides any of its fields.",
)
flags.mark_flags_as_required(["workdir"])

# The config built from --config and its overrides (set by `_parse_flags`).
_CONFIG = None


def _fail(message: str, status: int = 1) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _parse_flags(argv: list[str]) -> list[str]:
  global _CONFIG
  rest, overrides = config_lib.split_override_args(argv[1:])
  try:
    remaining = FLAGS([argv[0]] + rest)
  except flags.Error as e:
    _fail(str(e), 2)
  try:
    config = config_lib.load(FLAGS.config or config_lib.default_spec())
    config_lib.apply_overrides(config, overrides)
  except ConfigError as e:
    _fail(str(e).removeprefix("error: "), 2)
  config.lock()  # no new fields (a typo would otherwise be a new, unused one)
  _CONFIG = config
  return remaining


class _QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of orbax (dozens of lines per checkpoint) and fsspec (gs://)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or not any(
      lib in record.pathname for lib in ("/orbax/", "/fsspec/")
    )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {list(argv[1:])} (fields are set with --config.FIELD=VALUE)", 2)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Imported here so that --help and flag errors come back fast.
  from dan_jax import runtime

  # XLA:CPU flag (CPU-only hosts) and TensorFlow off the accelerators, before JAX starts.
  runtime.setup_entry_point()
  try:
    runtime.require_tensorflow("Training (its input pipeline)")
  except MissingPackageError as e:
    _fail(str(e), 2)
  import jax

  explicit = {
    k: v
    for k, v in (
      ("coordinator_address", FLAGS.coordinator_address),
      ("num_processes", FLAGS.num_processes),
      ("process_id", FLAGS.process_id),
    )
    if v is not None
  }
  if explicit or FLAGS.distributed or os.environ.get("DAN_JAX_DISTRIBUTED", "") not in ("", "0"):
    try:
      jax.distributed.initialize(**explicit)
    except (ValueError, TypeError, RuntimeError) as e:  # missing or unreachable peers
      _fail(
        f"jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in explicit.items())}"
        f"): {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
      )
    if jax.process_index() > 0:  # one log for the whole job
      logging.set_verbosity(logging.WARNING)
  from dan_jax import train

  logging.info(
    "JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
  )
  try:
    result = train.train_and_evaluate(_CONFIG, FLAGS.workdir)
  except Error as e:  # TrainingError, DivergedError, DataError, CheckpointError, ...
    _fail(str(e))
  if jax.process_index() == 0:
    print(summary(result, FLAGS.workdir, _CONFIG), flush=True)


def summary(result: dict, workdir: str, config) -> str:
  """The lines printed at the end of training."""
  if result.get("preempted"):
    return (
      f"preempted ({result.get('preempted_by', 'SIGTERM')}) at step "
      f"{result['step']}: checkpoint saved in "
      f"{os.path.join(workdir, 'checkpoints')}; run the same command to resume"
    )
  lines = [
    f"trained to step {result['step']} in {result['wall_seconds']:.0f} s"
    + (
      f" ({result['steps_per_sec']:.2f} steps/s after compilation)"
      if "steps_per_sec" in result
      else ""
    )
    + (f"; final train loss {result['train_loss']:.4f}" if "train_loss" in result else "")
    + (
      f"; {result['skipped_steps']} non-finite step(s) skipped, {result['rollbacks']} rollback(s)"
      if result.get("skipped_steps") or result.get("rollbacks")
      else ""
    )
  ]
  if "val_psnr_y" in result:
    gain = result["val_psnr_y"] - result["bicubic_psnr_y"]
    lines.append(
      f"validation Y-PSNR {result['val_psnr_y']:.2f} dB (SSIM {result['val_ssim_y']:.4f})"
      f" vs bicubic {result['bicubic_psnr_y']:.2f} dB (SSIM "
      f"{result['bicubic_ssim_y']:.4f}): {gain:+.2f} dB, x{config.model.scale}, "
      f"sigma {config.data.val_sigma}"
    )
    if config.write_sr_images:
      lines.append(f"SR images: {os.path.join(workdir, 'val')}")
  lines.append(
    f"checkpoints: {os.path.join(workdir, 'checkpoints')}; "
    f"TensorBoard: tensorboard --logdir "
    f"{config.get('tensorboard_dir') or workdir}"
  )
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
