"""Training and validation of DAN: `train_and_evaluate(config, workdir)`.

The entry point that `main`, notebooks and tests share (`train_config` checks the config's
values first). The loop only calls the parts: `steps` (the jitted update),
`checkpoint` (resume, latest and best saves), `recovery` (rollbacks), `validation`
(scores, images), `preemption` (save and stop on SIGTERM). Batch i of the input pipeline
is a pure function of (config, i), so a resumed run continues as the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax.linen as nn
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from dan_jax import checkpoint
from dan_jax import config as config_lib
from dan_jax import degradation
from dan_jax import input_pipeline
from dan_jax import models
from dan_jax import parallel
from dan_jax import recovery
from dan_jax import runtime
from dan_jax import steps
from dan_jax import storage
from dan_jax import train_config
from dan_jax import validation
from dan_jax.errors import ShardingError
from dan_jax.errors import TrainingError
from dan_jax.models.spec import ModelSpec
from dan_jax.preemption import PreemptionWatch
from dan_jax.recovery import Recovery
from dan_jax.train_state import create_train_state
from dan_jax.train_state import state_template
from dan_jax.train_state import TrainState
from dan_jax.validation import BEST_METRIC
from dan_jax.validation import bicubic_baseline
from dan_jax.validation import summary_images
from dan_jax.validation import VAL_SUBDIR
from dan_jax.validation import write_sr_images

BEST_SUBDIR = "checkpoints_best"


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Fails fast (TrainingError) when the global batch cannot be split over the mesh."""
  try:
    parallel.check_batch_size(batch_size, mesh)
  except ShardingError as e:
    raise TrainingError(str(e)) from e


def _every(step: int, n: int) -> bool:
  return n > 0 and step % n == 0


# ---------------------------------------------------------------------------------------
# Set-up: workdir, jitted steps, checkpoint managers, initial state, data, writer
# ---------------------------------------------------------------------------------------


def _prepare_workdir(workdir: str) -> str:
  if not workdir:
    raise TrainingError("no workdir given (--workdir)")
  if "://" in workdir:  # gs:// etc.: orbax and the writers create what they need
    return workdir
  path = storage.path(workdir)
  workdir = str(path)
  if path.exists() and not path.is_dir():
    raise TrainingError(f"workdir {workdir} exists and is not a folder")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise TrainingError(f"cannot create workdir {workdir}: {e.strerror or e}") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise TrainingError(f"workdir {workdir} is not writable")
  return workdir


def _initial_variables(
  config: ml_collections.ConfigDict, model: nn.Module, spec: ModelSpec
) -> dict:
  """Fresh variables (new PCA) or those of config.init_checkpoint."""
  if config.init_checkpoint:
    model_config, variables, step = checkpoint.load_model(config.init_checkpoint, use_ema=True)
    checkpoint.check_compatible(
      dict(model_config),
      spec,
      f"config.init_checkpoint {config.init_checkpoint}",
      "choose weights of the same model",
    )
    logging.info("initialised from %s (step %d)", config.init_checkpoint, step)
    return variables
  spec_k = input_pipeline.kernel_spec(config)
  t = time.perf_counter()
  pca = degradation.build_pca(
    degradation.make_kernel_sampler(spec_k),
    n=int(config.degradation.pca_samples),
    code_len=spec.code_len,
    seed=int(config.seed),
  )
  if jax.process_count() > 1:  # identical on every host, whatever its float rounding
    from jax.experimental import multihost_utils

    pca = np.asarray(multihost_utils.broadcast_one_to_all(pca))
  logging.info(
    "PCA of %d kernels in %.1f s", config.degradation.pca_samples, time.perf_counter() - t
  )
  return models.init_variables(model, int(config.seed), pca)


def _initial_state(
  config: ml_collections.ConfigDict,
  spec: ModelSpec,
  model: nn.Module,
  tx: optax.GradientTransformation,
  manager: ocp.CheckpointManager,
  sharding: NamedSharding,
) -> tuple[TrainState, dict]:
  """(state, meta) of the latest checkpoint, else a fresh state (new PCA or
  config.init_checkpoint) and {}."""
  latest = manager.latest_step()
  if latest is not None:
    meta = checkpoint.read_info(manager, latest, spec)
    logging.info("resuming from %s/%d", manager.directory, latest)
    template = state_template(spec, model, tx, config.ema_decay > 0)
    return checkpoint.restore_state(manager, latest, template, sharding), meta
  variables = _initial_variables(config, model, spec)
  return parallel.to_global(create_train_state(variables, tx, config.ema_decay > 0), sharding), {}


@dataclasses.dataclass
class _Run:
  """What the loop's helpers share: the config, the jitted steps, shardings, outputs."""

  config: ml_collections.ConfigDict
  spec: ModelSpec
  workdir: str
  mesh: Mesh
  model: nn.Module
  tx: optax.GradientTransformation
  learning_rate_fn: optax.Schedule
  p_train_step: Callable  # (state, batch) -> (state, device metrics)
  p_eval_step: Callable  # (variables, lr) -> (sr, code, kernel)
  manager: ocp.CheckpointManager  # WORKDIR/checkpoints: the latest checkpoints
  meta: dict  # every checkpoint's meta: the full config
  recovery: dict  # steps.recovery_fields(config)
  preemption_every: int  # config.preemption_check_every_steps
  best_manager: Optional[ocp.CheckpointManager] = None  # WORKDIR/checkpoints_best
  writer: Any = None  # clu metric writer
  val: Optional[dict] = None  # the validation set (None: no validation)
  pca: Optional[np.ndarray] = None  # [k*k, code_len], host copy

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def data(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data"))

  @property
  def total(self) -> int:
    return int(self.config.num_train_steps)

  @property
  def is_chief(self) -> bool:
    return jax.process_index() == 0

  @property
  def use_ema(self) -> bool:
    return self.config.ema_decay > 0

  def checkpoint_meta(self, rec: Recovery, step: int) -> dict:
    """The meta of the latest checkpoint of `step`."""
    return dict(self.meta, step=step, data_position=step + rec.data_offset, recovery=rec.to_meta())


def _setup(config: ml_collections.ConfigDict, workdir: str) -> _Run:
  """Checks the config and workdir, builds the mesh, jitted steps and checkpoint manager."""
  spec = train_config.validate_config(config)
  preemption_every = train_config.preemption_check_every(config)
  recovery_config = steps.recovery_fields(config)
  workdir = _prepare_workdir(workdir)
  cache = runtime.enable_compilation_cache(config.get("compilation_cache_dir", ""))
  if cache:
    logging.info("compilation cache: %s", cache)
  mesh = parallel.create_mesh()
  check_batch_size(config.batch_size, mesh)
  model, learning_rate_fn, tx, p_train_step, p_eval_step = steps.step_functions_from_config(
    config, spec, mesh
  )
  meta = {"config": config_lib.to_json(config)}
  manager = checkpoint.create_manager(
    storage.join(workdir, checkpoint.CHECKPOINTS_SUBDIR),
    max_to_keep=int(config.keep_checkpoints),
    async_save=True,
  )
  return _Run(
    config=config,
    spec=spec,
    workdir=workdir,
    mesh=mesh,
    model=model,
    tx=tx,
    learning_rate_fn=learning_rate_fn,
    p_train_step=p_train_step,
    p_eval_step=p_eval_step,
    manager=manager,
    meta=meta,
    recovery=recovery_config,
    preemption_every=preemption_every,
  )


def _train_batches(run: _Run, rec: Recovery, step: int) -> Iterator[dict]:
  """The batches of steps step + 1, ... (the data stream moved by rollbacks)."""
  return input_pipeline.create_train_iterator(
    run.config, run.pca, start_step=step + rec.data_offset
  )


def _start(run: _Run) -> tuple[TrainState, Recovery, Optional[Iterator[dict]]]:
  """(state, recovery record, train batches) of a resumed or fresh run.

  Also opens the best-checkpoint manager, the validation set and the metric writer (in
  that order: data problems surface before any log is written).
  """
  config, spec = run.config, run.spec
  state, resumed_meta = _initial_state(config, spec, run.model, run.tx, run.manager, run.replicated)
  start_step = int(parallel.to_host(state.step))
  rec = Recovery.from_meta(resumed_meta, start_step)
  rec.data_offset = int(parallel.to_host(state.data_offset))
  if config.keep_best:  # "last N plus best": the best lives in its own manager
    run.best_manager = best = checkpoint.create_manager(
      storage.join(run.workdir, BEST_SUBDIR), max_to_keep=1, async_save=True
    )
    if rec.best_psnr is None and best.latest_step() is not None:
      # A checkpoint from before the 'recovery' meta: the bar is the best checkpoint's.
      rec.best_psnr = checkpoint.read_info(best, best.latest_step(), spec).get(BEST_METRIC)
      rec.best_step = best.latest_step()
  run.pca = parallel.to_host(state.pca["matrix"])
  run.val = input_pipeline.create_validation_set(config, run.pca)
  train_iter = _train_batches(run, rec, start_step) if start_step < run.total else None
  # TensorBoard files are written by TensorFlow's own file system (see README).
  run.writer = metric_writers.create_default_writer(
    config.get("tensorboard_dir") or run.workdir, just_logging=not run.is_chief
  )
  if run.is_chief:
    logging.info(
      "%s x%d: %s parameters, %d device(s) on %d host(s), global batch %d, steps %d..%d%s",
      spec.version,
      spec.scale,
      f"{models.count_params(state.params):,}",
      run.mesh.devices.size,
      jax.process_count(),
      config.batch_size,
      start_step,
      run.total,
      f" (data offset {rec.data_offset}, {rec.rollbacks} rollback(s) so far)"
      if rec.rollbacks
      else "",
    )
  return state, rec, train_iter


def _rollbacks(run: _Run) -> recovery.Rollbacks:
  """What `recovery.rollback` needs of this run."""
  return recovery.Rollbacks(
    manager=run.manager,
    best_manager=run.best_manager,
    max_rollbacks=int(run.recovery["max_rollbacks"]),
    template=lambda: state_template(run.spec, run.model, run.tx, run.use_ema),
    sharding=run.replicated,
    directory=storage.join(run.workdir, checkpoint.CHECKPOINTS_SUBDIR),
    writer=run.writer,
    log=run.is_chief,
  )


def _new_report(run: _Run) -> periodic_actions.ReportProgress:
  return periodic_actions.ReportProgress(
    num_train_steps=run.total,
    writer=run.writer,
    every_steps=run.config.log_every_steps,
    every_secs=None,
  )


# ---------------------------------------------------------------------------------------
# The loop's parts: logging windows, validation, checkpoints, preemption
# ---------------------------------------------------------------------------------------


class _Progress:
  """A logging window's device metrics, the losses so far, and the training throughput.

  The throughput counts only training: not the first step (it compiles), and not the
  pauses (logging, validation, checkpointing, rollbacks).
  """

  def __init__(self, skipped_total: int):
    self.window: list = []  # (step, device metrics) since the last log: one fetch each
    self.first_loss = self.last_loss = None
    self.skipped_total = skipped_total
    self.timed_steps, self.since, self.paused = 0, None, 0.0
    self.window_timed, self.window_start, self.window_paused = 0, time.perf_counter(), 0.0
    self.pause_start = 0.0

  def add(self, step: int, metrics: dict) -> None:
    """Records a step's metrics (left on the device until the window is logged)."""
    self.window.append((step, metrics))
    if self.since is None:  # the first step compiles: time from its end
      jax.block_until_ready(metrics)
      self.since = self.window_start = time.perf_counter()
    else:
      self.timed_steps += 1
      self.window_timed += 1

  def begin_pause(self) -> None:
    self.pause_start = time.perf_counter()

  def end_pause(self) -> None:
    pause = time.perf_counter() - self.pause_start
    self.paused += pause
    self.window_paused += pause

  def fetch(self) -> list:
    """The window's metrics on the host: the one device-to-host transfer per window."""
    return [(s, {k: float(parallel.to_host(v)) for k, v in m.items()}) for s, m in self.window]

  def window_rates(self, batch_size: int) -> dict:
    elapsed = time.perf_counter() - self.window_start - self.window_paused
    if not self.window_timed or elapsed <= 0:
      return {}
    return {
      "train/steps_per_sec": self.window_timed / elapsed,
      "train/samples_per_sec": self.window_timed * batch_size / elapsed,
    }

  def new_window(self) -> None:
    self.window, self.window_timed, self.window_paused = [], 0, 0.0
    self.window_start = self.pause_start = time.perf_counter()

  def restart(self) -> None:
    """After a rollback: the window is dropped, the time since the pause began is a pause."""
    self.window, self.window_timed = [], 0
    self.window_start = time.perf_counter()
    self.paused += self.window_start - self.pause_start
    self.window_paused = 0.0

  def train_seconds(self, loop_end: float) -> float:
    return loop_end - self.since - self.paused if self.since else 0.0


def _window_scalars(host: list) -> dict:
  """Means of a logging window's metrics over its finite steps, and the skip counters."""
  good = [h for _, h in host if h["finite"]]
  counters = ("finite", "skipped", "nonfinite_run")
  out = (
    {f"train/{k}": float(np.mean([h[k] for h in good])) for k in host[0][1] if k not in counters}
    if good
    else {}
  )
  out["train/skipped_steps"] = host[-1][1]["skipped"]
  out["train/skipped_in_window"] = float(sum(not h["finite"] for _, h in host))
  return out


def _log_window(run: _Run, progress: _Progress, step: int) -> Optional[tuple]:
  """Writes and logs the window ending at `step`; a failure when updates are stuck.

  Returns None, or ('nonfinite', what, newest step a rollback may go to) after
  config.max_consecutive_nonfinite skipped steps in a row (or a run ending in some).
  """
  host = progress.fetch()
  scalars = _window_scalars(host)
  scalars.update(progress.window_rates(run.config.batch_size))
  scalars["train/learning_rate"] = float(run.learning_rate_fn(step - 1))
  run.writer.write_scalars(step, scalars)
  progress.skipped_total = int(scalars["train/skipped_steps"])
  nonfinite_run = int(host[-1][1]["nonfinite_run"])
  if "train/loss" in scalars:
    progress.last_loss = scalars["train/loss"]
    if progress.first_loss is None:
      progress.first_loss = progress.last_loss
  if run.is_chief:
    _log_scalars(run, step, scalars, progress)
  progress.new_window()
  max_nonfinite = int(run.recovery["max_consecutive_nonfinite"])
  # Stuck: no update applies any more (or the run ends in a skipped stretch).
  if max_nonfinite and (
    nonfinite_run >= max_nonfinite or (step == run.total and nonfinite_run > 0)
  ):
    return (
      "nonfinite",
      f"the loss or gradient is not finite for {nonfinite_run} consecutive steps (skipped)",
      step,
    )
  return None


def _log_scalars(run: _Run, step: int, scalars: dict, progress: _Progress) -> None:
  skipped = int(scalars["train/skipped_in_window"])
  last = f"train/l_pix{run.spec.loops - 1}"
  logging.info(
    "step %d/%d: %s, lr %.2e%s%s",
    step,
    run.total,
    f"loss {progress.last_loss:.4f} (l_pix{run.spec.loops - 1} {scalars[last]:.4f})"
    if "train/loss" in scalars
    else "no finite loss",
    scalars["train/learning_rate"],
    f", {scalars['train/steps_per_sec']:.2f} steps/s" if "train/steps_per_sec" in scalars else "",
    f", {skipped} step(s) skipped (non-finite loss or gradient; {progress.skipped_total} in all)"
    if skipped
    else "",
  )


def _run_validation(run: _Run, state: TrainState, step: int, result: dict) -> tuple[dict, list]:
  return validation.run(
    run.p_eval_step,
    state.variables(run.use_ema),
    run.val,
    run.spec.scale,
    run.data,
    step,
    result,
    run.writer,
    run.is_chief,
  )


def _validate(
  run: _Run, rec: Recovery, state: TrainState, step: int, result: dict
) -> tuple[Optional[tuple], Optional[dict], list]:
  """Validates at `step`: (collapse failure or None, scores if a new best, outputs).

  A Y-PSNR config.collapse_psnr_drop dB below the best so far is a failure (a rollback
  to the last step that validated well); otherwise the best and the images are updated.
  """
  scores, outputs = _run_validation(run, state, step, result)
  value, drop = scores[BEST_METRIC], float(run.recovery["collapse_psnr_drop"])
  if drop and rec.best_psnr is not None and value < rec.best_psnr - drop:
    return (
      (
        "collapse",
        f"validation Y-PSNR collapsed to {value:.2f} dB, "
        f"{rec.best_psnr - value:.2f} dB below the best ({rec.best_psnr:.2f} dB "
        f"at step {rec.best_step}; config.collapse_psnr_drop = {drop})",
        rec.good_step,
      ),
      None,
      outputs,
    )
  rec.good_step = step
  new_best = None
  if rec.best_psnr is None or value > rec.best_psnr:
    rec.best_psnr, rec.best_step = value, step
    new_best = scores
  if _every(step, run.config.image_every_steps) or step == run.total:
    run.writer.write_images(step, summary_images(run.val, outputs, run.pca, run.spec.scale))
  return None, new_best, outputs


def _save_checkpoints(
  run: _Run, rec: Recovery, state: TrainState, step: int, new_best: Optional[dict]
) -> None:
  """The latest checkpoint (every config.checkpoint_every_steps), then the best one."""
  if _every(step, run.config.checkpoint_every_steps) or step == run.total:
    if step > rec.failed_at:  # a checkpoint past the last failure: progress
      rec.streak = 0
    checkpoint.save_state(run.manager, step, state, run.spec, run.checkpoint_meta(rec, step))
  if new_best is not None and run.best_manager is not None:
    checkpoint.save_best(
      run.best_manager,
      run.manager,
      step,
      state,
      run.spec,
      dict(run.meta, step=step, recovery=rec.to_meta(), **new_best),
    )


def _stop_for_preemption(
  run: _Run, rec: Recovery, state: TrainState, step: int, source: str
) -> None:
  """Saves `step` (unless just saved) and waits until it is complete on disk."""
  if not _every(step, run.config.checkpoint_every_steps):
    checkpoint.save_state(run.manager, step, state, run.spec, run.checkpoint_meta(rec, step))
  run.manager.wait_until_finished()  # complete on disk before the process may go
  if run.is_chief:
    logging.warning(
      "preempted at step %d; checkpoint saved (%s/%d): run the same "
      "command to resume (stopped by %s)",
      step,
      run.manager.directory,
      step,
      source,
    )


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from WORKDIR/checkpoints if there are any), validates, logs.

  Steps with a non-finite loss or gradient are skipped on the device. After
  config.max_consecutive_nonfinite of them in a row, or when validation Y-PSNR falls
  config.collapse_psnr_drop dB below the best so far, the run rolls back to the last good
  checkpoint and moves the data stream past the failed batches (at most
  config.max_rollbacks times in a row).

  Returns:
    Final figures: 'step', 'train_loss' (mean over the last logging window),
    'first_train_loss' (over the first window of this run), 'steps_per_sec' and
    'train_seconds' (this run's training steps, without the first step's compilation,
    validation and checkpointing), 'wall_seconds', 'skipped_steps' and 'rollbacks'
    (of the whole run, resumes included), and with validation 'val_psnr_y',
    'val_ssim_y', 'bicubic_psnr_y', 'bicubic_ssim_y' (Y channel, uint8, crop_border =
    scale, on the final weights: the EMA ones when config.ema_decay > 0), and
    'preempted': True when a preemption stopped the run before num_train_steps (a
    checkpoint of 'step' is then saved, and no final validation is run), with
    'preempted_by' ('SIGTERM' or 'JAX preemption notice').
  Raises:
    errors.Error (TrainingError, DataError, CheckpointError, ...): user errors.
    DivergedError (NonFiniteLossError, CollapseError): rollbacks did not help.
  """
  start_time = time.perf_counter()
  run = _setup(config, workdir)
  preemption, preempted, outputs = PreemptionWatch(run.preemption_every), False, None
  try:
    state, rec, train_iter = _start(run)
    result: dict = {} if run.val is None else bicubic_baseline(run.val, run.spec.scale)
    rollbacks, report = _rollbacks(run), _new_report(run)
    progress = _Progress(int(parallel.to_host(state.skipped)))
    step = int(parallel.to_host(state.step))
    while step < run.total:
      step += 1
      state, step_metrics = run.p_train_step(state, parallel.to_global(next(train_iter), run.data))
      report(step)
      progress.add(step, step_metrics)  # read once per logging window: no sync per step
      progress.begin_pause()
      failure, new_best = None, None  # failure: (kind, what, newest step to roll back to)
      if _every(step, config.log_every_steps) or step == run.total:
        failure = _log_window(run, progress, step)
      if (
        failure is None
        and run.val is not None
        and (_every(step, config.eval_every_steps) or step == run.total)
      ):
        with report.timed("validation", wait_jax_async_dispatch=False):
          failure, new_best, outputs = _validate(run, rec, state, step, result)
      if failure is not None:
        state, step = recovery.rollback(rec, state, step, *failure, rollbacks)
        train_iter, report = _train_batches(run, rec, step), _new_report(run)
        progress.restart()
        continue
      with report.timed("checkpoint", wait_jax_async_dispatch=False):
        _save_checkpoints(run, rec, state, step, new_best)
      progress.end_pause()
      if step < run.total and preemption.should_stop(step):
        _stop_for_preemption(run, rec, state, step, preemption.source)
        preempted = True
        break
    loop_end = time.perf_counter()
    if run.val is not None and outputs is None and not preempted:  # nothing to train
      _, outputs = _run_validation(run, state, int(parallel.to_host(state.step)), result)
  finally:
    preemption.close()
    checkpoint.close(run.manager)
    checkpoint.close(run.best_manager)
    if run.writer is not None:
      run.writer.flush()

  return _finish(
    run,
    result,
    state,
    rec,
    progress,
    outputs,
    loop_end,
    start_time,
    preemption.source if preempted else None,
  )


def _finish(
  run: _Run,
  result: dict,
  state: TrainState,
  rec: Recovery,
  progress: _Progress,
  outputs: Optional[list],
  loop_end: float,
  start_time: float,
  preempted_by: Optional[str],
) -> dict:
  """Writes the validation PNGs (config.write_sr_images), completes and returns `result`."""
  if run.val is not None and run.config.write_sr_images and run.is_chief and preempted_by is None:
    write_sr_images(storage.join(run.workdir, VAL_SUBDIR), run.val, outputs, run.spec.scale)
  train_seconds = progress.train_seconds(loop_end)
  result.update(
    step=int(parallel.to_host(state.step)),
    train_seconds=train_seconds,
    wall_seconds=time.perf_counter() - start_time,
    skipped_steps=progress.skipped_total,
    rollbacks=rec.rollbacks,
  )
  if progress.timed_steps and train_seconds > 0:
    result["steps_per_sec"] = progress.timed_steps / train_seconds
  if progress.last_loss is not None:
    result.update(train_loss=progress.last_loss, first_train_loss=progress.first_loss)
  if preempted_by is not None:
    result.update(preempted=True, preempted_by=preempted_by)
  run.writer.close()
  return result
