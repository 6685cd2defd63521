"""A coming preemption (SIGTERM or JAX's preemption notice) becomes a clean stop."""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import numpy as np


class PreemptionWatch:
  """A coming preemption -> a clean stop: every process saves the same step and exits.

  Two sources, so that JAX's own handler is never replaced:
  * with `jax.distributed` initialised (TPU pods, SLURM or GPU clusters launched with
    --distributed), JAX's preemption service owns SIGTERM (and, on Cloud TPU, maintenance
    events) and agrees on a step for all processes: `should_stop` asks
    `multihost_utils.reached_preemption_sync_point` (what orbax's
    `CheckpointManager.reached_preemption` asks) with a counter of its own calls, which
    grows by one per loop iteration on every process even when rollbacks move the step
    back;
  * otherwise (one process, or the preemption service off) a Python SIGTERM handler sets
    a flag. One process looks at it every step; several processes all-gather their flags
    every `every` calls (all at the same calls), so that they all stop at the same step
    even when only some of them got the signal. The handler is installed only from the
    main thread (Python delivers signals there) and `close()` puts the previous one back.
  """

  def __init__(self, every: int = 10):
    self.requested = False
    self.every = max(int(every), 1)
    self.calls = 0
    self.source = "SIGTERM"
    self._previous = None
    self.jax_sync = bool(
      jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service
    )
    self._installed = not self.jax_sync and threading.current_thread() is threading.main_thread()
    if self._installed:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum: int, frame: Any) -> None:
    del signum, frame
    self.requested = True

  def should_stop(self, step: int) -> bool:
    """Whether every process stops after `step` (a collective call with several)."""
    del step  # the agreement is on calls, the same on every process
    self.calls += 1
    if not self.jax_sync and jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils

    if self.jax_sync:
      if multihost_utils.reached_preemption_sync_point(self.calls):
        self.source = "JAX preemption notice"
        return True
      return False
    if self.calls % self.every:
      return False
    flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
    return bool(np.any(flags))

  def close(self) -> None:
    if self._installed:
      signal.signal(
        signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL
      )
      self._installed = False
