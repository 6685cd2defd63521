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
  (tmp folders are removed). SIGTERM sets a flag (`PreemptionWatch`); the loop then saves
  the current step, waits for the write and returns with 'preempted' in the result.
* logs: clu metric writers (TensorBoard event files in the workdir), from process 0 only.
"""

from __future__ import annotations

import collections
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

BEST_SUBDIR = "checkpoints_best"
VAL_SUBDIR = "val"
BEST_METRIC = "val_psnr_y"
# Fields whose change makes a checkpoint another model (not: dtype, scan_unroll, ...).
_ARCH_FIELDS = ("version", "scale", "nf", "nb", "ng", "in_nc", "loops", "kernel_size",
                "code_len", "estimator_nf", "estimator_nb", "input_para", "reduction")


class TrainingError(ValueError):
  """A bad config value, an unusable workdir or a checkpoint that cannot be resumed."""


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient became NaN or infinite; training stopped."""


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

  def variables(self, use_ema: bool = True) -> dict:
    """Model variables for `model.apply` (the EMA weights when there are any)."""
    params = self.ema_params if use_ema and self.ema_params is not None else self.params
    return {"params": params, "pca": self.pca}

  def to_dict(self) -> dict:
    """The checkpoint's `state` item."""
    return {"step": self.step, "params": self.params, "pca": self.pca,
            "opt_state": self.opt_state, "ema_params": self.ema_params}


def create_learning_rate_fn(config: ml_collections.ConfigDict) -> optax.Schedule:
  """MultiStep schedule: lr * gamma^(number of milestones <= step), as torch MultiStepLR."""
  scales = collections.Counter(int(m) for m in config.lr_milestones)
  return optax.piecewise_constant_schedule(
      float(config.learning_rate),
      {m: float(config.lr_gamma)**n for m, n in sorted(scales.items())})


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """Adam(b1, b2, eps=1e-8) with torch-style L2 weight decay and the given schedule."""
  parts = []
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
      ema_params=jax.tree_util.tree_map(np.copy, params) if ema else None)


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


def train_step(state: TrainState, batch: dict, *, model: models.DAN,
               tx: optax.GradientTransformation, kernel_loss_weight: float = 1.0,
               supervise_all: bool = False, ema_decay: float = 0.0
               ) -> tuple[TrainState, dict]:
  """One optimizer update. Returns the new state and scalar metrics (incl. 'finite')."""
  loss_fn = functools.partial(compute_losses, model, pca=state.pca, batch=batch,
                              kernel_loss_weight=kernel_loss_weight,
                              supervise_all=supervise_all)
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                                 ema, params)
  grad_norm = optax.global_norm(grads)
  out = {"loss": loss, "grad_norm": grad_norm,
         "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  for i in range(model.spec.loops):
    out[f"l_pix{i}"] = aux["l_pix"][i]
    out[f"l_ker{i}"] = aux["l_ker"][i]
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema)
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


def create_mesh(devices: Optional[list] = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: every device of every host)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Fails fast when the global batch cannot be split evenly over devices and hosts."""
  n = mesh.devices.size
  hosts = len({d.process_index for d in mesh.devices.flat})
  if batch_size % n or batch_size % hosts:
    raise TrainingError(f"config.batch_size = {batch_size} does not divide over the {n} "
                        f"devices (of {hosts} host(s)): use a multiple of {n}")


def to_global(tree: Any, sharding: NamedSharding) -> Any:
  """Host-local numpy arrays -> global jax.Arrays (sharded or replicated)."""
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def to_host(x: jax.Array) -> np.ndarray:
  """A fully replicated global array as numpy (works on every host)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def make_train_step(model: models.DAN, tx: optax.GradientTransformation, mesh: Mesh, *,
                    kernel_loss_weight: float = 1.0, supervise_all: bool = False,
                    ema_decay: float = 0.0) -> Callable:
  """`train_step` jitted over the mesh: state replicated (and donated), batch sharded."""
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  fn = functools.partial(train_step, model=model, tx=tx,
                         kernel_loss_weight=float(kernel_loss_weight),
                         supervise_all=bool(supervise_all), ema_decay=float(ema_decay))
  return jax.jit(fn, in_shardings=(replicated, data), out_shardings=(replicated, replicated),
                 donate_argnums=0)


def make_eval_step(model: models.DAN, mesh: Mesh) -> Callable:
  """`eval_step` jitted over the mesh; single images run replicated (one compile per size)."""
  replicated = NamedSharding(mesh, P())
  return jax.jit(functools.partial(eval_step, model=model), in_shardings=replicated,
                 out_shardings=replicated)


_OPTIMIZER_FIELDS = ("learning_rate", "lr_milestones", "lr_gamma", "adam_b1", "adam_b2",
                     "weight_decay")


@functools.lru_cache(maxsize=8)
def _step_functions(spec: models.ModelSpec, optimizer: tuple, mesh: Mesh,
                    kernel_loss_weight: float, supervise_all: bool, ema_decay: float):
  """(model, lr schedule, tx, jitted train step, jitted eval step), built once per setup.

  Reusing the jitted functions lets repeated `train_and_evaluate` calls in one process
  (a resumed run, a notebook, tests) reuse their compilations.
  """
  fields = ml_collections.ConfigDict(dict(zip(_OPTIMIZER_FIELDS, optimizer)))
  learning_rate_fn = create_learning_rate_fn(fields)
  tx = create_optimizer(fields, learning_rate_fn)
  model = models.create_model(spec)
  p_train_step = make_train_step(model, tx, mesh, kernel_loss_weight=kernel_loss_weight,
                                 supervise_all=supervise_all, ema_decay=ema_decay)
  return model, learning_rate_fn, tx, p_train_step, make_eval_step(model, mesh)


def benchmark_step(model: models.DAN, variables: dict, batch: dict
                   ) -> tuple[Callable, TrainState, dict]:
  """(jitted train step, device state, device batch) with the official optimizer.

  For benchmarks: `step(state, batch) -> (state, metrics)`; the mesh spans every device
  the batch divides over (else the first device).
  """
  config = ml_collections.ConfigDict(dict(
      learning_rate=4e-4, lr_milestones=(), lr_gamma=0.5, adam_b1=0.9, adam_b2=0.99,
      weight_decay=0.0))
  tx = create_optimizer(config, create_learning_rate_fn(config))
  b = len(batch["lr"])
  devices = jax.devices()
  mesh = create_mesh(devices if b % len(devices) == 0 else devices[:1])
  state = to_global(create_train_state(variables, tx), NamedSharding(mesh, P()))
  return (make_train_step(model, tx, mesh), state,
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
  need(config.degradation.kernel_size == spec.kernel_size, "degradation.kernel_size",
       f"the model's kernel size {spec.kernel_size}")
  need(_is_int(config.degradation.pca_samples) and
       config.degradation.pca_samples >= spec.code_len, "degradation.pca_samples",
       f"an integer >= model.code_len ({spec.code_len})")
  need(spec.code_len <= spec.kernel_size**2, "model.code_len",
       f"at most kernel_size^2 = {spec.kernel_size**2}")
  return spec


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
  for part in path.split("."):
    config = config[part]
  return config


def _prepare_workdir(workdir: str) -> str:
  if not workdir:
    raise TrainingError("no workdir given (--workdir)")
  if "://" in workdir:  # gs:// etc.: orbax and the writers create what they need
    return workdir
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise TrainingError(f"workdir {workdir} exists and is not a folder")
  try:
    os.makedirs(workdir, exist_ok=True)
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
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(template.to_dict(), sharding))))
  except Exception as e:  # pylint: disable=broad-except
    raise TrainingError(
        f"cannot resume from {manager.directory}/{step}: its training state does not fit "
        f"this config (e.g. ema_decay or weight_decay switched on or off): {e}") from e
  return TrainState(**restored["state"])


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

  outputs[i] = (sr uint8 [H,W,3], code [L], kernel [k,k] or None) of image i.
  """
  psnr, ssim, outputs = [], [], []
  for lr, hr in zip(val["lr"], val["hr"]):
    sr, code, kernel = eval_fn(variables, to_global(lr[None], sharding))
    sr = metrics.to_uint8(to_host(sr)[0])
    gt = metrics.to_uint8(hr)
    psnr.append(metrics.psnr_y(sr, gt, crop_border=scale))
    ssim.append(metrics.ssim_y(sr, gt, crop_border=scale))
    outputs.append((sr, to_host(code)[0], None if kernel is None else to_host(kernel)[0]))
  return {"val_psnr_y": metrics.average(psnr), "val_ssim_y": metrics.average(ssim)}, outputs


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
  os.makedirs(directory, exist_ok=True)
  for name, lr, hr, (sr, _, _) in zip(val["names"], val["lr"], val["hr"], outputs):
    bicubic = metrics.to_uint8(degradation.imresize(lr, scale).numpy())
    for suffix, img in (("sr", sr), ("bicubic", bicubic), ("lr", metrics.to_uint8(lr)),
                        ("hr", metrics.to_uint8(hr))):
      image_io.write_png(os.path.join(directory, f"{name}_{suffix}.png"), img,
                         overwrite=True)


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


def _every(step: int, n: int) -> bool:
  return n > 0 and step % n == 0


def _raise_if_not_finite(step: int, m: dict, manager: ocp.CheckpointManager) -> None:
  """Raises NonFiniteLossError unless step's loss and gradient norm are finite."""
  if bool(to_host(m["finite"])):
    return
  manager.wait_until_finished()
  latest = manager.latest_step()
  kept = (f"the last good checkpoint is step {latest} in {manager.directory}" if latest
          is not None else "no checkpoint was saved")
  raise NonFiniteLossError(
      f"training stopped at step {step}: the loss ({float(to_host(m['loss']))}) or the "
      f"gradient norm ({float(to_host(m['grad_norm']))}) is not finite; {kept} (not "
      "overwritten). Lower config.learning_rate or check the data, then resume.")


class PreemptionWatch:
  """SIGTERM (what Cloud TPU, GKE and SLURM send before taking a machine) -> a clean stop.

  The handler only sets a flag; the loop asks `should_stop(step)` after every step and,
  when it says so, saves a checkpoint of that step and returns. One process looks at its
  own flag every step; several processes all-gather their flags every `every` steps
  (all at the same steps), so that they all stop, and save, at the same step even when
  only some of them got the signal. The handler is installed only from the main thread
  (Python delivers signals there) and `close()` puts the previous one back.
  """

  def __init__(self, every: int = 10):
    self.requested = False
    self.every = max(int(every), 1)
    self._previous = None
    self._installed = threading.current_thread() is threading.main_thread()
    if self._installed:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum: int, frame: Any) -> None:
    del signum, frame
    self.requested = True

  def should_stop(self, step: int) -> bool:
    """Whether every process stops after `step` (a collective call with several)."""
    if jax.process_count() == 1:
      return self.requested
    if step % self.every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
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


def _initial_state(config: ml_collections.ConfigDict, spec: models.ModelSpec,
                   model: models.DAN, tx: optax.GradientTransformation,
                   manager: ocp.CheckpointManager, sharding: NamedSharding) -> TrainState:
  """The latest checkpoint's state, else a fresh one (new PCA or config.init_checkpoint)."""
  use_ema = config.ema_decay > 0
  latest = manager.latest_step()
  if latest is not None:
    _read_info(manager, latest, spec)
    # Shapes only: the PCA and all values come from the checkpoint.
    pca_shape = np.zeros((spec.kernel_size**2, spec.code_len), np.float32)
    template = create_train_state(models.init_variables(model, 0, pca_shape), tx, use_ema)
    logging.info("resuming from %s/%d", manager.directory, latest)
    return _restore(manager, latest, template, sharding)
  variables = _initial_variables(config, model, spec)
  return to_global(create_train_state(variables, tx, use_ema), sharding)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from WORKDIR/checkpoints if there are any), validates, logs.

  Returns:
    Final figures: 'step', 'train_loss' (mean over the last logging window),
    'first_train_loss' (over the first window of this run), 'steps_per_sec' and
    'train_seconds' (this run's training steps, without the first step's compilation,
    validation and checkpointing), 'wall_seconds', and with validation 'val_psnr_y',
    'val_ssim_y', 'bicubic_psnr_y', 'bicubic_ssim_y' (Y channel, uint8, crop_border =
    scale, on the final weights: the EMA ones when config.ema_decay > 0), and
    'preempted': True when a SIGTERM stopped the run before num_train_steps (a
    checkpoint of 'step' is then saved, and no final validation is run).
  Raises:
    TrainingError, input_pipeline.DataError, checkpoint.CheckpointError: user errors.
    NonFiniteLossError: the loss or gradient became NaN/inf (the state is not saved).
  """
  start_time = time.perf_counter()
  spec = validate_config(config)
  preemption_every = config.get("preemption_check_every_steps", 10)
  if not _is_int(preemption_every) or preemption_every <= 0:
    raise TrainingError("config.preemption_check_every_steps must be a positive integer, "
                        f"got {preemption_every!r}")
  workdir = _prepare_workdir(workdir)
  mesh = create_mesh()
  check_batch_size(config.batch_size, mesh)
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  is_chief = jax.process_index() == 0
  model, learning_rate_fn, tx, p_train_step, p_eval_step = _step_functions(
      spec, tuple(tuple(config[f]) if f == "lr_milestones" else config[f]
                  for f in _OPTIMIZER_FIELDS),
      mesh, float(config.kernel_loss_weight), bool(config.supervise_all_iterations),
      float(config.ema_decay))
  use_ema = config.ema_decay > 0
  meta = {"config": checkpoint.config_json(config)}
  manager = checkpoint.create_manager(
      os.path.join(workdir, checkpoint.CHECKPOINTS_SUBDIR),
      max_to_keep=int(config.keep_checkpoints), async_save=True)
  best_manager = best_value = writer = None
  preemption, preempted_at = PreemptionWatch(preemption_every), None
  try:
    state = _initial_state(config, spec, model, tx, manager, replicated)
    if config.keep_best:  # "last N plus best": the best lives in its own manager
      best_manager = checkpoint.create_manager(
          os.path.join(workdir, BEST_SUBDIR), max_to_keep=1, async_save=True)
      if best_manager.latest_step() is not None:  # the bar a new best must pass
        best_value = _read_info(best_manager, best_manager.latest_step(),
                                spec).get(BEST_METRIC)
    pca = to_host(state.pca["matrix"])
    start_step, total = int(to_host(state.step)), int(config.num_train_steps)
    # Data problems surface here, before any log is written.
    val = input_pipeline.create_validation_set(config, pca)
    train_iter: Optional[Iterator[dict]] = None
    if start_step < total:
      train_iter = input_pipeline.create_train_iterator(config, pca, start_step=start_step)
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
    if is_chief:
      logging.info("%s x%d: %s parameters, %d device(s) on %d host(s), global batch %d, "
                   "steps %d..%d", spec.version, spec.scale,
                   f"{models.count_params(state.params):,}", mesh.devices.size,
                   jax.process_count(), config.batch_size, start_step, total)
    result: dict = {} if val is None else bicubic_baseline(val, spec.scale)
    report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                             every_steps=config.log_every_steps,
                                             every_secs=None)
    outputs = None

    def run_validation(step: int) -> None:
      nonlocal outputs, best_value
      scores, outputs = evaluate(p_eval_step, state.variables(use_ema), val, spec.scale,
                                 replicated)
      result.update(scores)
      writer.write_scalars(step, {"val/" + k.replace("val_", ""): v
                                  for k, v in result.items() if k.endswith("_y")})
      if is_chief:
        logging.info("step %d: validation Y-PSNR %.2f dB, SSIM %.4f (bicubic %.2f dB, "
                     "%.4f)", step, scores["val_psnr_y"], scores["val_ssim_y"],
                     result["bicubic_psnr_y"], result["bicubic_ssim_y"])
      if best_manager is not None and (best_value is None or
                                       scores[BEST_METRIC] > best_value):
        best_value = scores[BEST_METRIC]
        best_manager.save(step, args=checkpoint.save_args(
            state.to_dict(), spec, dict(meta, step=step, **scores)), force=True)

    window: list = []  # (step, device metrics) since the last log
    pending = None  # (step, device metrics) whose finiteness is checked one step late
    first_loss = last_loss = None
    timed_steps, timed_since, paused = 0, None, 0.0  # throughput, compilation excluded
    window_timed, window_start, window_paused = 0, time.perf_counter(), 0.0
    for step in range(start_step + 1, total + 1):
      batch = to_global(next(train_iter), data_sharding)
      state, step_metrics = p_train_step(state, batch)
      if pending is not None:  # the device runs this step while we check the last one
        _raise_if_not_finite(*pending, manager)
      pending = (step, step_metrics)
      window.append(pending)
      report(step)
      if timed_since is None:  # the first step compiles: time from its end
        jax.block_until_ready(step_metrics)
        timed_since = window_start = time.perf_counter()
      else:
        timed_steps += 1
        window_timed += 1
      pause_start = time.perf_counter()
      if _every(step, config.log_every_steps) or step == total:
        host = [(s, {k: float(to_host(v)) for k, v in m.items()}) for s, m in window]
        for (s, h), (_, m) in zip(host, window):
          if not h["finite"]:
            _raise_if_not_finite(s, m, manager)
        scalars = {f"train/{k}": float(np.mean([h[k] for _, h in host]))
                   for k in host[0][1] if k != "finite"}
        elapsed = time.perf_counter() - window_start - window_paused
        if window_timed and elapsed > 0:
          scalars["train/steps_per_sec"] = window_timed / elapsed
          scalars["train/samples_per_sec"] = window_timed * config.batch_size / elapsed
        scalars["train/learning_rate"] = float(learning_rate_fn(step - 1))
        writer.write_scalars(step, scalars)
        last_loss = scalars["train/loss"]
        first_loss = last_loss if first_loss is None else first_loss
        if is_chief:
          logging.info("step %d/%d: loss %.4f (l_pix%d %.4f), lr %.2e%s", step, total,
                       last_loss, spec.loops - 1, scalars[f"train/l_pix{spec.loops - 1}"],
                       scalars["train/learning_rate"],
                       f", {scalars['train/steps_per_sec']:.2f} steps/s"
                       if "train/steps_per_sec" in scalars else "")
        window, window_timed, window_paused = [], 0, 0.0
        window_start = pause_start = time.perf_counter()
      if val is not None and (_every(step, config.eval_every_steps) or step == total):
        run_validation(step)
        if _every(step, config.image_every_steps) or step == total:
          writer.write_images(step, summary_images(val, outputs, pca, spec.scale))
      if _every(step, config.checkpoint_every_steps) or step == total:
        _raise_if_not_finite(*pending, manager)  # never save a NaN state
        # The input pipeline is stateless: its position is the step.
        manager.save(step, args=checkpoint.save_args(
            state.to_dict(), spec, dict(meta, step=step, data_position=step)), force=True)
      pause = time.perf_counter() - pause_start
      paused += pause
      window_paused += pause
      if step < total and preemption.should_stop(step):
        _raise_if_not_finite(*pending, manager)
        if not _every(step, config.checkpoint_every_steps):
          manager.save(step, args=checkpoint.save_args(
              state.to_dict(), spec, dict(meta, step=step, data_position=step)), force=True)
        manager.wait_until_finished()  # complete on disk before the process may go
        preempted_at = step
        if is_chief:
          logging.warning("preempted at step %d; checkpoint saved (%s/%d): run the same "
                          "command to resume", step, manager.directory, step)
        break
    loop_end = time.perf_counter()
    if pending is not None:
      _raise_if_not_finite(*pending, manager)
    if val is not None and outputs is None and preempted_at is None:  # nothing to train
      run_validation(int(to_host(state.step)))
  finally:
    preemption.close()
    _close(manager)
    _close(best_manager)
    if writer is not None:
      writer.flush()

  if val is not None and config.write_sr_images and is_chief and preempted_at is None:
    write_sr_images(os.path.join(workdir, VAL_SUBDIR), val, outputs, spec.scale)
  train_seconds = loop_end - timed_since - paused if timed_since else 0.0
  result.update(step=int(to_host(state.step)), train_seconds=train_seconds,
                wall_seconds=time.perf_counter() - start_time)
  if timed_steps and train_seconds > 0:
    result["steps_per_sec"] = timed_steps / train_seconds
  if last_loss is not None:
    result.update(train_loss=last_loss, first_train_loss=first_loss)
  if preempted_at is not None:
    result["preempted"] = True
  writer.close()
  return result
