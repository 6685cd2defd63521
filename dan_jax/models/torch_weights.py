"""Helpers the families' official-weight mappings share: PyTorch names -> our parameter tree."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from dan_jax.errors import ConversionError


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """name -> numpy array, without DataParallel's `module.` prefix."""
  out = {}
  for k, v in state_dict.items():
    k = k[len("module.") :] if k.startswith("module.") else k
    out[k] = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
  return out


def map_weights(
  sd: Mapping[str, np.ndarray],
  shapes: Any,
  pairs: Iterator[tuple[str, tuple[str, ...]]],
  shape_note: str = "",
) -> tuple[dict, set[str], list[str]]:
  """(params, official keys used, problems): each official `NAME.weight`/`NAME.bias` put at
  its path in our params (conv OIHW -> HWIO, linear [out, in] -> [in, out]), checked
  against the model's abstract `shapes`."""
  params: dict = {}
  used: set[str] = set()
  problems: list[str] = []
  for torch_name, path in pairs:
    node = shapes
    for p in path:
      node = node[p]
    for suffix, ours in (("weight", "kernel"), ("bias", "bias")):
      key = f"{torch_name}.{suffix}"
      if key not in sd:
        problems.append(f"missing {key}")
        continue
      value = sd[key].astype(np.float32)
      if suffix == "weight":
        value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
      if value.shape != node[ours].shape:
        problems.append(
          f"{key}: shape {value.shape}{shape_note} does not fit the model "
          f"config, which needs {node[ours].shape}"
        )
        continue
      used.add(key)
      target = params
      for p in path:
        target = target.setdefault(p, {})
      target[ours] = value
  return params, used, problems


def unexpected(sd: Mapping[str, np.ndarray], used: set[str]) -> list[str]:
  """Problems for official keys nothing used: layers the config lacks (e.g. more blocks)
  mean the config is wrong."""
  names = sorted(set(sd) - used)
  problems = [f"unexpected {u}" for u in names[:10]]
  if len(names) > 10:
    problems.append(f"... and {len(names) - 10} more unexpected entries")
  return problems


def fail(problems: list[str], what: str) -> None:
  """Raises ConversionError listing the first problems, if any."""
  if problems:
    raise ConversionError(f"{what}: " + "; ".join(problems[:12]))
