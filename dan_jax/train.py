"""Training and validation of DAN: train state, sharded train step, checkpoints, logs.

`train_and_evaluate(config, workdir)` is the entry point that `main`, notebooks and tests
share. The loop, from top to bottom of this file:

* mesh: one `Mesh` of all devices with axis 'data'; parameters, optimizer state and EMA
  are replicated, batches are sharded over 'data' (`jax.make_array_from_process_local_data`
  turns each host's batch into one global array). The same code runs on one CPU, fake CPU
  devices, GPUs and TPU pods.
* loss: the official DAN loss supervises only the last alternating iteration, and the
  model stops gradients between iterations, so iterations 1..N-1 run forward only and only
  the last one is differentiated (the same gradient at a fraction of the cost; see
  `compute_losses`). `config.supervise_all_iterations` adds every iteration's loss and
  differentiates through the whole loop.
* optimizer: Adam (PyTorch's eps, L2 weight decay added to the gradient like
  `torch.optim.Adam(weight_decay=...)`), MultiStep learning-rate halving, optional EMA.
* checkpoints: orbax, WORKDIR/checkpoints/<step>/{state,model_config,meta}; the `state` item
  holds step, params, pca, opt_state and ema_params, so `checkpoint.load_model` reads it.
  A run resumes from the latest checkpoint in its workdir, and because batch i of the input
  pipeline is a pure function of (config, i), a resumed run continues exactly as the
  uninterrupted one would. The best checkpoint by validation PSNR is kept apart in
  WORKDIR/checkpoints_best/ (config.keep_best).
* kills and preemption: orbax writes a checkpoint into a tmp folder and renames it when
  complete, so a run killed at any moment resumes from its last complete checkpoint
  (tmp folders are removed). A preemption (`PreemptionWatch`: JAX's preemption sync point
  with jax.distributed, else a SIGTERM flag) makes the loop save the current step, wait
  for the write and return with 'preempted' in the result.
* recovery: a step with a non-finite loss or gradient is skipped inside the jitted step
  (no update; counters in the state, read once per logging window, so the host never
  waits on the device between logs). A stretch of config.max_consecutive_nonfinite
  skipped steps, or a validation Y-PSNR config.collapse_psnr_drop dB below the best,
  rolls back to the last good checkpoint and moves the data stream past the failed
  batches (`state.data_offset`; the `recovery` record in each checkpoint's meta makes a
  resumed run repeat it). The latest checkpoint of a step is complete before its best
  checkpoint is written.
* logs: clu metric writers (TensorBoard event files in the workdir), from process 0 only.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from dan_jax import checkpoint
from dan_jax import degradation
from dan_jax import image_io
from dan_jax import input_pipeline
from dan_jax import metrics
from dan_jax import models
from dan_jax import parallel
from dan_jax import runtime
from dan_jax import storage

BEST_SUBDIR = "checkpoints_best"
VAL_SUBDIR = "val"
BEST_METRIC = "val_psnr_y"
# Fields whose change makes a checkpoint another model (not: dtype, scan_unroll, ...).
_ARCH_FIELDS = ("version", "scale", "nf", "nb", "ng", "in_nc", "loops", "kernel_size",
                "code_len", "estimator_nf", "estimator_nb", "input_para", "reduction")


class TrainingError(ValueError):
  """A bad config value, an unusable workdir or a checkpoint that cannot be resumed."""


class DivergedError(FloatingPointError):
  """Training failed in a way the automatic rollbacks did not cure; training stopped."""


class NonFiniteLossError(DivergedError):
  """The loss or the gradient stayed NaN or infinite through config.max_rollbacks rollbacks."""


class CollapseError(DivergedError):
  """Validation PSNR kept collapsing through config.max_rollbacks rollbacks."""


# ---------------------------------------------------------------------------------------
# Train state
# ---------------------------------------------------------------------------------------


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
    return {"step": self.step, "params": self.params, "pca": self.pca,
            "opt_state": self.opt_state, "ema_params": self.ema_params,
            "skipped": self.skipped, "nonfinite_run": self.nonfinite_run,
            "data_offset": self.data_offset}


def create_learning_rate_fn(config: ml_collections.ConfigDict) -> optax.Schedule:
  """MultiStep schedule: lr * gamma^(number of milestones <= step), as torch MultiStepLR."""
  scales = collections.Counter(int(m) for m in config.lr_milestones)
  return optax.piecewise_constant_schedule(
      float(config.learning_rate),
      {m: float(config.lr_gamma)**n for m, n in sorted(scales.items())})


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """Adam(b1, b2, eps=1e-8) with torch-style L2 weight decay and the given schedule.

  config.clip_grad_norm > 0 first clips the gradient to that global norm (off by default,
  as the official recipe).
  """
  parts = []
  if config.get("clip_grad_norm", 0.0):
    parts.append(optax.clip_by_global_norm(float(config.clip_grad_norm)))
  if config.weight_decay:
    # torch.optim.Adam adds weight_decay * param to the gradient before the moments
    # (not decoupled AdamW); the official weight_decay_G means this.
    parts.append(optax.add_decayed_weights(float(config.weight_decay)))
  parts += [optax.scale_by_adam(b1=float(config.adam_b1), b2=float(config.adam_b2),
                                eps=1e-8),
            optax.scale_by_learning_rate(learning_rate_fn)]
  return optax.chain(*parts)


def create_train_state(variables: dict, tx: optax.GradientTransformation,
                       ema: bool = False) -> TrainState:
  """A fresh state at step 0 from model variables {'params', 'pca'} (host arrays)."""
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  return TrainState(
      step=np.zeros((), np.int32),
      params=params,
      pca=jax.tree_util.tree_map(np.asarray, variables["pca"]),
      opt_state=jax.tree_util.tree_map(np.asarray, tx.init(params)),
      ema_params=jax.tree_util.tree_map(np.copy, params) if ema else None,
      skipped=np.zeros((), np.int32), nonfinite_run=np.zeros((), np.int32),
      data_offset=np.zeros((), np.int32))


# ---------------------------------------------------------------------------------------
# Loss and the train / eval steps
# ---------------------------------------------------------------------------------------


def _l1(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


def _iteration_losses(out: models.DANOutput, batch: dict) -> tuple[jax.Array, jax.Array]:
  """Per-iteration ([n],[n]) L1 of SR vs HR and of the kernel term (official nn.L1Loss).

  The kernel term is L1(kernel, true kernel) for DANv2 (official `cri_pix(kernels[i],
  real_kernel)`), L1(code, true code) for DANv1, whose Estimator predicts the code, and
  L1(kernel, reformulated kernel) for DCLS (batch 'lr_blurred', 'lr_clean').
  """
  pix = jax.vmap(lambda sr: _l1(sr, batch["hr"]))(out.sr)
  if "lr_blurred" in batch:  # DCLS: L1 to the reformulated kernel (official CorrectionLoss)
    target = models.reformulated_kernel(batch["lr_blurred"], batch["lr_clean"],
                                        out.kernel.shape[-1])
    ker = jax.vmap(lambda k: _l1(k, target))(out.kernel)
  elif out.kernel is not None:
    ker = jax.vmap(lambda k: _l1(k, batch["kernel"]))(out.kernel)
  else:
    ker = jax.vmap(lambda c: _l1(c, batch["code"]))(out.code)
  return pix, ker


def compute_losses(model: models.DAN, params: Any, pca: Any, batch: dict, *,
                   kernel_loss_weight: float = 1.0, supervise_all: bool = False,
                   cheap_gradient: bool = True) -> tuple[jax.Array, dict]:
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
    pix, ker = _iteration_losses(out, batch)
    per_iter = pix + kernel_loss_weight * ker
    loss = jnp.sum(per_iter) if supervise_all else per_iter[-1]
    return loss, {"l_pix": pix, "l_ker": ker}
  prev = model.apply(variables(jax.lax.stop_gradient(params)), batch["lr"],
                     iterations=n - 1)
  prev_pix, prev_ker = _iteration_losses(prev, batch)
  last = model.apply(variables(params), batch["lr"],
                     initial_code=jax.lax.stop_gradient(prev.code[-1]), iterations=1)
  pix, ker = _iteration_losses(last, batch)
  loss = pix[-1] + kernel_loss_weight * ker[-1]
  return loss, {"l_pix": jnp.concatenate([jax.lax.stop_gradient(prev_pix), pix]),
                "l_ker": jnp.concatenate([jax.lax.stop_gradient(prev_ker), ker])}


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


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree_util.tree_map(lambda n, o: jnp.where(pred, n, o), new, old)


def train_step(state: TrainState, batch: dict, *, model: models.DAN,
               tx: optax.GradientTransformation, kernel_loss_weight: float = 1.0,
               supervise_all: bool = False, ema_decay: float = 0.0,
               faults: Faults = Faults()) -> tuple[TrainState, dict]:
  """One optimizer update. Returns the new state and scalar metrics (incl. 'finite').

  A step whose loss, gradient or new parameters are not finite is skipped on the device:
  params, optimizer state and EMA stay as they were, `state.skipped` and
  `state.nonfinite_run` count it (the host reads them once per logging window).
  """
  loss_fn = functools.partial(compute_losses, model, pca=state.pca, batch=batch,
                              kernel_loss_weight=kernel_loss_weight,
                              supervise_all=supervise_all)
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  position = state.step + state.data_offset + 1  # the uninterrupted run's step of this batch
  if faults.nan_at_steps:
    hit = jnp.any(position == jnp.asarray(faults.nan_at_steps, jnp.int32))
    loss = jnp.where(hit, jnp.nan, loss)
    grads = jax.tree_util.tree_map(lambda g: jnp.where(hit, jnp.nan, g), grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if faults.collapse_at_step:
    blow = position == faults.collapse_at_step
    updates = jax.tree_util.tree_map(lambda u: jnp.where(blow, u * COLLAPSE_SCALE, u),
                                     updates)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  for p in jax.tree_util.tree_leaves(params):  # e.g. finite updates overflowing float32
    finite &= jnp.all(jnp.isfinite(p))
  ema = state.ema_params
  if ema is not None:
    ema = _select(finite, jax.tree_util.tree_map(
        lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params), ema)
  skip = 1 - finite.astype(jnp.int32)
  out = {"loss": loss, "grad_norm": grad_norm, "finite": finite}
  for i in range(model.spec.loops):
    out[f"l_pix{i}"] = aux["l_pix"][i]
    out[f"l_ker{i}"] = aux["l_ker"][i]
  new_state = state.replace(
      step=state.step + 1, params=_select(finite, params, state.params),
      opt_state=_select(finite, opt_state, state.opt_state), ema_params=ema,
      skipped=state.skipped + skip,
      nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1).astype(jnp.int32))
  out["skipped"] = new_state.skipped
  out["nonfinite_run"] = new_state.nonfinite_run
  return new_state, out


def eval_step(variables: dict, lr: jax.Array, *, model: models.DAN
              ) -> tuple[jax.Array, jax.Array, Optional[jax.Array]]:
  """The last iteration's (sr [B,sh,sw,3] in [0,1], code [B,L], kernel [B,k,k] or None)."""
  out = model.apply(variables, lr)
  kernel = None if out.kernel is None else out.kernel[-1]
  return jnp.clip(out.sr[-1], 0.0, 1.0), out.code[-1], kernel


# ---------------------------------------------------------------------------------------
# Mesh and sharding
# ---------------------------------------------------------------------------------------


# These live in dan_jax.parallel; the names stay importable from train.
create_mesh = parallel.create_mesh
to_global = parallel.to_global
to_host = parallel.to_host


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Fails fast (TrainingError) when the global batch cannot be split over the mesh."""
  try:
    parallel.check_batch_size(batch_size, mesh)
  except parallel.ShardingError as e:
    raise TrainingError(str(e)) from e


def _at_precision(fn: Callable, precision: str) -> Callable:
  """fn traced at the matmul/conv precision `precision` (runtime.PRECISIONS)."""
  runtime.check_precision(precision)

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with runtime.precision_scope(precision):
      return fn(*args, **kwargs)
  return wrapped


def make_train_step(model: models.DAN, tx: optax.GradientTransformation, mesh: Mesh, *,
                    kernel_loss_weight: float = 1.0, supervise_all: bool = False,
                    ema_decay: float = 0.0, faults: Faults = Faults(),
                    precision: str = "default") -> Callable:
  """`train_step` jitted over the mesh: state replicated (and donated), batch sharded;
  matmuls/convolutions at `precision` ("default" or "highest", config.matmul_precision)."""
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  fn = functools.partial(train_step, model=model, tx=tx,
                         kernel_loss_weight=float(kernel_loss_weight),
                         supervise_all=bool(supervise_all), ema_decay=float(ema_decay),
                         faults=faults)
  return jax.jit(_at_precision(fn, precision), in_shardings=(replicated, data),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(model: models.DAN, mesh: Mesh, precision: str = "highest") -> Callable:
  """`eval_step` jitted over the mesh: variables replicated, images sharded over 'data'
  (one compile per image size); outputs gathered (replicated) for the host. Float32
  precision by default, so validation numbers are the protocol's on every platform."""
  replicated = NamedSharding(mesh, P())
  return jax.jit(_at_precision(functools.partial(eval_step, model=model), precision),
                 in_shardings=(replicated, NamedSharding(mesh, P("data"))),
                 out_shardings=replicated)


_OPTIMIZER_FIELDS = ("learning_rate", "lr_milestones", "lr_gamma", "adam_b1", "adam_b2",
                     "weight_decay", "clip_grad_norm")


def faults_from_config(config: ml_collections.ConfigDict) -> Faults:
  """config.debug's injected faults (none when the config has no `debug` block)."""
  debug = config.get("debug") or {}
  return Faults(nan_at_steps=tuple(int(s) for s in (debug.get("nan_at_steps") or ())),
                collapse_at_step=int(debug.get("collapse_at_step") or 0))


@functools.lru_cache(maxsize=8)
def _step_functions(spec: models.ModelSpec, optimizer: tuple, mesh: Mesh,
                    kernel_loss_weight: float, supervise_all: bool, ema_decay: float,
                    faults: Faults = Faults(), precision: str = "default"):
  """(model, lr schedule, tx, jitted train step, jitted eval step), built once per setup.

  Reusing the jitted functions lets repeated `train_and_evaluate` calls in one process
  (a resumed run, a notebook, tests) reuse their compilations.
  """
  fields = ml_collections.ConfigDict(dict(zip(_OPTIMIZER_FIELDS, optimizer)))
  learning_rate_fn = create_learning_rate_fn(fields)
  tx = create_optimizer(fields, learning_rate_fn)
  model = models.create_model(spec)
  p_train_step = make_train_step(model, tx, mesh, kernel_loss_weight=kernel_loss_weight,
                                 supervise_all=supervise_all, ema_decay=ema_decay,
                                 faults=faults, precision=precision)
  return model, learning_rate_fn, tx, p_train_step, make_eval_step(model, mesh)


def benchmark_step(model: models.DAN, variables: dict, batch: dict, *,
                   precision: str = "default", devices: Optional[list] = None
                   ) -> tuple[Callable, TrainState, dict]:
  """(jitted train step, device state, device batch) with the official optimizer.

  For benchmarks: `step(state, batch) -> (state, metrics)`; the mesh spans `devices`
  (default: every device the batch divides over, else the first device).
  """
  config = ml_collections.ConfigDict(dict(
      learning_rate=4e-4, lr_milestones=(), lr_gamma=0.5, adam_b1=0.9, adam_b2=0.99,
      weight_decay=0.0))
  tx = create_optimizer(config, create_learning_rate_fn(config))
  b = len(batch["lr"])
  if devices is None:
    devices = jax.devices()
    devices = devices if b % len(devices) == 0 else devices[:1]
  mesh = create_mesh(devices)
  state = to_global(create_train_state(variables, tx), NamedSharding(mesh, P()))
  return (make_train_step(model, tx, mesh, precision=precision), state,
          to_global(batch, NamedSharding(mesh, P("data"))))


# ---------------------------------------------------------------------------------------
# Config checks
# ---------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def validate_config(config: ml_collections.ConfigDict) -> models.ModelSpec:
  """Checks the training fields; returns the model spec. Raises TrainingError."""
  for name in ("model", "degradation", "data", "seed", "batch_size", "num_train_steps",
               "learning_rate", "lr_milestones", "lr_gamma", "adam_b1", "adam_b2",
               "weight_decay", "kernel_loss_weight", "supervise_all_iterations",
               "ema_decay", "log_every_steps", "eval_every_steps",
               "checkpoint_every_steps", "keep_checkpoints", "keep_best",
               "image_every_steps", "init_checkpoint", "write_sr_images"):
    if name not in config:
      raise TrainingError(f"the config has no field {name!r} (start from "
                          "configs/default.py)")
  try:
    spec = models.spec_from_config(config.model)
  except ValueError as e:
    raise TrainingError(f"config.{e}" if str(e).startswith("model.") else str(e)) from e

  def need(ok: bool, field: str, what: str) -> None:
    if not ok:
      raise TrainingError(f"config.{field} must be {what}, got {_get(config, field)!r}")

  finite = lambda x: isinstance(x, (int, float, np.number)) and math.isfinite(x)
  need(_is_int(config.batch_size) and config.batch_size > 0, "batch_size",
       "a positive integer")
  need(_is_int(config.num_train_steps) and config.num_train_steps >= 0, "num_train_steps",
       "a non-negative integer")
  need(finite(config.learning_rate) and config.learning_rate > 0, "learning_rate",
       "a positive number")
  ms = tuple(config.lr_milestones or ())
  need(all(_is_int(m) and m > 0 for m in ms) and list(ms) == sorted(ms), "lr_milestones",
       "increasing positive step numbers")
  need(finite(config.lr_gamma) and config.lr_gamma > 0, "lr_gamma", "a positive number")
  for f in ("adam_b1", "adam_b2", "ema_decay"):
    need(finite(config[f]) and 0 <= config[f] < 1, f, "in [0, 1)")
  for f in ("weight_decay", "kernel_loss_weight"):
    need(finite(config[f]) and config[f] >= 0, f, "a non-negative number")
  need(_is_int(config.log_every_steps) and config.log_every_steps > 0, "log_every_steps",
       "a positive integer")
  for f in ("eval_every_steps", "checkpoint_every_steps", "image_every_steps"):
    need(_is_int(config[f]) and config[f] >= 0, f, "a non-negative integer (0: off)")
  need(_is_int(config.keep_checkpoints) and config.keep_checkpoints > 0,
       "keep_checkpoints", "a positive integer")
  # Recovery fields (configs written before they existed get the defaults' behaviour).
  recovery = _recovery_fields(config)
  need(finite(recovery["clip_grad_norm"]) and recovery["clip_grad_norm"] >= 0,
       "clip_grad_norm", "a non-negative number (0: off)")
  need(finite(recovery["collapse_psnr_drop"]) and recovery["collapse_psnr_drop"] >= 0,
       "collapse_psnr_drop", "a non-negative number of dB (0: off)")
  for f in ("max_consecutive_nonfinite", "max_rollbacks"):
    need(_is_int(recovery[f]) and recovery[f] >= 0, f, "a non-negative integer")
  try:
    faults = faults_from_config(config)
  except (TypeError, ValueError) as e:
    raise TrainingError(f"config.debug: {e}") from e
  need(all(s > 0 for s in faults.nan_at_steps), "debug.nan_at_steps",
       "positive step numbers")
  need(faults.collapse_at_step >= 0, "debug.collapse_at_step", "a step number (0: off)")
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
  return spec


# Defaults of the recovery fields for configs that predate them (configs/default.py
# states the same values).
_RECOVERY_DEFAULTS = {"clip_grad_norm": 0.0, "max_consecutive_nonfinite": 20,
                      "collapse_psnr_drop": 3.0, "max_rollbacks": 3}


def _recovery_fields(config: ml_collections.ConfigDict) -> dict:
  return {k: config.get(k, v) for k, v in _RECOVERY_DEFAULTS.items()}


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
  for part in path.split("."):
    config = config[part]
  return config


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


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------


def _arch(model_config: Any) -> dict:
  d = checkpoint.model_config_to_dict(model_config)
  if d["version"] == "DANv1":
    d.pop("ng")  # unused by DANv1
  if d["version"] != "DCLS":
    d.pop("input_para", None), d.pop("reduction", None)  # DCLS-only fields
  return {k: d[k] for k in _ARCH_FIELDS if k in d}


def _describe(arch: dict) -> str:
  return f"{arch['version']} x{arch['scale']}"


def _check_compatible(stored_model_config: dict, spec: models.ModelSpec, where: str,
                      what: str) -> None:
  try:
    have = _arch(stored_model_config)
  except ValueError as e:
    raise TrainingError(f"{where} has an unreadable model config: {e}") from e
  want = _arch(spec)
  if have != want:
    diff = ", ".join(f"{k} {have.get(k)!r} vs {want.get(k)!r}" for k in want
                     if have.get(k) != want.get(k))
    raise TrainingError(f"{where} holds a {_describe(have)} model but the config trains "
                        f"{_describe(want)} ({diff}); {what}")


def _abstract(tree: Any, sharding: NamedSharding) -> Any:
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding),
      tree)


def _read_info(manager: ocp.CheckpointManager, step: int, spec: models.ModelSpec) -> dict:
  """The `meta` of a checkpoint, after checking that it holds the same model."""
  where = f"{manager.directory}/{step}"
  try:
    info = manager.restore(step, args=ocp.args.Composite(
        model_config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except
    raise TrainingError(f"cannot read the checkpoint {where}: {e}") from e
  _check_compatible(dict(info["model_config"]), spec, f"the checkpoint {where}",
                    "refusing to resume: use another --workdir (nothing was deleted)")
  return dict(info["meta"] or {})


def _restore(manager: ocp.CheckpointManager, step: int, template: TrainState,
             sharding: NamedSharding) -> TrainState:
  """Restores the training state at `step` (checked with `_read_info` first)."""
  target = template.to_dict()
  restore = lambda t: manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(t, sharding))))
  try:
    restored = restore(target)
  except Exception as e:  # pylint: disable=broad-except
    try:  # a checkpoint saved before the recovery counters existed
      restored = restore({k: v for k, v in target.items() if k not in _COUNTERS})
    except Exception:  # pylint: disable=broad-except
      raise TrainingError(
          f"cannot resume from {manager.directory}/{step}: its training state does not fit "
          f"this config (e.g. ema_decay or weight_decay switched on or off): {e}") from e
  state = dict(restored["state"])
  for k in _COUNTERS:
    if k not in state:
      state[k] = to_global(np.zeros((), np.int32), sharding)
  return TrainState(**state)


_COUNTERS = ("skipped", "nonfinite_run", "data_offset")


def _initial_variables(config: ml_collections.ConfigDict, model: models.DAN,
                       spec: models.ModelSpec) -> dict:
  """Fresh variables (new PCA) or those of config.init_checkpoint."""
  if config.init_checkpoint:
    model_config, variables, step = checkpoint.load_model(config.init_checkpoint,
                                                          use_ema=True)
    _check_compatible(dict(model_config), spec,
                      f"config.init_checkpoint {config.init_checkpoint}",
                      "choose weights of the same model")
    logging.info("initialised from %s (step %d)", config.init_checkpoint, step)
    return variables
  spec_k = input_pipeline.kernel_spec(config)
  t = time.perf_counter()
  pca = degradation.build_pca(degradation.make_kernel_sampler(spec_k),
                              n=int(config.degradation.pca_samples),
                              code_len=spec.code_len, seed=int(config.seed))
  if jax.process_count() > 1:  # identical on every host, whatever its float rounding
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    pca = np.asarray(multihost_utils.broadcast_one_to_all(pca))
  logging.info("PCA of %d kernels in %.1f s", config.degradation.pca_samples,
               time.perf_counter() - t)
  return models.init_variables(model, int(config.seed), pca)


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


def bicubic_baseline(val: dict, scale: int) -> dict:
  """Y-PSNR/SSIM of MATLAB-bicubic upsampling of the validation LR images (uint8)."""
  psnr, ssim = [], []
  for lr, hr in zip(val["lr"], val["hr"]):
    up = metrics.to_uint8(degradation.imresize(lr, scale).numpy())
    gt = metrics.to_uint8(hr)
    psnr.append(metrics.psnr_y(up, gt, crop_border=scale))
    ssim.append(metrics.ssim_y(up, gt, crop_border=scale))
  return {"bicubic_psnr_y": metrics.average(psnr), "bicubic_ssim_y": metrics.average(ssim)}


def evaluate(eval_fn: Callable, variables: dict, val: dict, scale: int,
             sharding: NamedSharding) -> tuple[dict, list]:
  """Validation Y-PSNR/SSIM (uint8, crop_border=scale); returns (metrics, outputs).

  Same-sized images go through `eval_fn` together, as many per call as `sharding`'s mesh
  has devices (one image per device; the last call padded by repetition, the padding
  dropped): every host holds all validation images, so this is exact.
  outputs[i] = (sr uint8 [H,W,3], code [L], kernel [k,k] or None) of image i.
  """
  n_dev = sharding.mesh.devices.size
  results: list = [None] * len(val["lr"])
  by_shape: dict = {}
  for i, lr in enumerate(val["lr"]):
    by_shape.setdefault(np.shape(lr), []).append(i)
  for idx in by_shape.values():
    for start in range(0, len(idx), n_dev):
      part = idx[start:start + n_dev]
      lrs = parallel.pad_batch(np.stack([val["lr"][i] for i in part]), n_dev)
      sr, code, kernel = eval_fn(variables, parallel.global_from_full(lrs, sharding))
      sr, code = to_host(sr), to_host(code)
      kernel = None if kernel is None else to_host(kernel)
      for j, i in enumerate(part):
        results[i] = (metrics.to_uint8(sr[j]), code[j], None if kernel is None else kernel[j])
  psnr, ssim = [], []
  for (sr, _, _), hr in zip(results, val["hr"]):
    gt = metrics.to_uint8(hr)
    psnr.append(metrics.psnr_y(sr, gt, crop_border=scale))
    ssim.append(metrics.ssim_y(sr, gt, crop_border=scale))
  return {"val_psnr_y": metrics.average(psnr), "val_ssim_y": metrics.average(ssim)}, results


def _display_kernel(kernel: np.ndarray, size: int = 128) -> np.ndarray:
  return image_io.kernel_to_display(kernel, min_size=size)[..., None].repeat(3, -1)


def summary_images(val: dict, outputs: list, pca: np.ndarray, scale: int,
                   count: int = 2) -> dict:
  """TensorBoard images: [LR (nearest) | SR | HR] and [estimated | true] kernels.

  DANv1 estimates only a code: both kernels are then shown as their PCA reconstruction
  (code @ pca^T), which is what the code can express.
  """
  images = {}
  for i, (sr, code, kernel) in enumerate(outputs[:count]):
    lr = metrics.to_uint8(val["lr"][i]).repeat(scale, 0).repeat(scale, 1)
    h, w = sr.shape[:2]
    row = np.concatenate([lr[:h, :w], sr, metrics.to_uint8(val["hr"][i])], axis=1)
    images[f"val/lr_sr_hr/{val['names'][i]}"] = row[None]
    true = val["kernel"][i]
    if kernel is None:
      k = true.shape[-1]
      kernel = (pca @ code).reshape(k, k)
      true = (pca @ val["code"][i]).reshape(k, k)
    gap = np.full((_display_kernel(true).shape[0], 4, 3), 255, np.uint8)
    images[f"val/kernel_est_true/{val['names'][i]}"] = np.concatenate(
        [_display_kernel(kernel), gap, _display_kernel(true)], axis=1)[None]
  return images


def write_sr_images(directory: str, val: dict, outputs: list, scale: int) -> None:
  """NAME_sr.png, NAME_bicubic.png, NAME_lr.png and NAME_hr.png for every image."""
  if not storage.is_url(directory):  # object stores have no folders to create
    storage.path(directory).mkdir(parents=True, exist_ok=True)
  for name, lr, hr, (sr, _, _) in zip(val["names"], val["lr"], val["hr"], outputs):
    bicubic = metrics.to_uint8(degradation.imresize(lr, scale).numpy())
    for suffix, img in (("sr", sr), ("bicubic", bicubic), ("lr", metrics.to_uint8(lr)),
                        ("hr", metrics.to_uint8(hr))):
      image_io.write_png(storage.join(directory, f"{name}_{suffix}.png"), img,
                         overwrite=True)


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


def _every(step: int, n: int) -> bool:
  return n > 0 and step % n == 0


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
    self.jax_sync = bool(jax.distributed.is_initialized() and
                         jax.config.jax_enable_preemption_service)
    self._installed = (not self.jax_sync and
                       threading.current_thread() is threading.main_thread())
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
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
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
      signal.signal(signal.SIGTERM, self._previous if self._previous is not None
                    else signal.SIG_DFL)
      self._installed = False


def _close(manager: Optional[ocp.CheckpointManager]) -> None:
  """Waits for pending saves and closes the manager."""
  if manager is None:
    return
  manager.wait_until_finished()
  manager.close()


def _state_template(spec: models.ModelSpec, model: models.DAN,
                    tx: optax.GradientTransformation, use_ema: bool) -> TrainState:
  """A state of the right shapes for restoring (values come from the checkpoint)."""
  pca_shape = np.zeros((spec.kernel_size**2, spec.code_len), np.float32)
  return create_train_state(models.init_variables(model, 0, pca_shape), tx, use_ema)


def _initial_state(config: ml_collections.ConfigDict, spec: models.ModelSpec,
                   model: models.DAN, tx: optax.GradientTransformation,
                   manager: ocp.CheckpointManager, sharding: NamedSharding
                   ) -> tuple[TrainState, dict]:
  """(state, meta) of the latest checkpoint, else a fresh state (new PCA or
  config.init_checkpoint) and {}."""
  latest = manager.latest_step()
  if latest is not None:
    meta = _read_info(manager, latest, spec)
    logging.info("resuming from %s/%d", manager.directory, latest)
    template = _state_template(spec, model, tx, config.ema_decay > 0)
    return _restore(manager, latest, template, sharding), meta
  variables = _initial_variables(config, model, spec)
  return to_global(create_train_state(variables, tx, config.ema_decay > 0), sharding), {}


# ---------------------------------------------------------------------------------------
# Recovery: rollbacks after non-finite stretches and collapses
# ---------------------------------------------------------------------------------------


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


def _rollback_target(managers: tuple, limit: int
                     ) -> Optional[tuple[ocp.CheckpointManager, int]]:
  """The newest checkpoint at or before `limit` in the managers (the first wins a tie)."""
  found = None
  for m in managers:
    steps = [s for s in (m.all_steps() if m is not None else ()) if s <= limit]
    if steps and (found is None or max(steps) > found[1]):
      found = (m, max(steps))
  return found


def _diverged(kind: str, step: int, what: str, rec: Recovery, max_rollbacks: int,
              target: Optional[tuple], directory: str) -> DivergedError:
  """The error that ends a run whose rollbacks did not help: what happened, what to do."""
  kept = (f"the last good checkpoint is step {target[1]} in {target[0].directory} (not "
          "overwritten)" if target else f"no checkpoint to roll back to in {directory}")
  tried = (f"after {rec.streak - 1} rollback(s) in a row (config.max_rollbacks = "
           f"{max_rollbacks})" if target else "and there is nothing to roll back to")
  if kind == "nonfinite":
    advice = ("Lower config.learning_rate, set config.clip_grad_norm (e.g. 0.5) or check "
              "the data")
    cls = NonFiniteLossError
  else:
    advice = ("Lower config.learning_rate (or add config.lr_milestones earlier), set "
              "config.clip_grad_norm (e.g. 0.5), or raise config.collapse_psnr_drop if "
              "such drops are normal for this data")
    cls = CollapseError
  return cls(f"training stopped at step {step}: {what}, {tried}; {kept}. {advice}, then "
             "run the same command (or raise config.max_rollbacks).")


def _save(manager: ocp.CheckpointManager, step: int, state: TrainState,
          spec: models.ModelSpec, meta: dict) -> None:
  """Saves `step`; a checkpoint of that step already there (a rerun) is replaced."""
  if step in manager.all_steps():
    manager.wait_until_finished()
    manager.delete(step)
  manager.save(step, args=checkpoint.save_args(state.to_dict(), spec, meta), force=True)


def _save_best(best_manager: ocp.CheckpointManager, manager: ocp.CheckpointManager,
               step: int, state: TrainState, spec: models.ModelSpec, meta: dict) -> None:
  """Saves the best checkpoint of `step`, after the latest checkpoint is complete on disk.

  So a best checkpoint never exists without the latest checkpoint of its step: a run
  killed in between resumes after that step. A best checkpoint of this or a later step
  is from a rerun or an abandoned (rolled back) stretch and scored no better than this
  one: it is replaced.
  """
  manager.wait_until_finished()
  best_manager.wait_until_finished()
  for s in best_manager.all_steps():
    if s >= step:
      best_manager.delete(s)
  best_manager.save(step, args=checkpoint.save_args(state.to_dict(), spec, meta),
                    force=True)


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


def _window_scalars(host: list) -> dict:
  """Means of a logging window's metrics over its finite steps, and the skip counters."""
  good = [h for _, h in host if h["finite"]]
  counters = ("finite", "skipped", "nonfinite_run")
  out = {f"train/{k}": float(np.mean([h[k] for h in good]))
         for k in host[0][1] if k not in counters} if good else {}
  out["train/skipped_steps"] = host[-1][1]["skipped"]
  out["train/skipped_in_window"] = float(sum(not h["finite"] for _, h in host))
  return out


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
    TrainingError, input_pipeline.DataError, checkpoint.CheckpointError: user errors.
    DivergedError (NonFiniteLossError, CollapseError): rollbacks did not help.
  """
  start_time = time.perf_counter()
  spec = validate_config(config)
  preemption_every = config.get("preemption_check_every_steps", 10)
  if not _is_int(preemption_every) or preemption_every <= 0:
    raise TrainingError("config.preemption_check_every_steps must be a positive integer, "
                        f"got {preemption_every!r}")
  recovery_config = _recovery_fields(config)
  max_nonfinite = int(recovery_config["max_consecutive_nonfinite"])
  psnr_drop = float(recovery_config["collapse_psnr_drop"])
  max_rollbacks = int(recovery_config["max_rollbacks"])
  workdir = _prepare_workdir(workdir)
  mesh = create_mesh()
  check_batch_size(config.batch_size, mesh)
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  is_chief = jax.process_index() == 0
  model, learning_rate_fn, tx, p_train_step, p_eval_step = _step_functions(
      spec, tuple(tuple(config[f]) if f == "lr_milestones" else config.get(f, 0.0)
                  for f in _OPTIMIZER_FIELDS),
      mesh, float(config.kernel_loss_weight), bool(config.supervise_all_iterations),
      float(config.ema_decay), faults_from_config(config),
      config.get("matmul_precision", "default"))
  use_ema = config.ema_decay > 0
  meta = {"config": checkpoint.config_json(config)}
  manager = checkpoint.create_manager(
      storage.join(workdir, checkpoint.CHECKPOINTS_SUBDIR),
      max_to_keep=int(config.keep_checkpoints), async_save=True)
  best_manager = writer = None
  preemption, preempted_at = PreemptionWatch(preemption_every), None
  try:
    state, resumed_meta = _initial_state(config, spec, model, tx, manager, replicated)
    start_step, total = int(to_host(state.step)), int(config.num_train_steps)
    rec = Recovery.from_meta(resumed_meta, start_step)
    rec.data_offset = int(to_host(state.data_offset))
    if config.keep_best:  # "last N plus best": the best lives in its own manager
      best_manager = checkpoint.create_manager(
          storage.join(workdir, BEST_SUBDIR), max_to_keep=1, async_save=True)
      if rec.best_psnr is None and best_manager.latest_step() is not None:
        # A checkpoint from before the 'recovery' meta: the bar is the best checkpoint's.
        rec.best_psnr = _read_info(best_manager, best_manager.latest_step(),
                                   spec).get(BEST_METRIC)
        rec.best_step = best_manager.latest_step()
    pca = to_host(state.pca["matrix"])
    # Data problems surface here, before any log is written.
    val = input_pipeline.create_validation_set(config, pca)

    def train_batches(step: int) -> Iterator[dict]:
      """The batches of steps step + 1, ... (the data stream moved by rollbacks)."""
      return input_pipeline.create_train_iterator(config, pca,
                                                  start_step=step + rec.data_offset)

    train_iter: Optional[Iterator[dict]] = None
    if start_step < total:
      train_iter = train_batches(start_step)
    # TensorBoard files are written by TensorFlow's own file system (see README).
    writer = metric_writers.create_default_writer(
        config.get("tensorboard_dir") or workdir, just_logging=not is_chief)
    if is_chief:
      logging.info("%s x%d: %s parameters, %d device(s) on %d host(s), global batch %d, "
                   "steps %d..%d%s", spec.version, spec.scale,
                   f"{models.count_params(state.params):,}", mesh.devices.size,
                   jax.process_count(), config.batch_size, start_step, total,
                   f" (data offset {rec.data_offset}, {rec.rollbacks} rollback(s) so far)"
                   if rec.rollbacks else "")
    result: dict = {} if val is None else bicubic_baseline(val, spec.scale)
    new_report = lambda: periodic_actions.ReportProgress(
        num_train_steps=total, writer=writer, every_steps=config.log_every_steps,
        every_secs=None)
    report = new_report()
    outputs = None

    def run_validation(step: int) -> dict:
      nonlocal outputs
      scores, outputs = evaluate(p_eval_step, state.variables(use_ema), val, spec.scale,
                                 data_sharding)
      result.update(scores)
      writer.write_scalars(step, {"val/" + k.replace("val_", ""): v
                                  for k, v in result.items() if k.endswith("_y")})
      if is_chief:
        logging.info("step %d: validation Y-PSNR %.2f dB, SSIM %.4f (bicubic %.2f dB, "
                     "%.4f)", step, scores["val_psnr_y"], scores["val_ssim_y"],
                     result["bicubic_psnr_y"], result["bicubic_ssim_y"])
      return scores

    def rollback(step: int, kind: str, what: str, limit: int) -> tuple[TrainState, int]:
      """Restores the newest checkpoint at or before `limit`; returns (state, its step)."""
      rec.streak += 1
      for m in (manager, best_manager):  # every save complete: all_steps() is the truth
        if m is not None:
          m.wait_until_finished()
      target = _rollback_target((manager, best_manager), limit)
      if target is None or rec.streak > max_rollbacks:
        raise _diverged(kind, step, what, rec, max_rollbacks, target,
                        storage.join(workdir, checkpoint.CHECKPOINTS_SUBDIR))
      source, to_step = target
      skipped = to_host(state.skipped)  # kept across rollbacks: the run's total
      for s in manager.all_steps():  # newer ones hold the collapse: never resume them
        if s > to_step:
          manager.delete(s)
      restored = _restore(source, to_step, _state_template(spec, model, tx, use_ema),
                          replicated)
      rec.rollbacks += 1
      rec.failed_at = max(rec.failed_at, step)
      rec.data_offset += step - to_step
      rec.good_step = to_step
      restored = restored.replace(
          data_offset=to_global(np.asarray(rec.data_offset, np.int32), replicated),
          nonfinite_run=to_global(np.zeros((), np.int32), replicated),
          skipped=to_global(np.asarray(skipped, np.int32), replicated))
      if is_chief:
        logging.warning(
            "step %d: %s; rollback %d (%d in a row, config.max_rollbacks = %d): restored "
            "%s/%d and moved the data stream past %d batches (data offset now %d)", step,
            what, rec.rollbacks, rec.streak, max_rollbacks, source.directory, to_step,
            step - to_step, rec.data_offset)
      writer.write_scalars(step, {"recovery/rollbacks": rec.rollbacks,
                                  f"recovery/{kind}_rollback_to_step": to_step})
      return restored, to_step

    window: list = []  # (step, device metrics) since the last log
    first_loss = last_loss = None
    skipped_total = int(to_host(state.skipped))
    timed_steps, timed_since, paused = 0, None, 0.0  # throughput, compilation excluded
    window_timed, window_start, window_paused = 0, time.perf_counter(), 0.0
    step = start_step
    while step < total:
      step += 1
      batch = to_global(next(train_iter), data_sharding)
      state, step_metrics = p_train_step(state, batch)
      window.append((step, step_metrics))  # read once per window: no sync per step
      report(step)
      if timed_since is None:  # the first step compiles: time from its end
        jax.block_until_ready(step_metrics)
        timed_since = window_start = time.perf_counter()
      else:
        timed_steps += 1
        window_timed += 1
      pause_start = time.perf_counter()
      failure = None  # (kind, what, newest step a rollback may go to)
      if _every(step, config.log_every_steps) or step == total:
        host = [(s, {k: float(to_host(v)) for k, v in m.items()}) for s, m in window]
        scalars = _window_scalars(host)
        elapsed = time.perf_counter() - window_start - window_paused
        if window_timed and elapsed > 0:
          scalars["train/steps_per_sec"] = window_timed / elapsed
          scalars["train/samples_per_sec"] = window_timed * config.batch_size / elapsed
        scalars["train/learning_rate"] = float(learning_rate_fn(step - 1))
        writer.write_scalars(step, scalars)
        skipped_total = int(scalars["train/skipped_steps"])
        run = int(host[-1][1]["nonfinite_run"])
        if "train/loss" in scalars:
          last_loss = scalars["train/loss"]
          first_loss = last_loss if first_loss is None else first_loss
        if is_chief:
          skipped = int(scalars["train/skipped_in_window"])
          logging.info(
              "step %d/%d: %s, lr %.2e%s%s", step, total,
              f"loss {last_loss:.4f} (l_pix{spec.loops - 1} "
              f"{scalars[f'train/l_pix{spec.loops - 1}']:.4f})" if "train/loss" in scalars
              else "no finite loss", scalars["train/learning_rate"],
              f", {scalars['train/steps_per_sec']:.2f} steps/s"
              if "train/steps_per_sec" in scalars else "",
              f", {skipped} step(s) skipped (non-finite loss or gradient; {skipped_total} "
              "in all)" if skipped else "")
        window, window_timed, window_paused = [], 0, 0.0
        window_start = pause_start = time.perf_counter()
        # Stuck: no update applies any more (or the run ends in a skipped stretch).
        if max_nonfinite and (run >= max_nonfinite or (step == total and run > 0)):
          failure = ("nonfinite", f"the loss or gradient is not finite for {run} "
                     "consecutive steps (skipped)", step)
      new_best = None
      if failure is None and val is not None and (_every(step, config.eval_every_steps)
                                                  or step == total):
        scores = run_validation(step)
        value = scores[BEST_METRIC]
        if psnr_drop and rec.best_psnr is not None and value < rec.best_psnr - psnr_drop:
          failure = ("collapse", f"validation Y-PSNR collapsed to {value:.2f} dB, "
                     f"{rec.best_psnr - value:.2f} dB below the best ({rec.best_psnr:.2f} dB "
                     f"at step {rec.best_step}; config.collapse_psnr_drop = {psnr_drop})",
                     rec.good_step)
        else:
          rec.good_step = step
          if rec.best_psnr is None or value > rec.best_psnr:
            rec.best_psnr, rec.best_step = value, step
            new_best = scores
          if _every(step, config.image_every_steps) or step == total:
            writer.write_images(step, summary_images(val, outputs, pca, spec.scale))
      if failure is not None:
        state, step = rollback(step, *failure)
        train_iter = train_batches(step)
        report = new_report()
        window, window_timed = [], 0
        window_start = time.perf_counter()
        paused += window_start - pause_start
        window_paused = 0.0
        continue
      if _every(step, config.checkpoint_every_steps) or step == total:
        if step > rec.failed_at:  # a checkpoint past the last failure: progress
          rec.streak = 0
        _save(manager, step, state, spec, dict(meta, step=step,
                                               data_position=step + rec.data_offset,
                                               recovery=rec.to_meta()))
      if new_best is not None and best_manager is not None:
        _save_best(best_manager, manager, step, state, spec,
                   dict(meta, step=step, recovery=rec.to_meta(), **new_best))
      pause = time.perf_counter() - pause_start
      paused += pause
      window_paused += pause
      if step < total and preemption.should_stop(step):
        if not _every(step, config.checkpoint_every_steps):
          _save(manager, step, state, spec, dict(meta, step=step,
                                                 data_position=step + rec.data_offset,
                                                 recovery=rec.to_meta()))
        manager.wait_until_finished()  # complete on disk before the process may go
        preempted_at = step
        if is_chief:
          logging.warning("preempted at step %d; checkpoint saved (%s/%d): run the same "
                          "command to resume (stopped by %s)", step, manager.directory,
                          step, preemption.source)
        break
    loop_end = time.perf_counter()
    if val is not None and outputs is None and preempted_at is None:  # nothing to train
      run_validation(int(to_host(state.step)))
  finally:
    preemption.close()
    _close(manager)
    _close(best_manager)
    if writer is not None:
      writer.flush()

  if val is not None and config.write_sr_images and is_chief and preempted_at is None:
    write_sr_images(storage.join(workdir, VAL_SUBDIR), val, outputs, spec.scale)
  train_seconds = loop_end - timed_since - paused if timed_since else 0.0
  result.update(step=int(to_host(state.step)), train_seconds=train_seconds,
                wall_seconds=time.perf_counter() - start_time,
                skipped_steps=skipped_total, rollbacks=rec.rollbacks)
  if timed_steps and train_seconds > 0:
    result["steps_per_sec"] = timed_steps / train_seconds
  if last_loss is not None:
    result.update(train_loss=last_loss, first_train_loss=first_loss)
  if preempted_at is not None:
    result.update(preempted=True, preempted_by=preemption.source)
  writer.close()
  return result
