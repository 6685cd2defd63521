"""Self-recovery of a training run: the rollback record and rollbacks.

A step with a non-finite loss or gradient is skipped inside the jitted step
(`steps.train_step`). A stretch of config.max_consecutive_nonfinite skipped steps, or a
validation Y-PSNR config.collapse_psnr_drop dB below the best, rolls back to the last good
checkpoint and moves the data stream past the failed batches (`TrainState.data_offset`);
the `Recovery` record in each checkpoint's meta makes a resumed run repeat it. When
config.max_rollbacks rollbacks in a row do not help, a `DivergedError` says what to do.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from absl import logging
from jax.sharding import NamedSharding
import numpy as np
import orbax.checkpoint as ocp

from dan_jax import checkpoint
from dan_jax import parallel
from dan_jax.errors import CollapseError
from dan_jax.errors import DivergedError
from dan_jax.errors import NonFiniteLossError
from dan_jax.train_state import TrainState


@dataclasses.dataclass
class Recovery:
  """What the run has done to recover; every checkpoint's meta holds it ('recovery').

  A resumed run restores it with the state, so it repeats the same rollbacks bit for bit.
  """

  data_offset: int = 0  # = state.data_offset: batches passed over by rollbacks
  rollbacks: int = 0  # rollbacks in all
  streak: int = 0  # rollbacks since a checkpoint was saved past the last failure
  failed_at: int = 0  # the furthest step at which a failure caused a rollback
  best_psnr: Optional[float] = None  # best validation Y-PSNR so far (the collapse bar)
  best_step: int = 0  # its step
  good_step: int = 0  # the last step whose validation did not collapse

  @classmethod
  def from_meta(cls, meta: dict, step: int) -> "Recovery":
    d = meta.get("recovery") or {}
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**dict({"good_step": step}, **{k: v for k, v in d.items() if k in names}))

  def to_meta(self) -> dict:
    return dataclasses.asdict(self)


def rollback_target(managers: tuple, limit: int) -> Optional[tuple[ocp.CheckpointManager, int]]:
  """The newest checkpoint at or before `limit` in the managers (the first wins a tie)."""
  found = None
  for m in managers:
    steps = [s for s in (m.all_steps() if m is not None else ()) if s <= limit]
    if steps and (found is None or max(steps) > found[1]):
      found = (m, max(steps))
  return found


def diverged(
  kind: str,
  step: int,
  what: str,
  rec: Recovery,
  max_rollbacks: int,
  target: Optional[tuple],
  directory: str,
) -> DivergedError:
  """The error that ends a run whose rollbacks did not help: what happened, what to do."""
  kept = (
    f"the last good checkpoint is step {target[1]} in {target[0].directory} (not overwritten)"
    if target
    else f"no checkpoint to roll back to in {directory}"
  )
  tried = (
    f"after {rec.streak - 1} rollback(s) in a row (config.max_rollbacks = {max_rollbacks})"
    if target
    else "and there is nothing to roll back to"
  )
  if kind == "nonfinite":
    advice = "Lower config.learning_rate, set config.clip_grad_norm (e.g. 0.5) or check the data"
    cls = NonFiniteLossError
  else:
    advice = (
      "Lower config.learning_rate (or add config.lr_milestones earlier), set "
      "config.clip_grad_norm (e.g. 0.5), or raise config.collapse_psnr_drop if "
      "such drops are normal for this data"
    )
    cls = CollapseError
  return cls(
    f"training stopped at step {step}: {what}, {tried}; {kept}. {advice}, then "
    "run the same command (or raise config.max_rollbacks)."
  )


@dataclasses.dataclass(frozen=True)
class Rollbacks:
  """What a rollback needs: the checkpoints, the limit, where to restore and report."""

  manager: ocp.CheckpointManager  # the latest checkpoints
  best_manager: Optional[ocp.CheckpointManager]  # the best one (config.keep_best)
  max_rollbacks: int  # config.max_rollbacks: rollbacks in a row before giving up
  template: Callable[[], TrainState]  # a state of the right shapes for restoring
  sharding: NamedSharding  # replicated over the mesh
  directory: str  # WORKDIR/checkpoints, named in the error
  writer: Any  # clu metric writer
  log: bool  # process 0 logs


def rollback(
  rec: Recovery, state: TrainState, step: int, kind: str, what: str, limit: int, ctx: Rollbacks
) -> tuple[TrainState, int]:
  """Restores the newest checkpoint at or before `limit`; returns (state, its step).

  Updates `rec`; raises `diverged(...)` when there is nothing to roll back to or
  ctx.max_rollbacks rollbacks in a row did not help.
  """
  rec.streak += 1
  managers = (ctx.manager, ctx.best_manager)
  for m in managers:  # every save complete: all_steps() is the truth
    if m is not None:
      m.wait_until_finished()
  target = rollback_target(managers, limit)
  if target is None or rec.streak > ctx.max_rollbacks:
    raise diverged(kind, step, what, rec, ctx.max_rollbacks, target, ctx.directory)
  source, to_step = target
  skipped = parallel.to_host(state.skipped)  # kept across rollbacks: the run's total
  for s in ctx.manager.all_steps():  # newer ones hold the collapse: never resume them
    if s > to_step:
      ctx.manager.delete(s)
  restored = checkpoint.restore_state(source, to_step, ctx.template(), ctx.sharding)
  rec.rollbacks += 1
  rec.failed_at = max(rec.failed_at, step)
  rec.data_offset += step - to_step
  rec.good_step = to_step
  as_global = lambda x: parallel.to_global(np.asarray(x, np.int32), ctx.sharding)
  restored = restored.replace(
    data_offset=as_global(rec.data_offset), nonfinite_run=as_global(0), skipped=as_global(skipped)
  )
  if ctx.log:
    logging.warning(
      "step %d: %s; rollback %d (%d in a row, config.max_rollbacks = %d): restored "
      "%s/%d and moved the data stream past %d batches (data offset now %d)",
      step,
      what,
      rec.rollbacks,
      rec.streak,
      ctx.max_rollbacks,
      source.directory,
      to_step,
      step - to_step,
      rec.data_offset,
    )
  ctx.writer.write_scalars(
    step, {"recovery/rollbacks": rec.rollbacks, f"recovery/{kind}_rollback_to_step": to_step}
  )
  return restored, to_step
