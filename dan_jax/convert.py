"""Official PyTorch weights of any family -> dan_jax variables and checkpoints.

Library use (each family maps its own weights; see `models.spec.Family`):
  model_config = model_config_from_official("DANv2", nf=64, nb=10, ng=5, upscale=4, loop=4)
  variables = params_from_torch(state_dict, model_config)   # state_dict: name -> np.ndarray
The command line (`python -m dan_jax.convert --help`) writes an orbax checkpoint that
`evaluate`, `infer` and training (as `init_checkpoint`) load.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Optional
import zipfile

import ml_collections
import numpy as np

from dan_jax import checkpoint as checkpoint_lib
from dan_jax import config as config_lib
from dan_jax import models
from dan_jax.errors import ConversionError
from dan_jax.errors import Error
from dan_jax.models import torch_weights


def model_config_from_official(version: str, **official_options: Any) -> ml_collections.ConfigDict:
  """Our model config from the official options of `version`'s family.

  DAN (DANv1, DANv2): the `network_G.setting` YAML options `nf`, `nb`, `ng`, `in_nc`,
  `upscale`, `input_para`, `kernel_size`, `loop`; DCLS: its constructor options `nf`, `nb`,
  `ng`, `in_nc`, `reduction`, `upscale`, `input_para`, `kernel_size`. Missing ones take the
  family's official defaults (see each family's `official_config`).
  Returns:
    A ConfigDict with the fields of `configs/default.py`'s `model`.
  """
  fields = models.family(version).official_config(version, **official_options)
  config = ml_collections.ConfigDict(fields)
  models.spec_from_config(config)  # validates
  return config


def params_from_torch(
  state_dict: Mapping[str, Any], model_config: Any, pca_matrix: Optional[Any] = None
) -> dict:
  """Maps an official state_dict of any family onto our variables.

  Args:
    state_dict: official parameter and buffer names (optionally `module.`-prefixed) to
      arrays (numpy or torch tensors). DAN's include the `encoder` buffer (PCA matrix).
    model_config: our model config (e.g. from `model_config_from_official`).
    pca_matrix: for weights without a PCA matrix (DCLS): [k*k, code_len] for the `code`
      output (default zeros).
  Returns:
    {'params': ..., 'pca': {'matrix': [k*k, code_len]}} ready for `model.apply`.
  Raises:
    ConversionError: naming missing, unexpected or mis-shaped entries.
  """
  spec = models.spec_from_config(model_config)
  return models.family(spec).params_from_torch(state_dict, spec, pca_matrix)


def infer_official_options(state_dict: Mapping[str, Any]) -> tuple[str, dict]:
  """(version, official options) read off an official state_dict's names and shapes."""
  for fam in dict.fromkeys(models.FAMILIES.values()):  # each family once, in table order
    found = fam.official_options(state_dict)
    if found is not None:
      return found
  raise ConversionError(
    "this is not an official state_dict of a known family "
    f"({', '.join(models.VERSIONS)}): its names match none"
  )


def model_config_from_state_dict(state_dict: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Our model config read off an official state_dict's names and shapes (any family)."""
  version, options = infer_official_options(state_dict)
  return model_config_from_official(version, **options)


def _load_pca(path: str) -> np.ndarray:
  """A PCA matrix [k*k, code_len] from a .npy, or a .npz/.pth holding one array."""
  if not os.path.isfile(path):
    raise ConversionError(f"no such PCA file: {path}")
  try:
    if path.endswith((".npy", ".npz")):
      obj = np.load(path, allow_pickle=False)
      if not isinstance(obj, np.ndarray):
        with obj:
          obj = {k: obj[k] for k in obj.files}
    else:
      import torch  # pylint: disable=g-import-not-at-top

      obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # format errors surface differently per reader
    raise ConversionError(f"{path} is not a readable PCA matrix: {e}") from e
  if isinstance(obj, dict):
    if len(obj) != 1:
      raise ConversionError(f"{path} must hold one array (the PCA matrix)")
    obj = next(iter(obj.values()))
  return np.asarray(obj.numpy() if hasattr(obj, "numpy") else obj, np.float32)


def load_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Reads an official .pth (a state_dict, or a dict holding one) into numpy arrays.

  A `.npz` of the state_dict (`np.savez(f, **{name: array})`, e.g. exported once where
  PyTorch is installed) is read with numpy, without PyTorch.
  """
  if path.endswith(".npz"):
    if not os.path.isfile(path):
      raise ConversionError(f"no such checkpoint file: {path}")
    if not zipfile.is_zipfile(path):
      raise ConversionError(f"{path} is not a readable .npz state_dict (not a zip archive)")
    try:
      with np.load(path, allow_pickle=False) as npz:
        return torch_weights.strip_prefix({k: npz[k] for k in npz.files})
    except Exception as e:  # bad members, pickled objects, ...
      raise ConversionError(f"{path} is not a readable .npz state_dict: {e}") from e
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError(
      "reading a .pth needs PyTorch: pip install 'dan_jax[torch]' (or any torch build)"
    ) from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except FileNotFoundError as e:
    raise ConversionError(f"no such checkpoint file: {path}") from e
  except Exception as e:  # pickle, zip and format errors all surface differently
    raise ConversionError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
  for key in ("state_dict", "params", "model"):
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise ConversionError(f"{path} does not hold a state_dict")
  return torch_weights.strip_prefix(obj)


def convert_file(
  official_path: str,
  out_dir: str,
  model_config: Optional[Any] = None,
  loops: Optional[int] = None,
  pca_path: Optional[str] = None,
) -> ml_collections.ConfigDict:
  """Converts an official .pth into an orbax checkpoint under `out_dir`.

  Args:
    official_path: the official .pth file.
    out_dir: output directory; the checkpoint goes to `out_dir/checkpoints/0`.
    model_config: our model config; default: read off the weights' names and shapes.
    loops: alternating iterations to store in the config (default: the config's, or 4).
    pca_path: DCLS only: a PCA matrix file for the `code` output (default: zeros).
  Returns:
    The model config stored with the checkpoint.
  """
  sd = load_torch_checkpoint(official_path)
  if model_config is None:
    model_config = model_config_from_state_dict(sd)
  if loops:
    model_config = ml_collections.ConfigDict(model_config.to_dict())
    model_config.loops = loops
  pca = None if pca_path is None else _load_pca(pca_path)
  variables = params_from_torch(sd, model_config, pca)
  checkpoint_lib.save_model(out_dir, variables, model_config)
  return model_config


def main(argv: Optional[list[str]] = None) -> int:
  """The command line; returns the exit status."""
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(
    prog="python -m dan_jax.convert",
    description="Convert official PyTorch DAN or DCLS weights into a dan_jax checkpoint.",
    epilog="Reading a .pth needs PyTorch (pip install 'dan_jax[torch]'), only to unpickle it; "
    "--official may also be a .npz of the state_dict, which needs no PyTorch. Without "
    "--config the architecture (and the family: DAN github greatlog/DAN, DCLS github "
    "megvii-research/DCLS-SR) is read off the weights' names and shapes. DCLS weights carry "
    "no PCA matrix: --pca gives one for the `code` output, else codes are zero.",
  )
  parser.add_argument(
    "--official", required=True, help="official .pth file (or a .npz of its state_dict)"
  )
  parser.add_argument("--out", required=True, help="output directory (like a workdir)")
  parser.add_argument(
    "--config",
    default=None,
    help="optional dan_jax config file (e.g. configs/x4.py:v2) whose "
    "`model` must match the weights; default: read off the weights",
  )
  parser.add_argument(
    "--loops",
    type=int,
    default=None,
    help="alternating iterations to store (default: the official 4)",
  )
  parser.add_argument(
    "--pca",
    default=None,
    help="DCLS only: PCA matrix [k*k, code_len] (.npy, .npz or the official "
    ".pth) for the `code` output; default: zero codes",
  )
  args = parser.parse_args(argv)
  try:
    model_config = None
    if args.config:
      model_config = config_lib.load(args.config).model
    config = convert_file(args.official, args.out, model_config, args.loops, args.pca)
  except (Error, ValueError) as e:  # ValueError: weights the mapping does not know
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {config.version} x{config.scale} checkpoint to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
