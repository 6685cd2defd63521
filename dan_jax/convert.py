"""Official PyTorch DAN and DCLS weights -> dan_jax variables and checkpoints.

DAN: github greatlog/DAN; DCLS: github megvii-research/DCLS-SR (its weights carry no PCA
matrix: `--pca` gives one for the `code` output, else codes are zero).

Library use:
  model_config = model_config_from_official("DANv2", nf=64, nb=10, ng=5, upscale=4, loop=4)
  variables = params_from_torch(state_dict, model_config)   # state_dict: name -> np.ndarray

Command line (needs `pip install torch`, only for reading the .pth pickle; `--official`
may also be a .npz of the state_dict, which needs no PyTorch):
  python -m dan_jax.convert --official DANv2_x4.pth --out DIR [--config configs/x4.py:v2]
writes an orbax checkpoint under DIR that `evaluate`, `infer` and training (as
`init_checkpoint`) load. Without --config the architecture is read off the weights' shapes.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Iterator, Mapping, Optional
import zipfile

import jax
import ml_collections
import numpy as np

from dan_jax import checkpoint as checkpoint_lib
from dan_jax import config as config_lib
from dan_jax import models
from dan_jax.errors import ConversionError
from dan_jax.errors import Error

# Official YAML option -> our model config field.
_OFFICIAL_TO_OURS = {
  "nf": "nf",
  "nb": "nb",
  "ng": "ng",
  "in_nc": "in_nc",
  "upscale": "scale",
  "input_para": "code_len",
  "kernel_size": "kernel_size",
  "loop": "loops",
}
# Sizes the official code fixes in its Estimators (not YAML options); overridable here.
_EXTRA_FIELDS = ("estimator_nf", "estimator_nb")


def model_config_from_official(version: str, **official_options: Any) -> ml_collections.ConfigDict:
  """Our model config from the official `network_G.setting` YAML options.

  Args:
    version: "DANv1" or "DANv2".
    **official_options: `nf`, `nb`, `ng`, `in_nc`, `upscale`, `input_para`, `kernel_size`,
      `loop` as in the official YAMLs (`estimator_nf`/`estimator_nb` also accepted).
      Missing ones take the official defaults.
  Returns:
    A ConfigDict with the fields of `configs/default.py`'s `model`.
  """
  if version not in models.VERSIONS:
    raise ValueError(f"version must be one of {models.VERSIONS}, got {version!r}")
  unknown = sorted(set(official_options) - set(_OFFICIAL_TO_OURS) - set(_EXTRA_FIELDS))
  if unknown:
    raise ValueError(
      f"unknown official option(s) {unknown}; known: "
      f"{sorted(_OFFICIAL_TO_OURS) + list(_EXTRA_FIELDS)}"
    )
  # Official class defaults (DAN.__init__ of each version).
  cfg = dict(
    version=version,
    scale=4,
    nf=64,
    nb=16,
    ng=5,
    in_nc=3,
    loops=8,
    kernel_size=21,
    code_len=10,
    estimator_nf=64,
    estimator_nb=5,
  )
  for name, value in official_options.items():
    cfg[_OFFICIAL_TO_OURS.get(name, name)] = value
  if version == "DANv1" and cfg["in_nc"] != 3:
    raise ValueError("DANv1 has no in_nc option: its networks take 3 channels")
  config = ml_collections.ConfigDict(cfg)
  models.spec_from_config(config)  # validates
  return config


def _conv_pairs(spec: models.ModelSpec) -> Iterator[tuple[str, tuple[str, ...]]]:
  """(official module name, our parameter path) for every convolution of the model."""
  r, e = ("alternate", "restorer"), ("alternate", "estimator")

  def crb(prefix, path):
    yield f"{prefix}.body.0", path + ("conv1",)
    yield f"{prefix}.body.2", path + ("conv2",)
    yield f"{prefix}.body.3.body.0", path + ("attention", "squeeze")
    yield f"{prefix}.body.3.body.2", path + ("attention", "excite")

  def dpcb(prefix, path):
    for a in (1, 2):
      for i, j in ((0, 1), (2, 2)):
        yield f"{prefix}.body{a}.{i}", path + (f"body{a}_conv{j}",)

  if spec.version == "DANv1":
    yield "Restorer.head", r + ("head",)
    for i in range(spec.nb):
      yield from crb(f"Restorer.body.{i}", r + (f"block{i}",))
  else:
    yield "Restorer.head1", r + ("head_lr",)
    yield "Restorer.head2", r + ("head_code",)
    for g in range(spec.ng):
      for b in range(spec.nb):
        yield from dpcb(f"Restorer.body.{g}.body.{b}", r + (f"group{g}", f"block{b}"))
  yield "Restorer.fusion", r + ("fusion",)
  up = ["conv0", "conv1", "out"] if spec.scale == 4 else ["conv0", "out"]
  for i, name in enumerate(up):
    yield f"Restorer.upscale.{2 * i}", r + ("upsample", name)

  if spec.version == "DANv1":
    yield "Estimator.head_LR", e + ("head_lr",)
    yield "Estimator.head_HR", e + ("head_sr",)
    for i in range(spec.estimator_nb):
      yield from crb(f"Estimator.body.{i}", e + (f"block{i}",))
    yield "Estimator.out", e + ("out",)
  else:
    yield "Estimator.head_LR.0", e + ("head_lr",)
    yield "Estimator.head_HR.0", e + ("head_sr",)
    for b in range(spec.estimator_nb):
      yield from dpcb(f"Estimator.body.body.{b}", e + ("body", f"block{b}"))
    yield "Estimator.tail.0", e + ("tail_conv",)
    yield "Estimator.tail.2", e + ("tail_kernel",)


_BUFFERS = ("encoder", "init_kernel", "init_ker_map")


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  out = {}
  for k, v in state_dict.items():
    k = k[len("module.") :] if k.startswith("module.") else k
    out[k] = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
  return out


def _map_weights(
  sd: dict[str, np.ndarray],
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


def _unexpected(sd: dict[str, np.ndarray], used: set[str]) -> list[str]:
  """Problems for official keys nothing used: layers the config lacks (e.g. more blocks)
  mean the config is wrong."""
  unexpected = sorted(set(sd) - used)
  problems = [f"unexpected {u}" for u in unexpected[:10]]
  if len(unexpected) > 10:
    problems.append(f"... and {len(unexpected) - 10} more unexpected entries")
  return problems


def params_from_torch(state_dict: Mapping[str, Any], model_config: Any) -> dict:
  """Maps an official DAN state_dict onto our variables.

  Args:
    state_dict: official parameter and buffer names (optionally `module.`-prefixed) to
      arrays (numpy or torch tensors); must include the `encoder` buffer (PCA matrix).
    model_config: our model config (e.g. from `model_config_from_official`).
  Returns:
    {'params': ..., 'pca': {'matrix': [k*k, code_len]}} ready for `model.apply`.
  Raises:
    ConversionError: naming missing, unexpected or mis-shaped entries.
  """
  spec = models.spec_from_config(model_config)
  sd = _strip_prefix(state_dict)
  other = "DANv2" if spec.version == "DANv1" else "DANv1"
  marker = {"DANv1": "Restorer.head.weight", "DANv2": "Restorer.head1.weight"}
  if marker[spec.version] not in sd and marker[other] in sd:
    raise ConversionError(f"these weights are {other}, but the model config is {spec.version}")
  model = models.DAN(spec)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros((1, 8, 8, spec.in_nc), np.float32), iterations=1)
  )
  params, used, problems = _map_weights(sd, shapes["params"], _conv_pairs(spec), " (as HWIO)")
  k, code_len = spec.kernel_size, spec.code_len
  if "encoder" not in sd:
    problems.append("missing encoder (the PCA matrix buffer)")
  else:
    encoder = sd["encoder"].astype(np.float32).reshape(-1, sd["encoder"].shape[-1])
    if encoder.shape != (k * k, code_len):
      problems.append(
        f"encoder: shape {encoder.shape} does not fit kernel_size {k} and "
        f"code_len {code_len}, which need {(k * k, code_len)}"
      )
  used.update(b for b in _BUFFERS if b in sd)
  problems += _unexpected(sd, used)
  if problems:
    raise ConversionError(
      f"official {spec.version} x{spec.scale} weights do not match the model config "
      f"(nf={spec.nf}, nb={spec.nb}"
      + (f", ng={spec.ng}" if spec.version == "DANv2" else "")
      + f", kernel_size={k}, code_len={code_len}): "
      + "; ".join(problems[:12])
    )
  if "init_ker_map" in sd:
    start = models.delta_code(encoder, k)
    if not np.allclose(sd["init_ker_map"].reshape(-1), start, atol=1e-5):
      raise ConversionError(
        "init_ker_map is not the code of the delta kernel under the "
        "encoder: the checkpoint is inconsistent"
      )
  return {"params": params, "pca": {"matrix": encoder}}


def infer_official_options(state_dict: Mapping[str, Any]) -> tuple[str, dict]:
  """Reads version and YAML options off an official state_dict's names and shapes."""
  sd = _strip_prefix(state_dict)
  if "Restorer.head1.weight" in sd:
    version = "DANv2"
    nf = sd["Restorer.head1.weight"].shape[0]
    groups = {int(m.group(1)) for k in sd if (m := re.match(r"Restorer\.body\.(\d+)\.", k))}
    blocks = {
      int(m.group(1)) for k in sd if (m := re.match(r"Restorer\.body\.0\.body\.(\d+)\.", k))
    }
    est_blocks = {
      int(m.group(1)) for k in sd if (m := re.match(r"Estimator\.body\.body\.(\d+)\.", k))
    }
    opts = dict(
      nf=nf,
      nb=len(blocks),
      ng=len(groups),
      in_nc=sd["Restorer.head1.weight"].shape[1],
      estimator_nf=2 * sd["Estimator.head_LR.0.weight"].shape[0],
      estimator_nb=len(est_blocks),
    )
    head_sr = sd["Estimator.head_HR.0.weight"].shape[-1]  # 4 * scale + 1
    opts["upscale"] = (head_sr - 1) // 4
  elif "Restorer.head.weight" in sd:
    version = "DANv1"
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"Restorer\.body\.(\d+)\.", k))}
    est_blocks = {int(m.group(1)) for k in sd if (m := re.match(r"Estimator\.body\.(\d+)\.", k))}
    opts = dict(
      nf=sd["Restorer.head.weight"].shape[0],
      nb=len(blocks),
      estimator_nf=2 * sd["Estimator.head_LR.weight"].shape[0],
      estimator_nb=len(est_blocks),
    )
    # The upsampler's first conv has nf * scale**2 outputs (x2, x3) or nf * 4 (x4, twice).
    ratio = sd["Restorer.upscale.0.weight"].shape[0] // opts["nf"]
    opts["upscale"] = 4 if "Restorer.upscale.4.weight" in sd else int(round(ratio**0.5))
  else:
    raise ConversionError(
      "this is not an official DAN state_dict (no Restorer.head or Restorer.head1 weights)"
    )
  if "encoder" not in sd:
    raise ConversionError("the state_dict has no encoder buffer (the PCA matrix)")
  enc = sd["encoder"].reshape(-1, sd["encoder"].shape[-1])
  opts["input_para"] = enc.shape[1]
  opts["kernel_size"] = int(round(enc.shape[0] ** 0.5))
  return version, opts


# ---------------------------------------------------------------------------------------
# DCLS (github megvii-research/DCLS-SR)
# ---------------------------------------------------------------------------------------


def _dcls_pairs(spec: models.ModelSpec) -> Iterator[tuple[str, tuple[str, ...]]]:
  """(official module name, our parameter path) for every conv/linear layer of DCLS."""
  r, e = ("restorer",), ("estimator",)
  yield "Estimator.head.0", e + ("head",)
  for i in range(spec.estimator_nb):
    for j in (1, 2):
      yield f"Estimator.body.0.{i}.conv{j}", e + (f"block{i}", f"conv{j}")
  yield "Estimator.tail.0", e + ("tail_conv1",)
  yield "Estimator.tail.2", e + ("tail_conv2",)
  yield "Estimator.tail.4", e + ("tail_latent",)
  for i in range(len(models.FILTER_STRUCTURES[spec.kernel_size])):
    yield f"Estimator.dec.{i}", e + (f"dec{i}",)
  yield "Restorer.conv_first", r + ("conv_first",)
  for i in range(3):
    for j in (1, 2):
      yield f"Restorer.feature_block.{i}.conv{j}", r + (f"feature{i}", f"conv{j}")
  yield "Restorer.head1", r + ("head1",)
  cls = "Restorer.head2"
  yield f"{cls}.reduce_feature", r + ("cls", "reduce")
  for i in range(3):
    yield f"{cls}.grad_filter.{2 * i}", r + ("cls", f"grad_conv{i}")
  yield f"{cls}.grad_filter.6", r + ("cls", "grad_out")
  yield f"{cls}.expand_feature", r + ("cls", "expand")
  for g in range(spec.ng):
    for b in range(spec.nb):
      t, path = f"Restorer.body.{g}.body.{b}", r + (f"group{g}", f"block{b}")
      for a in (1, 2):
        yield f"{t}.body{a}.0", path + (f"body{a}_conv1",)
        yield f"{t}.body{a}.2", path + (f"body{a}_conv2",)
      yield f"{t}.CA_body1.1", path + ("ca1_conv",)
      for prefix, ours in (
        (f"{t}.CA_body1.2", "ca1_attention"),
        (f"{t}.CA_body2", "ca2_attention"),
      ):
        yield f"{prefix}.conv_du.0", path + (ours, "squeeze")
        yield f"{prefix}.conv_du.2", path + (ours, "excite")
  yield "Restorer.fusion", r + ("fusion",)
  up = ["conv0", "conv1", "out"] if spec.scale == 4 else ["conv0", "out"]
  for i, name in enumerate(up):
    yield f"Restorer.upscale.{2 * i}", r + ("upsample", name)


def dcls_params_from_torch(
  state_dict: Mapping[str, Any], model_config: Any, pca_matrix: Optional[Any] = None
) -> dict:
  """Maps an official DCLS state_dict onto our variables.

  Args:
    state_dict: official names (optionally `module.`-prefixed) to numpy/torch arrays.
    model_config: our model config with version "DCLS".
    pca_matrix: [k*k, code_len] PCA matrix for the `code` output (official DCLS weights
      carry none); default zeros, so `code` is zero.
  Returns:
    {'params': ..., 'pca': {'matrix': ...}} ready for `model.apply`.
  Raises:
    ConversionError: naming missing, unexpected or mis-shaped entries.
  """
  spec = models.spec_from_config(model_config)
  sd = _strip_prefix(state_dict)
  model = models.create_model(spec)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros((1, 8, 8, spec.in_nc), np.float32))
  )
  params, used, problems = _map_weights(sd, shapes["params"], _dcls_pairs(spec))
  problems += _unexpected(sd, used)
  k = spec.kernel_size
  if pca_matrix is None:
    pca_matrix = np.zeros((k * k, spec.code_len), np.float32)
  pca_matrix = np.asarray(pca_matrix, np.float32)
  if pca_matrix.shape != (k * k, spec.code_len):
    problems.append(f"pca matrix: shape {pca_matrix.shape}, needs {(k * k, spec.code_len)}")
  if problems:
    raise ConversionError(
      f"official DCLS x{spec.scale} weights do not match the model config (nf={spec.nf}, "
      f"nb={spec.nb}, ng={spec.ng}, kernel_size={k}, input_para={spec.input_para}): "
      + "; ".join(problems[:12])
    )
  return {"params": params, "pca": {"matrix": pca_matrix}}


def infer_dcls_config(state_dict: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Our DCLS model config read off an official DCLS state_dict's names and shapes."""
  sd = _strip_prefix(state_dict)
  need = (
    "Restorer.conv_first.weight",
    "Restorer.head1.weight",
    "Estimator.head.0.weight",
    "Estimator.tail.4.weight",
    "Restorer.upscale.0.weight",
  )
  missing = [n for n in need if n not in sd]
  if missing:
    raise ConversionError(f"this is not an official DCLS state_dict (missing {missing[0]})")
  count = lambda pattern: len({m.group(1) for n in sd if (m := re.match(pattern, n))})
  nf, in_nc = sd["Restorer.conv_first.weight"].shape[:2]
  sizes = []
  for i in range(count(r"Estimator\.dec\.(\d+)\.")):
    w = sd[f"Estimator.dec.{i}.weight"]
    last = i == count(r"Estimator\.dec\.(\d+)\.") - 1
    channels = (in_nc if i == 0 else 16) * (in_nc if last else 16)
    sizes.append(int(round((w.shape[0] / channels) ** 0.5)))
  by_structure = {v: k for k, v in models.FILTER_STRUCTURES.items()}
  if tuple(sizes) not in by_structure:
    raise ConversionError(f"unknown DCLS filter structure {sizes}; known: {sorted(by_structure)}")
  ratio = sd["Restorer.upscale.0.weight"].shape[0] // nf
  cfg = dict(
    version="DCLS",
    nf=int(nf),
    in_nc=int(in_nc),
    nb=count(r"Restorer\.body\.0\.body\.(\d+)\."),
    ng=count(r"Restorer\.body\.(\d+)\."),
    reduction=int(nf // sd["Restorer.head1.weight"].shape[0]),
    input_para=int(sd["Estimator.tail.4.weight"].shape[0]),
    kernel_size=by_structure[tuple(sizes)],
    estimator_nf=int(sd["Estimator.head.0.weight"].shape[0]),
    estimator_nb=count(r"Estimator\.body\.0\.(\d+)\."),
    loops=1,
    code_len=10,
    scale=4 if "Restorer.upscale.4.weight" in sd else int(round(ratio**0.5)),
  )
  config = ml_collections.ConfigDict(cfg)
  models.spec_from_config(config)  # validates
  return config


def _is_dcls(state_dict: Mapping[str, Any]) -> bool:
  return any(k.split("module.")[-1].startswith("Restorer.head2.grad_filter") for k in state_dict)


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
        return _strip_prefix({k: npz[k] for k in npz.files})
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
  return _strip_prefix(obj)


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
  if _is_dcls(sd):
    model_config = model_config or infer_dcls_config(sd)
    pca = None if pca_path is None else _load_pca(pca_path)
    checkpoint_lib.save_model(out_dir, dcls_params_from_torch(sd, model_config, pca), model_config)
    return model_config
  if model_config is None:
    version, opts = infer_official_options(sd)
    opts["loop"] = 4
    model_config = model_config_from_official(version, **opts)
  if loops:
    model_config = ml_collections.ConfigDict(model_config.to_dict())
    model_config.loops = loops
  variables = params_from_torch(sd, model_config)
  checkpoint_lib.save_model(out_dir, variables, model_config)
  return model_config


def main(argv: Optional[list[str]] = None) -> int:
  """The command line; returns the exit status."""
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(
    prog="python -m dan_jax.convert",
    description="Convert official PyTorch DAN or DCLS weights into a dan_jax checkpoint.",
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
