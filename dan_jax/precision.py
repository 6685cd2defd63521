"""Numerical precision of matmuls and convolutions: the `--precision` choices.

`precision_scope(name)` is the context every jitted function of dan_jax is traced in;
`PRECISIONS` lists the choices. Imports JAX only inside `precision_scope`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

# name -> (jax default_matmul_precision, compute dtype or None for the model's own).
# 'highest': float32 matmuls and convolutions on every platform (TPUs run 6 bf16 passes,
#   GPUs plain FP32 instead of TF32): the paper protocol's numbers; the CPU computes
#   this anyway.
# 'default': the platform's fastest float32 (one bf16 pass on TPU, TF32 on Ampere+ GPUs).
# 'bfloat16': activations in bfloat16 (params and the loss stay float32), default passes.
PRECISIONS = {"highest": ("highest", None), "default": (None, None), "bfloat16": (None, "bfloat16")}


def add_precision_flag(parser: Any) -> None:
  """`--precision` of the inference command lines (evaluate, infer): one of PRECISIONS."""
  parser.add_argument(
    "--precision",
    default="highest",
    choices=tuple(PRECISIONS),
    help="matmul/convolution precision: highest (default) = float32 on every platform, "
    "the paper protocol's numbers; default = the platform's fast float32 (one bf16 "
    "pass on TPU, TF32 on GPU); bfloat16 = bfloat16 activations",
  )


def check_precision(name: str) -> str:
  """`name` if it is one of PRECISIONS, else ValueError with the choices."""
  if name not in PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
  return name


def compute_dtype(name: str, model_dtype: str = "float32") -> str:
  """The model compute dtype a precision asks for (bfloat16 overrides the model's)."""
  return PRECISIONS[check_precision(name)][1] or model_dtype


@contextlib.contextmanager
def precision_scope(name: str) -> Iterator[None]:
  """Traces (and so compiles) JAX code inside it at the matmul/conv precision `name`.

  jax.default_matmul_precision is read when an op is traced, and is part of jit's cache
  key: a function jitted once and called inside different scopes compiles once per
  precision.
  """
  matmul = PRECISIONS[check_precision(name)][0]
  if matmul is None:
    yield
    return
  import jax  # only when a scope is entered: this module stays importable without JAX

  with jax.default_matmul_precision(matmul):
    yield
