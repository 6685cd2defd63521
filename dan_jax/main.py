"""Trains DAN: `python -m dan_jax.main --config=configs/x4.py:v2 --workdir=DIR`.

  python -m dan_jax.main --config=configs/demo.py --workdir=/tmp/demo   # minutes on a CPU
  python -m dan_jax.main --config=configs/x4.py:v1 --workdir=/runs/x4_v1 \
      --config.data.train_dir=/data/DIV2K_train_HR --config.batch_size=32

`--config.FIELD=VALUE` overrides any config field; without --config the demo config runs.
A run resumes from the latest checkpoint in its workdir. `--distributed` (or the
environment variable DAN_JAX_DISTRIBUTED=1) calls `jax.distributed.initialize()` first,
for one process per host on TPU pods and multi-node GPU clusters (it detects the cluster);
elsewhere give `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` to every
process. Only process 0 logs (the others print warnings and errors).
Reliability: a run killed at any moment resumes from its last complete checkpoint; SIGTERM
(preemption) saves a checkpoint of the current step and exits 0; bad input is one
`error: ...` line on stderr and exit status 1 (2 for bad flags).
All logic lives in `dan_jax.train.train_and_evaluate`.
"""

from __future__ import annotations

import logging as py_logging
import os
import re
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "configs", "demo.py")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and "
                    "validation images (local or gs://).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordinator, "
                    "for jax.distributed.initialize where it cannot detect the cluster "
                    "(implies --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with "
                     "--coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes) (with "
                     "--coordinator_address).")
config_flags.DEFINE_config_file(
    "config", None, "Training config file[:arg], e.g. configs/x4.py:v1 (default: the demo, "
    f"{_DEMO_CONFIG}).", lock_config=True)
flags.mark_flags_as_required(["workdir"])


def _fail(message: str, status: int = 1) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _config_argument(argv: Sequence[str]) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _flag_error(error: Exception, argv: Sequence[str]) -> str:
  """One line for config_flags' errors (which arrive as tracebacks in messages)."""
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)):
    names = re.findall(r"'(\w+)'", text.replace("\\'", "'"))
    guess = re.search(r'Did you mean \\?"(\w+)\\?"', text)
    bad = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.") and names and
                re.search(rf"\.{names[0]}(=|\.|$)", a.split("=", 1)[0])), None)
    where = bad or (f"config field {names[0]!r}" if names else "a --config. override")
    hint = f" (did you mean {guess.group(1)!r}?)" if guess else ""
    return f"{where}: no such config field{hint}"
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  # "Error whilst parsing config file" wraps the exception raised by get_config().
  last = lines[-1] if lines else type(error).__name__
  return last if len(lines) <= 1 else f"{lines[0]} {last}"


def _parse_flags(argv: list[str]) -> list[str]:
  if _config_argument(argv[1:]) is None:
    argv = [argv[0], f"--config={_DEMO_CONFIG}"] + argv[1:]
  path = _config_argument(argv[1:]).split(":", 1)[0]
  if not os.path.isfile(path):
    _fail(f"--config: no such config file: {path}", 2)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(_flag_error(e, argv), 2)
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    _fail(_flag_error(e, argv), 2)
  return []


class _QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of orbax (dozens of lines per checkpoint)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {list(argv[1:])} (fields are set with --config.FIELD=VALUE)",
          2)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Imported here so that --help and flag errors come back fast.
  from dan_jax import runtime  # pylint: disable=g-import-not-at-top
  # XLA:CPU flag (CPU-only hosts) and TensorFlow off the accelerators, before JAX starts.
  runtime.setup_entry_point()
  import jax  # pylint: disable=g-import-not-at-top
  explicit = {k: v for k, v in (("coordinator_address", FLAGS.coordinator_address),
                                 ("num_processes", FLAGS.num_processes),
                                 ("process_id", FLAGS.process_id)) if v is not None}
  if (explicit or FLAGS.distributed or
      os.environ.get("DAN_JAX_DISTRIBUTED", "") not in ("", "0")):
    try:
      jax.distributed.initialize(**explicit)
    except (ValueError, TypeError, RuntimeError) as e:  # missing or unreachable peers
      _fail(f"jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in explicit.items())}"
            f"): {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
    if jax.process_index() > 0:  # one log for the whole job
      logging.set_verbosity(logging.WARNING)
  from dan_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from dan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from dan_jax import train  # pylint: disable=g-import-not-at-top
  logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (train.TrainingError, train.NonFiniteLossError, input_pipeline.DataError,
          checkpoint.CheckpointError) as e:
    _fail(str(e))
  if jax.process_index() == 0:
    print(summary(result, FLAGS.workdir, FLAGS.config), flush=True)


def summary(result: dict, workdir: str, config) -> str:
  """The lines printed at the end of training."""
  if result.get("preempted"):
    return (f"preempted (SIGTERM) at step {result['step']}: checkpoint saved in "
            f"{os.path.join(workdir, 'checkpoints')}; run the same command to resume")
  lines = [f"trained to step {result['step']} in {result['wall_seconds']:.0f} s"
           + (f" ({result['steps_per_sec']:.2f} steps/s after compilation)"
              if "steps_per_sec" in result else "")
           + (f"; final train loss {result['train_loss']:.4f}" if "train_loss" in result
              else "")]
  if "val_psnr_y" in result:
    gain = result["val_psnr_y"] - result["bicubic_psnr_y"]
    lines.append(
        f"validation Y-PSNR {result['val_psnr_y']:.2f} dB (SSIM {result['val_ssim_y']:.4f})"
        f" vs bicubic {result['bicubic_psnr_y']:.2f} dB (SSIM "
        f"{result['bicubic_ssim_y']:.4f}): {gain:+.2f} dB, x{config.model.scale}, "
        f"sigma {config.data.val_sigma}")
    if config.write_sr_images:
      lines.append(f"SR images: {os.path.join(workdir, 'val')}")
  lines.append(f"checkpoints: {os.path.join(workdir, 'checkpoints')}; "
               f"TensorBoard: tensorboard --logdir {workdir}")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
