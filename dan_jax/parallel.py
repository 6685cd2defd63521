"""Devices: the mesh, batch-size checks, and host <-> global arrays.

Everything dan_jax runs on several devices uses one 1-D mesh with the axis 'data':
training shards batches over it (parameters replicated), and inference (`predict.Predictor`,
`evaluate`, in-training validation) shards images or tiles over it. Images are independent,
so a batch padded to a multiple of the device count and cut back afterwards gives exactly
the numbers of one device.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from dan_jax.errors import ShardingError

DATA_AXIS = "data"


def create_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: every device of every host).

  Built by `jax.make_mesh` (which orders devices along the interconnect) with Auto axis
  types, so jit's in/out shardings decide placement; meshes make_mesh cannot build
  (multi-slice TPU) fall back to the devices in their given order.
  """
  devices = list(jax.devices() if devices is None else devices)
  try:
    return jax.make_mesh(
      (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices
    )
  except ValueError:  # multi-slice topologies
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def local_mesh() -> Mesh:
  """The mesh of this process's devices (single-process tools: evaluate, infer)."""
  return create_mesh(jax.local_devices())


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Fails fast when the global batch cannot be split evenly over devices and hosts."""
  n = mesh.devices.size
  hosts = len({d.process_index for d in mesh.devices.flat})
  if batch_size % n or batch_size % hosts:
    raise ShardingError(
      f"config.batch_size = {batch_size} does not divide over the {n} "
      f"devices (of {hosts} host(s)): use a multiple of {n}"
    )


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= n (and >= multiple)."""
  return max(-(-int(n) // multiple), 1) * multiple


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
  """x [B, ...] padded to [size, ...] by repeating its last item (exact: items are
  independent, and the padding is cut off again)."""
  if len(x) >= size:
    return x
  return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def to_global(tree: Any, sharding: NamedSharding) -> Any:
  """Host-local numpy arrays -> global jax.Arrays (each host gives its own slice)."""
  return jax.tree_util.tree_map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
  )


def global_from_full(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from the full value that every host holds (e.g. validation images)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x: Any) -> np.ndarray:
  """A fully replicated global array as numpy (works on every host)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def describe(mesh: Mesh) -> str:
  """'4 devices (cpu)': what a command line prints about the devices it uses."""
  n = mesh.devices.size
  kinds = sorted({d.platform for d in mesh.devices.flat})
  return f"{n} device{'s' if n != 1 else ''} ({', '.join(kinds)})"
