"""The training state: everything a training step reads and writes, and how to build it."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np
import optax

from dan_jax import models
from dan_jax.models.spec import ModelSpec

# Recovery counters of the state (checkpoints saved before they existed lack them).
COUNTERS = ("skipped", "nonfinite_run", "data_offset")


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes (all replicated over the mesh)."""

  step: jax.Array  # int32 scalar: number of completed updates
  params: Any
  pca: Any  # the model's `pca` collection: {'matrix': [k*k, code_len]}
  opt_state: Any
  ema_params: Any = None  # EMA of params, or None when config.ema_decay == 0
  # Recovery counters (int32 scalars), updated inside the jitted step, read by the host
  # only once per logging window.
  skipped: Any = 0  # steps whose loss/gradient was not finite (update not applied)
  nonfinite_run: Any = 0  # consecutive skipped steps ending at `step`
  # Batches passed over by rollbacks: step s trains on batch s - 1 + data_offset of the
  # (stateless) input pipeline, so a rollback moves the data stream past failed batches.
  data_offset: Any = 0

  def variables(self, use_ema: bool = True) -> dict:
    """Model variables for `model.apply` (the EMA weights when there are any)."""
    params = self.ema_params if use_ema and self.ema_params is not None else self.params
    return {"params": params, "pca": self.pca}

  def to_dict(self) -> dict:
    """The checkpoint's `state` item."""
    return {
      "step": self.step,
      "params": self.params,
      "pca": self.pca,
      "opt_state": self.opt_state,
      "ema_params": self.ema_params,
      "skipped": self.skipped,
      "nonfinite_run": self.nonfinite_run,
      "data_offset": self.data_offset,
    }


def create_train_state(
  variables: dict, tx: optax.GradientTransformation, ema: bool = False
) -> TrainState:
  """A fresh state at step 0 from model variables {'params', 'pca'} (host arrays)."""
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  return TrainState(
    step=np.zeros((), np.int32),
    params=params,
    pca=jax.tree_util.tree_map(np.asarray, variables["pca"]),
    opt_state=jax.tree_util.tree_map(np.asarray, tx.init(params)),
    ema_params=jax.tree_util.tree_map(np.copy, params) if ema else None,
    skipped=np.zeros((), np.int32),
    nonfinite_run=np.zeros((), np.int32),
    data_offset=np.zeros((), np.int32),
  )


def state_template(
  spec: ModelSpec, model: nn.Module, tx: optax.GradientTransformation, use_ema: bool
) -> TrainState:
  """A state of the right shapes for restoring (values come from the checkpoint)."""
  pca_shape = np.zeros((spec.kernel_size**2, spec.code_len), np.float32)
  return create_train_state(models.init_variables(model, 0, pca_shape), tx, use_ema)


def abstract_state(
  spec: ModelSpec, model: nn.Module, tx: optax.GradientTransformation, use_ema: bool
) -> TrainState:
  """The state's shapes and dtypes (jax.ShapeDtypeStruct leaves), no array made: what
  `create_train_state` gives, for compiling the train step without weights."""
  lr = jax.ShapeDtypeStruct((1, 8, 8, spec.in_nc), np.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, iterations=1), lr)["params"]
  params = flax.core.unfreeze(params)
  scalar = jax.ShapeDtypeStruct((), np.int32)
  return TrainState(
    step=scalar,
    params=params,
    pca={"matrix": jax.ShapeDtypeStruct((spec.kernel_size**2, spec.code_len), np.float32)},
    opt_state=jax.eval_shape(tx.init, params),
    ema_params=params if use_ema else None,
    skipped=scalar,
    nonfinite_run=scalar,
    data_offset=scalar,
  )
