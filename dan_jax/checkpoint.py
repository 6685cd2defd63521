"""Checkpoints with orbax: the model config is stored beside the weights.

Layout (the same for training workdirs and converted official weights):

  WORKDIR/checkpoints/<step>/state         pytree: params, pca (+ opt_state, ema_params,
                                           step, ... for training checkpoints)
  WORKDIR/checkpoints/<step>/model_config  JSON: the model config (no --config needed)
  WORKDIR/checkpoints/<step>/meta          JSON: anything else (data position, full config)

`load_model(path)` accepts a workdir, its `checkpoints/` directory or one step's directory.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import jax
from jax.sharding import NamedSharding
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dan_jax import models
from dan_jax import parallel
from dan_jax import storage
from dan_jax.errors import CheckpointError
from dan_jax.errors import TrainingError
from dan_jax.models.spec import ModelSpec
from dan_jax.train_state import COUNTERS
from dan_jax.train_state import TrainState

CHECKPOINTS_SUBDIR = "checkpoints"
ITEMS = ("state", "model_config", "meta")


def model_config_to_dict(model_config: Any) -> dict:
  """A JSON-safe dict of a model config (ConfigDict, dict or ModelSpec)."""
  spec = models.spec_from_config(model_config)
  out = {}
  for name in spec.__dataclass_fields__:
    value = getattr(spec, name)
    if name == "dtype":
      value = np.dtype(value).name
    out[name] = value.item() if isinstance(value, np.generic) else value
  return out


def create_manager(
  directory: storage.PathLike,
  *,
  max_to_keep: Optional[int] = 3,
  best_metric: Optional[str] = None,
  async_save: bool = True,
  read_only: bool = False,
) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` (a `checkpoints/` dir) with our items.

  Args:
    directory: where the step directories live (local or a URL such as gs://...).
    max_to_keep: number of checkpoints kept (the best one too, with `best_metric`).
    best_metric: keep checkpoints by this metric (higher is better) instead of recency.
    async_save: write in a background thread (training); call `wait_until_finished`.
    read_only: never create or delete anything (evaluation, inference).
  """
  directory = storage.path(directory)
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    best_fn=(lambda m: m[best_metric]) if best_metric else None,
    best_mode="max",
    keep_checkpoints_without_metrics=True,
    enable_async_checkpointing=async_save,
    create=not read_only,
    read_only=read_only,
    # A run killed while saving leaves a `<step>.orbax-checkpoint-tmp-*` folder (orbax
    # writes there and renames when complete); it is never read as a checkpoint, and
    # the next writer removes it.
    cleanup_tmp_directories=not read_only,
    # Processes meet at barriers named after the step: the latest and the best
    # checkpoint of one step, saved at once by two managers, need distinct names.
    multiprocessing_options=ocp.options.MultiprocessingOptions(
      barrier_sync_key_prefix=re.sub(r"\W", "_", directory.name)
    ),
  )
  manager = ocp.CheckpointManager(directory, options=options, item_names=ITEMS)
  # orbax removes leftover temporary folders in a background thread started here; wait
  # for it (a directory listing) so that nothing else runs beside it: a process exiting
  # right away would print its traceback, and code that patches the file system meanwhile
  # (tfds.testing.mock_data while a dataset is built) would redirect its listing.
  cleanup = getattr(manager, "_cleanup_tmp_directory_future", None)
  if cleanup is not None:
    cleanup.result()
  return manager


def save_args(state: Any, model_config: Any, meta: Optional[dict] = None) -> ocp.args.Composite:
  """Orbax save arguments for one checkpoint."""
  return ocp.args.Composite(
    state=ocp.args.StandardSave(state),
    model_config=ocp.args.JsonSave(model_config_to_dict(model_config)),
    meta=ocp.args.JsonSave(meta or {}),
  )


def save_model(out_dir: str, variables: dict, model_config: Any, step: int = 0) -> str:
  """Writes variables ({'params', 'pca'}) as a checkpoint under `out_dir`; returns its path.

  Refuses to overwrite: a step that already exists there is an error.
  """
  directory = storage.join(out_dir, CHECKPOINTS_SUBDIR)
  try:
    if not storage.is_url(directory):  # object stores have no folders to create
      storage.path(directory).mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise CheckpointError(f"cannot create checkpoint directory {directory}: {e}") from e
  manager = create_manager(directory, max_to_keep=None, async_save=False)
  if step in manager.all_steps():
    raise CheckpointError(
      f"{directory} already holds a checkpoint at step {step}; "
      "choose another --out (nothing was overwritten)"
    )
  state = {"params": variables["params"], "pca": variables["pca"]}
  manager.save(step, args=save_args(state, model_config, {"source": "dan_jax.convert"}))
  manager.wait_until_finished()
  manager.close()
  return storage.join(directory, str(step))


def resolve(path: storage.PathLike) -> tuple[str, Optional[int]]:
  """(checkpoints directory, step or None for the latest) for a user-given path or URL."""
  path = storage.path(path)
  if not path.is_dir():
    raise CheckpointError(f"no checkpoint at {path}: not a directory")
  sub = path / CHECKPOINTS_SUBDIR
  if sub.is_dir():
    return str(sub), None
  if path.name.isdigit() and (path / "state").is_dir():
    return str(path.parent), int(path.name)
  if any(d.name.isdigit() for d in path.iterdir()):
    return str(path), None
  raise CheckpointError(
    f"no checkpoint at {path}: expected a workdir with "
    f"{CHECKPOINTS_SUBDIR}/, a {CHECKPOINTS_SUBDIR}/ directory or one "
    "step's directory"
  )


def load_model(path: str, use_ema: bool = True) -> tuple[ml_collections.ConfigDict, dict, int]:
  """Loads a checkpoint for inference.

  Args:
    path: a workdir (latest checkpoint), a checkpoints directory, or a step directory.
    use_ema: take the EMA weights when the checkpoint has them.
  Returns:
    (model_config, variables {'params', 'pca'}, step)
  """
  directory, step = resolve(path)
  manager = create_manager(directory, max_to_keep=None, async_save=False, read_only=True)
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(f"no checkpoint under {directory}")
  if step is None:
    step = manager.latest_step()
  elif step not in steps:
    raise CheckpointError(f"no checkpoint at step {step} under {directory}")
  try:
    # A checkpoint written by a run on other devices (e.g. 8 GPUs or a TPU pod) names
    # devices this process may not have: such arrays come back on the first local one.
    fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(fallback_sharding=fallback),
        model_config=ocp.args.JsonRestore(),
      ),
    )
  except Exception as e:  # orbax raises many types for truncated or foreign files
    raise CheckpointError(f"checkpoint {directory}/{step} is unreadable: {e}") from e
  finally:
    manager.close()
  state = restored["state"]
  if not isinstance(state, dict) or "params" not in state or "pca" not in state:
    raise CheckpointError(f"checkpoint {directory}/{step} holds no model parameters")
  model_config = ml_collections.ConfigDict(dict(restored["model_config"]))
  params = state["params"]
  if use_ema and state.get("ema_params") is not None:
    params = state["ema_params"]
  to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)
  variables = {"params": to_np(params), "pca": to_np(state["pca"])}
  check_variables(variables, model_config, where=f"{directory}/{step}")
  return model_config, variables, int(step)


def check_variables(variables: dict, model_config: Any, where: str = "checkpoint") -> None:
  """Raises CheckpointError unless `variables` have exactly the shapes the config needs."""
  model = models.create_model(model_config)
  spec = model.spec
  expected = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros((1, 8, 8, spec.in_nc), np.float32), iterations=1)
  )
  exp = {
    "/".join(str(getattr(k, "key", k)) for k in p): v.shape
    for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]
  }
  got = {
    "/".join(str(getattr(k, "key", k)) for k in p): np.shape(v)
    for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]
  }
  if exp != got:
    diff = sorted(set(exp.items()) ^ set(got.items()))[:4]
    raise CheckpointError(
      f"{where}: parameters do not fit the model config "
      f"({spec.version} x{spec.scale}); first differences: {diff}"
    )


# ---------------------------------------------------------------------------------------
# Training checkpoints: compatibility, restore, latest and best saves
# ---------------------------------------------------------------------------------------


def _arch(model_config: Any) -> dict:
  """The fields whose change makes a checkpoint another model (not: dtype, scan_unroll, ...)."""
  d = model_config_to_dict(model_config)
  return {k: d[k] for k in models.family(d["version"]).arch_fields(d["version"])}


def _describe(arch: dict) -> str:
  return f"{arch['version']} x{arch['scale']}"


def check_compatible(stored_model_config: dict, spec: ModelSpec, where: str, what: str) -> None:
  """Raises TrainingError unless the stored model config is the same model as `spec`.

  `where` names the checkpoint in the message, `what` says what to do about it.
  """
  try:
    have = _arch(stored_model_config)
  except ValueError as e:
    raise TrainingError(f"{where} has an unreadable model config: {e}") from e
  want = _arch(spec)
  if have != want:
    diff = ", ".join(
      f"{k} {have.get(k)!r} vs {want.get(k)!r}" for k in want if have.get(k) != want.get(k)
    )
    raise TrainingError(
      f"{where} holds a {_describe(have)} model but the config trains "
      f"{_describe(want)} ({diff}); {what}"
    )


def _abstract(tree: Any, sharding: NamedSharding) -> Any:
  return jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding), tree
  )


def read_info(manager: ocp.CheckpointManager, step: int, spec: ModelSpec) -> dict:
  """The `meta` of a checkpoint, after checking that it holds the same model."""
  where = f"{manager.directory}/{step}"
  try:
    info = manager.restore(
      step,
      args=ocp.args.Composite(model_config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()),
    )
  except Exception as e:
    raise TrainingError(f"cannot read the checkpoint {where}: {e}") from e
  check_compatible(
    dict(info["model_config"]),
    spec,
    f"the checkpoint {where}",
    "refusing to resume: use another --workdir (nothing was deleted)",
  )
  return dict(info["meta"] or {})


def restore_state(
  manager: ocp.CheckpointManager, step: int, template: TrainState, sharding: NamedSharding
) -> TrainState:
  """Restores the training state at `step` (checked with `read_info` first)."""
  target = template.to_dict()
  restore = lambda t: manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(t, sharding)))
  )
  try:
    restored = restore(target)
  except Exception as e:
    try:  # a checkpoint saved before the recovery counters existed
      restored = restore({k: v for k, v in target.items() if k not in COUNTERS})
    except Exception:
      raise TrainingError(
        f"cannot resume from {manager.directory}/{step}: its training state does not fit "
        f"this config (e.g. ema_decay or weight_decay switched on or off): {e}"
      ) from e
  state = dict(restored["state"])
  for k in COUNTERS:
    if k not in state:
      state[k] = parallel.to_global(np.zeros((), np.int32), sharding)
  return TrainState(**state)


def save_state(
  manager: ocp.CheckpointManager, step: int, state: TrainState, spec: ModelSpec, meta: dict
) -> None:
  """Saves `step`; a checkpoint of that step already there (a rerun) is replaced."""
  if step in manager.all_steps():
    manager.wait_until_finished()
    manager.delete(step)
  manager.save(step, args=save_args(state.to_dict(), spec, meta), force=True)


def save_best(
  best_manager: ocp.CheckpointManager,
  manager: ocp.CheckpointManager,
  step: int,
  state: TrainState,
  spec: ModelSpec,
  meta: dict,
) -> None:
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
  best_manager.save(step, args=save_args(state.to_dict(), spec, meta), force=True)


def close(manager: Optional[ocp.CheckpointManager]) -> None:
  """Waits for pending saves and closes the manager."""
  if manager is None:
    return
  manager.wait_until_finished()
  manager.close()
