"""The networks: a table of model families, each one module (see `spec.Family`).

`FAMILIES` maps a `model.version` to its family module; `create_model(config)` and
`init_variables` are the entry points. A new method is a module here and a line in the
table.
"""

from __future__ import annotations

import types
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dan_jax.models import baseline
from dan_jax.models import dan
from dan_jax.models import dcls
from dan_jax.models import layers
from dan_jax.models import spec as spec_lib

FAMILIES: dict[str, types.ModuleType] = {
  "DANv1": dan,
  "DANv2": dan,
  "DCLS": dcls,
  "baseline": baseline,
}
VERSIONS = tuple(FAMILIES)


def family(version_or_spec: Any) -> types.ModuleType:
  """The family module of a version string, ModelSpec or model config."""
  version = getattr(version_or_spec, "version", version_or_spec)
  if isinstance(version_or_spec, dict):
    version = version_or_spec.get("version", spec_lib.ModelSpec.version)
  if version not in FAMILIES:
    raise ValueError(f"model.version must be one of {VERSIONS}, got {version!r}")
  return FAMILIES[version]


def spec_from_config(model_config: Any) -> spec_lib.ModelSpec:
  """Validates a model config (ConfigDict, dict or ModelSpec) into a ModelSpec.

  Raises:
    ValueError: naming the field when a value is out of range.
  """
  if isinstance(model_config, spec_lib.ModelSpec):
    return model_config
  get = model_config.get if hasattr(model_config, "get") else lambda k, d: d
  fam = family(get("version", spec_lib.ModelSpec.version))
  spec = spec_lib.build_spec(model_config, fam.DEFAULTS)
  fam.validate(spec)
  return spec


def create_model(model_config: Any) -> nn.Module:
  """The module described by `model_config` (see configs/default.py: `model`).

  Every family's module is called as `apply(variables, lr)` -> `spec.ModelOutput`.
  """
  spec = spec_from_config(model_config)
  return family(spec).create(spec)


def init_variables(model: nn.Module, rng: Any, pca_matrix: Any) -> dict:
  """Initialises parameters (PyTorch's default init, then the family's) and the PCA matrix.

  Args:
    model: from `create_model`.
    rng: an int seed or a JAX PRNG key.
    pca_matrix: [k*k, code_len] PCA encoder (see `degradation.build_pca`).
  Returns:
    {'params': ..., 'pca': {'matrix': ...}} as numpy arrays (host memory).
  """
  s = model.spec
  pca_matrix = np.asarray(pca_matrix, np.float32)
  if pca_matrix.shape != (s.kernel_size**2, s.code_len):
    raise ValueError(
      f"pca_matrix must have shape {(s.kernel_size**2, s.code_len)} for "
      f"kernel_size {s.kernel_size} and code_len {s.code_len}, got "
      f"{pca_matrix.shape}"
    )
  if not isinstance(rng, (int, np.integer)):
    rng = np.asarray(jax.random.key_data(rng)).astype(np.uint64)
    rng = int(rng.reshape(-1)[-1] + (rng.reshape(-1)[0] << np.uint64(32)))
  lr = jax.ShapeDtypeStruct((1, 8, 8, s.in_nc), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, iterations=1), lr)
  params = layers.torch_default_params(flax.core.unfreeze(shapes["params"]), rng)
  params = family(s).init_params(params, rng, s)
  return {"params": params, "pca": {"matrix": pca_matrix}}


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree (shapes or arrays)."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
