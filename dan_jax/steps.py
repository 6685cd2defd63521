"""The update step of DAN/DCLS training: optimizer, losses, train and eval steps, jitted.

The official loss supervises only the last alternating iteration and the model stops
gradients between iterations, so iterations 1..N-1 run forward only (`compute_losses`).
Adam as PyTorch's (L2 weight decay in the gradient), MultiStep halving, optional EMA. A
step with a non-finite loss or gradient is skipped inside the jitted step; `Faults`
injects such steps for the recovery tests, and `recovery_fields` gives the recovery
fields' defaults. Jitted over a `Mesh` with axis 'data': state replicated (and donated),
batches sharded.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax

from dan_jax import models
from dan_jax import parallel
from dan_jax import precision as precision_lib
from dan_jax.models import spec as spec_lib
from dan_jax.models.spec import ModelOutput
from dan_jax.models.spec import ModelSpec
from dan_jax.train_state import create_train_state
from dan_jax.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class Faults:
  """Faults injected inside the jitted step (config.debug; tests of the recovery only).

  Steps are numbered as in an uninterrupted run: the fault hits the batch step s trains
  on when data_offset is 0 (batch s - 1), so once a rollback has moved the data stream
  past it, it does not come back, as a bad batch or an unlucky stretch would not.
  """

  nan_at_steps: tuple = ()  # the loss and gradient of these steps become NaN
  collapse_at_step: int = 0  # this step's update is multiplied by COLLAPSE_SCALE (0: off)


# A finite but destructive update (what an exploding, not yet NaN, step looks like).
COLLAPSE_SCALE = 1000.0


def faults_from_config(config: ml_collections.ConfigDict) -> Faults:
  """config.debug's injected faults (none when the config has no `debug` block)."""
  debug = config.get("debug") or {}
  return Faults(
    nan_at_steps=tuple(int(s) for s in (debug.get("nan_at_steps") or ())),
    collapse_at_step=int(debug.get("collapse_at_step") or 0),
  )


# Defaults of the recovery fields for configs that predate them (configs/default.py
# states the same values).
RECOVERY_DEFAULTS = {
  "clip_grad_norm": 0.0,
  "max_consecutive_nonfinite": 20,
  "collapse_psnr_drop": 3.0,
  "max_rollbacks": 3,
}


def recovery_fields(config: ml_collections.ConfigDict) -> dict:
  """The recovery fields of `config`, with RECOVERY_DEFAULTS for the missing ones."""
  return {k: config.get(k, v) for k, v in RECOVERY_DEFAULTS.items()}


def create_learning_rate_fn(config: ml_collections.ConfigDict) -> optax.Schedule:
  """MultiStep schedule: lr * gamma^(number of milestones <= step), as torch MultiStepLR."""
  scales = collections.Counter(int(m) for m in config.lr_milestones)
  return optax.piecewise_constant_schedule(
    float(config.learning_rate), {m: float(config.lr_gamma) ** n for m, n in sorted(scales.items())}
  )


def create_optimizer(
  config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """Adam(b1, b2, eps=1e-8) with torch-style L2 weight decay and the given schedule.

  config.clip_grad_norm > 0 first clips the gradient to that global norm (off by default,
  as the official recipe).
  """
  parts = []
  clip = recovery_fields(config)["clip_grad_norm"]
  if clip:
    parts.append(optax.clip_by_global_norm(float(clip)))
  if config.weight_decay:
    # torch.optim.Adam adds weight_decay * param to the gradient before the moments
    # (not decoupled AdamW); the official weight_decay_G means this.
    parts.append(optax.add_decayed_weights(float(config.weight_decay)))
  parts += [
    optax.scale_by_adam(b1=float(config.adam_b1), b2=float(config.adam_b2), eps=1e-8),
    optax.scale_by_learning_rate(learning_rate_fn),
  ]
  return optax.chain(*parts)


def _iteration_losses(model: nn.Module, out: ModelOutput, batch: dict) -> tuple:
  """Per-iteration ([n],[n]) L1 of SR vs HR (official nn.L1Loss) and the family's kernel
  term (`kernel_loss` of the model's family)."""
  pix = jax.vmap(lambda sr: spec_lib.l1(sr, batch["hr"]))(out.sr)
  return pix, models.family(model.spec).kernel_loss(out, batch)


def compute_losses(
  model: nn.Module,
  params: Any,
  pca: Any,
  batch: dict,
  *,
  kernel_loss_weight: float = 1.0,
  supervise_all: bool = False,
  cheap_gradient: bool = True,
) -> tuple[jax.Array, dict]:
  """Training loss and per-iteration metrics for one batch.

  Args:
    batch: 'lr' [B,h,w,3], 'hr' [B,sh,sw,3], 'kernel' [B,k,k], 'code' [B,code_len].
    supervise_all: sum every iteration's loss (else only the last, as official).
    cheap_gradient: with only the last iteration supervised, run iterations 1..N-1 with
      stop-gradient parameters and differentiate only the last one, resumed from the
      previous code. The model stops gradients between iterations, so this is exactly
      the gradient of the full loop (False differentiates the full loop, for checks).
  Returns:
    (loss, {'l_pix': [N], 'l_ker': [N]}).
  """
  n = model.spec.loops
  variables = lambda p: {"params": p, "pca": pca}
  if supervise_all or not cheap_gradient or n == 1:
    out = model.apply(variables(params), batch["lr"])
    pix, ker = _iteration_losses(model, out, batch)
    per_iter = pix + kernel_loss_weight * ker
    loss = jnp.sum(per_iter) if supervise_all else per_iter[-1]
    return loss, {"l_pix": pix, "l_ker": ker}
  prev = model.apply(variables(jax.lax.stop_gradient(params)), batch["lr"], iterations=n - 1)
  prev_pix, prev_ker = _iteration_losses(model, prev, batch)
  last = model.apply(
    variables(params), batch["lr"], initial_code=jax.lax.stop_gradient(prev.code[-1]), iterations=1
  )
  pix, ker = _iteration_losses(model, last, batch)
  loss = pix[-1] + kernel_loss_weight * ker[-1]
  return loss, {
    "l_pix": jnp.concatenate([jax.lax.stop_gradient(prev_pix), pix]),
    "l_ker": jnp.concatenate([jax.lax.stop_gradient(prev_ker), ker]),
  }


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree_util.tree_map(lambda n, o: jnp.where(pred, n, o), new, old)


def train_step(
  state: TrainState,
  batch: dict,
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  kernel_loss_weight: float = 1.0,
  supervise_all: bool = False,
  ema_decay: float = 0.0,
  faults: Faults = Faults(),
) -> tuple[TrainState, dict]:
  """One optimizer update. Returns the new state and scalar metrics (incl. 'finite').

  A step whose loss or gradient is not finite is skipped on the device:
  params, optimizer state and EMA stay as they were, `state.skipped` and
  `state.nonfinite_run` count it (the host reads them once per logging window).
  """
  loss_fn = functools.partial(
    compute_losses,
    model,
    pca=state.pca,
    batch=batch,
    kernel_loss_weight=kernel_loss_weight,
    supervise_all=supervise_all,
  )
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  position = state.step + state.data_offset + 1  # the uninterrupted run's step of this batch
  if faults.nan_at_steps:
    hit = jnp.any(position == jnp.asarray(faults.nan_at_steps, jnp.int32))
    loss = jnp.where(hit, jnp.nan, loss)
    grads = jax.tree_util.tree_map(lambda g: jnp.where(hit, jnp.nan, g), grads)
  # Decided from the loss and the gradient alone, before the update, so that XLA fuses
  # each leaf's update into the selects that keep or drop it. Checking the new parameters
  # too took a reduction per leaf between update and select: DCLS's train step had 13,922
  # kernels to generate with it, 9,059 without (compile -25%). It checks nothing more: a
  # finite gradient norm makes every g**2 finite, so Adam's step (at most ~lr per element)
  # is finite and finite parameters stay finite.
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if faults.collapse_at_step:
    blow = position == faults.collapse_at_step
    updates = jax.tree_util.tree_map(lambda u: jnp.where(blow, u * COLLAPSE_SCALE, u), updates)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    ema = _select(
      finite,
      jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params),
      ema,
    )
  skip = 1 - finite.astype(jnp.int32)
  out = {"loss": loss, "grad_norm": grad_norm, "finite": finite}
  for i in range(model.spec.loops):
    out[f"l_pix{i}"] = aux["l_pix"][i]
    out[f"l_ker{i}"] = aux["l_ker"][i]
  new_state = state.replace(
    step=state.step + 1,
    params=_select(finite, params, state.params),
    opt_state=_select(finite, opt_state, state.opt_state),
    ema_params=ema,
    skipped=state.skipped + skip,
    nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1).astype(jnp.int32),
  )
  out["skipped"] = new_state.skipped
  out["nonfinite_run"] = new_state.nonfinite_run
  return new_state, out


def eval_step(
  variables: dict, lr: jax.Array, *, model: nn.Module
) -> tuple[jax.Array, jax.Array, Optional[jax.Array]]:
  """The last iteration's (sr [B,sh,sw,3] in [0,1], code [B,L], kernel [B,k,k] or None)."""
  out = model.apply(variables, lr)
  kernel = None if out.kernel is None else out.kernel[-1]
  return jnp.clip(out.sr[-1], 0.0, 1.0), out.code[-1], kernel


def _at_precision(fn: Callable, precision: str) -> Callable:
  """fn traced at the matmul/conv precision `precision` (precision.PRECISIONS)."""
  precision_lib.check_precision(precision)

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with precision_lib.precision_scope(precision):
      return fn(*args, **kwargs)

  return wrapped


def make_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  *,
  kernel_loss_weight: float = 1.0,
  supervise_all: bool = False,
  ema_decay: float = 0.0,
  faults: Faults = Faults(),
  precision: str = "default",
) -> Callable:
  """`train_step` jitted over the mesh: state replicated (and donated), batch sharded;
  matmuls/convolutions at `precision` ("default" or "highest", config.matmul_precision)."""
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  fn = functools.partial(
    train_step,
    model=model,
    tx=tx,
    kernel_loss_weight=float(kernel_loss_weight),
    supervise_all=bool(supervise_all),
    ema_decay=float(ema_decay),
    faults=faults,
  )
  return jax.jit(
    _at_precision(fn, precision),
    in_shardings=(replicated, data),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )


def make_eval_step(model: nn.Module, mesh: Mesh, precision: str = "highest") -> Callable:
  """`eval_step` jitted over the mesh: variables replicated, images sharded over 'data'
  (one compile per image size); outputs gathered (replicated) for the host. Float32
  precision by default, so validation numbers are the protocol's on every platform."""
  replicated = NamedSharding(mesh, P())
  return jax.jit(
    _at_precision(functools.partial(eval_step, model=model), precision),
    in_shardings=(replicated, NamedSharding(mesh, P("data"))),
    out_shardings=replicated,
  )


OPTIMIZER_FIELDS = (
  "learning_rate",
  "lr_milestones",
  "lr_gamma",
  "adam_b1",
  "adam_b2",
  "weight_decay",
  "clip_grad_norm",
)


@functools.lru_cache(maxsize=8)
def step_functions(
  spec: ModelSpec,
  optimizer: tuple,
  mesh: Mesh,
  kernel_loss_weight: float,
  supervise_all: bool,
  ema_decay: float,
  faults: Faults = Faults(),
  precision: str = "default",
):
  """(model, lr schedule, tx, jitted train step, jitted eval step), built once per setup.

  Reusing the jitted functions lets repeated `train_and_evaluate` calls in one process
  (a resumed run, a notebook, tests) reuse their compilations.
  """
  fields = ml_collections.ConfigDict(dict(zip(OPTIMIZER_FIELDS, optimizer)))
  learning_rate_fn = create_learning_rate_fn(fields)
  tx = create_optimizer(fields, learning_rate_fn)
  model = models.create_model(spec)
  p_train_step = make_train_step(
    model,
    tx,
    mesh,
    kernel_loss_weight=kernel_loss_weight,
    supervise_all=supervise_all,
    ema_decay=ema_decay,
    faults=faults,
    precision=precision,
  )
  return model, learning_rate_fn, tx, p_train_step, make_eval_step(model, mesh)


def step_functions_from_config(config: ml_collections.ConfigDict, spec: ModelSpec, mesh: Mesh):
  """`step_functions` of a training config (what `train_and_evaluate` and `aot` compile)."""
  return step_functions(
    spec,
    tuple(
      tuple(config[f]) if f == "lr_milestones" else config.get(f, 0.0) for f in OPTIMIZER_FIELDS
    ),
    mesh,
    float(config.kernel_loss_weight),
    bool(config.supervise_all_iterations),
    float(config.ema_decay),
    faults_from_config(config),
    config.get("matmul_precision", "default"),
  )


def benchmark_step(
  model: nn.Module,
  variables: dict,
  batch: dict,
  *,
  precision: str = "default",
  devices: Optional[list] = None,
) -> tuple[Callable, TrainState, dict]:
  """(jitted train step, device state, device batch) with the official optimizer.

  For benchmarks: `step(state, batch) -> (state, metrics)`; the mesh spans `devices`
  (default: every device the batch divides over, else the first device).
  """
  config = ml_collections.ConfigDict(
    dict(
      learning_rate=4e-4,
      lr_milestones=(),
      lr_gamma=0.5,
      adam_b1=0.9,
      adam_b2=0.99,
      weight_decay=0.0,
    )
  )
  tx = create_optimizer(config, create_learning_rate_fn(config))
  b = len(batch["lr"])
  if devices is None:
    devices = jax.devices()
    devices = devices if b % len(devices) == 0 else devices[:1]
  mesh = parallel.create_mesh(devices)
  state = parallel.to_global(create_train_state(variables, tx), NamedSharding(mesh, P()))
  return (
    make_train_step(model, tx, mesh, precision=precision),
    state,
    parallel.to_global(batch, NamedSharding(mesh, P("data"))),
  )


def batch_shapes(config: ml_collections.ConfigDict, batch_size: int) -> dict:
  """Shapes and dtypes (jax.ShapeDtypeStruct) of a global training batch of `batch_size`:
  what `input_pipeline.create_train_iterator` yields, to compile the train step without data."""
  crop, scale = int(config.data.hr_crop), int(config.model.scale)
  k, lr = int(config.model.kernel_size), crop // scale
  f32 = lambda *shape: jax.ShapeDtypeStruct((int(batch_size),) + shape, np.float32)
  out = dict(
    lr=f32(lr, lr, 3), hr=f32(crop, crop, 3), kernel=f32(k, k), code=f32(config.model.code_len)
  )
  if models.family(config.model.version).needs_clean_lr(config.model):  # DCLS's kernel loss
    out.update(lr_blurred=f32(lr, lr, 3), lr_clean=f32(lr, lr, 3))
  return out
