"""DAN networks in Flax linen: DANv1 and DANv2 Restorers/Estimators and the alternating loop.

Layout is NHWC throughout. Every layer mirrors one layer of the official PyTorch code
(github greatlog/DAN, `dan_arch.py`), so official weights map one to one (see `convert`).

The alternating loop starts from the PCA code of a delta kernel and repeats
`sr = Restorer(lr, stop_gradient(code)); code = Estimator(stop_gradient(sr), lr)`; it is an
`nn.scan` whose parameters are broadcast, so all iterations share one set of weights.

The PCA matrix is a model variable (collection `pca`), so a checkpoint is self-contained.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dan_jax.models import layers
from dan_jax.models.layers import _opts

# The shared layers, importable from here too (as before they moved to `layers`).
from dan_jax.models.layers import Conv2d
from dan_jax.models.layers import leaky_relu
from dan_jax.models.layers import Upsampler

Array = jax.Array

VERSIONS = ("DANv1", "DANv2", "DCLS")  # DCLS lives in models/dcls.py
SCALES = (2, 3, 4)


@flax.struct.dataclass
class DANOutput:
  """What one forward pass returns; the leading axis is the alternating iteration.

  Attributes:
    sr: [iterations, B, s*H, s*W, C] super-resolved images, one per iteration.
    code: [iterations, B, code_len] kernel codes estimated at each iteration.
    kernel: [iterations, B, k, k] estimated kernels (DANv2, DCLS); None for DANv1, whose
      Estimator predicts the code directly.
  """

  sr: Array
  code: Array
  kernel: Optional[Array] = None


# ---------------------------------------------------------------------------------------
# Blocks (the shared layers are in `layers`)
# ---------------------------------------------------------------------------------------


# ---- DANv1 blocks ----


class ChannelAttention(nn.Module):
  """CALayer: x * sigmoid(conv(lrelu(conv(mean_hw(x)))))."""

  reduction: int = 16
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nf = x.shape[-1]
    y = jnp.mean(x, axis=(1, 2), keepdims=True)
    y = Conv2d(nf // self.reduction, 1, **_opts(self), name="squeeze")(y)
    y = Conv2d(nf, 1, **_opts(self), name="excite")(leaky_relu(y))
    return x * nn.sigmoid(y)


class CRB(nn.Module):
  """Conditional residual block: f1 += CA(conv(lrelu(conv([f1, f2])))); f2 passes through.

  f2 is a feature map [B, H, W, c], or a vector [B, c] meaning that vector stretched over
  the image (as the official Restorer does with the code), computed without stretching.
  """

  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, f1: Array, f2: Array) -> Array:
    nf1 = f1.shape[-1]
    conv1 = lambda width: Conv2d(
      width, 3, padding=1, dtype=self.dtype, gemm_grad=self.gemm_grad, name="conv1"
    )
    if f2.ndim == 2:  # [B, c]: constant over space (the Restorer's stretched code)
      y = conv1(nf1 + f2.shape[-1])(f1, const=f2)
    else:
      x = jnp.concatenate([f1, f2.astype(f1.dtype)], axis=-1)
      y = conv1(x.shape[-1])(x)
    y = Conv2d(nf1, 3, padding=1, **_opts(self), name="conv2")(leaky_relu(y))
    y = ChannelAttention(**_opts(self), name="attention")(y)
    return f1 + y


class RestorerV1(nn.Module):
  """DANv1 Restorer: CRB blocks conditioned on the code stretched over the LR image."""

  nf: int = 64
  nb: int = 40
  scale: int = 4
  out_nc: int = 3
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, lr: Array, code: Array) -> Array:
    f = Conv2d(self.nf, 3, padding=1, **_opts(self), name="head")(lr)
    for i in range(self.nb):
      f = CRB(**_opts(self), name=f"block{i}")(f, code)
    f = Conv2d(self.nf, 3, padding=1, **_opts(self), name="fusion")(f)
    return Upsampler(self.nf, self.scale, self.out_nc, **_opts(self), name="upsample")(f)


class EstimatorV1(nn.Module):
  """DANv1 Estimator: features of LR and of SR (strided conv), CRB blocks, pooled to a code."""

  nf: int = 64
  nb: int = 5
  scale: int = 4
  code_len: int = 10
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, sr: Array, lr: Array) -> Array:
    lrf = Conv2d(self.nf // 2, 1, **_opts(self), name="head_lr")(lr)
    hrf = Conv2d(self.nf // 2, 9, stride=self.scale, padding=4, **_opts(self), name="head_sr")(sr)
    f = lrf
    for i in range(self.nb):
      f = CRB(**_opts(self), name=f"block{i}")(f, hrf)
    f = Conv2d(self.code_len, 3, padding=1, **_opts(self), name="out")(f)
    return jnp.mean(f.astype(jnp.float32), axis=(1, 2))


# ---- DANv2 blocks ----


class DPCB(nn.Module):
  """Dual-path conditional block: x1 += body1(x1) * body2(x2); x2 += body2(x2)."""

  k1: int = 3
  k2: int = 1
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, x1: Array, x2: Array) -> tuple[Array, Array]:
    nf = x1.shape[-1]
    conv = lambda k, name: Conv2d(nf, k, padding=k // 2, **_opts(self), name=name)
    f1 = conv(self.k1, "body1_conv2")(leaky_relu(conv(self.k1, "body1_conv1")(x1)))
    f2 = conv(self.k2, "body2_conv2")(leaky_relu(conv(self.k2, "body2_conv1")(x2)))
    return x1 + f1 * f2, x2 + f2


class DPCG(nn.Module):
  """A group of DPCBs with the official group 'residual'.

  The official DPCG mutates the list it is given in place, so its `x + body(x)` reads the
  already-updated entries and equals `2 * body(x)`. Pretrained weights depend on it, so we
  reproduce it (as the constant factor it is).
  """

  nb: int
  k1: int = 3
  k2: int = 1
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, x1: Array, x2: Array) -> tuple[Array, Array]:
    for i in range(self.nb):
      x1, x2 = DPCB(self.k1, self.k2, self.dtype, self.gemm_grad, name=f"block{i}")(x1, x2)
    return 2 * x1, 2 * x2


class RestorerV2(nn.Module):
  """DANv2 Restorer: DPCG groups; the code enters as a 1x1 feature map (no stretching)."""

  nf: int = 64
  nb: int = 10
  ng: int = 5
  scale: int = 4
  out_nc: int = 3
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, lr: Array, code: Array) -> Array:
    f1 = Conv2d(self.nf, 3, padding=1, **_opts(self), name="head_lr")(lr)
    f2 = Conv2d(self.nf, 1, **_opts(self), name="head_code")(code[:, None, None, :])
    for g in range(self.ng):
      f1, f2 = DPCG(self.nb, 3, 1, self.dtype, self.gemm_grad, name=f"group{g}")(f1, f2)
    f = Conv2d(self.nf, 3, padding=1, **_opts(self), name="fusion")(f1)
    return Upsampler(self.nf, self.scale, self.out_nc, **_opts(self), name="upsample")(f)


class EstimatorV2(nn.Module):
  """DANv2 Estimator: a DPCG over (LR, SR) features, pooled to a softmax k*k kernel."""

  nf: int = 64
  nb: int = 5
  scale: int = 4
  kernel_size: int = 21
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, sr: Array, lr: Array) -> Array:
    s = self.scale
    lrf = Conv2d(self.nf // 2, 5, padding=2, **_opts(self), name="head_lr")(lr)
    hrf = Conv2d(self.nf // 2, 4 * s + 1, stride=s, padding=2 * s, **_opts(self), name="head_sr")(
      sr
    )
    f, _ = DPCG(self.nb, 3, 3, self.dtype, self.gemm_grad, name="body")(lrf, hrf)
    f = Conv2d(self.nf, 3, padding=1, **_opts(self), name="tail_conv")(f)
    f = jnp.mean(f, axis=(1, 2), keepdims=True)
    logits = Conv2d(self.kernel_size**2, 1, **_opts(self), name="tail_kernel")(f)
    return nn.softmax(logits[:, 0, 0, :].astype(jnp.float32), axis=-1)  # [B, k*k]


# ---------------------------------------------------------------------------------------
# The alternating loop
# ---------------------------------------------------------------------------------------


class AlternatingStep(nn.Module):
  """One DAN iteration: restore with the current code, then re-estimate the code."""

  config: Any  # a ModelSpec

  def setup(self):
    c = self.config
    on_cpu = jax.default_backend() == "cpu"
    if c.conv_backward == "gemm" and not on_cpu:
      # The GEMM gradient is a convolution whose window is the whole activation map:
      # fast with XLA:CPU's dot emitter, pathological on GPU/TPU convolution units.
      raise ValueError(
        f"model.conv_backward = 'gemm' is for the CPU only (backend "
        f"{jax.default_backend()}): use 'auto' or 'xla'"
      )
    gemm_grad = c.conv_backward == "gemm" or (c.conv_backward == "auto" and on_cpu)
    if c.version == "DANv1":
      self.restorer = RestorerV1(c.nf, c.nb, c.scale, c.in_nc, c.dtype, gemm_grad)
      self.estimator = EstimatorV1(
        c.estimator_nf, c.estimator_nb, c.scale, c.code_len, c.dtype, gemm_grad
      )
    else:
      self.restorer = RestorerV2(c.nf, c.nb, c.ng, c.scale, c.in_nc, c.dtype, gemm_grad)
      self.estimator = EstimatorV2(
        c.estimator_nf, c.estimator_nb, c.scale, c.kernel_size, c.dtype, gemm_grad
      )

  def __call__(self, code: Array, lr: Array, pca: Array):
    sr = self.restorer(lr, jax.lax.stop_gradient(code)).astype(jnp.float32)
    est = self.estimator(jax.lax.stop_gradient(sr), lr)
    if self.config.version == "DANv1":
      new_code, kernel = est, None
    else:
      k = self.config.kernel_size
      new_code = est @ pca  # the official PCA product: flattened kernel x encoder
      kernel = est.reshape(est.shape[0], k, k)
    return new_code, (sr, new_code, kernel)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The hashable, validated form of a model config (see `spec_from_config`)."""

  version: str = "DANv2"
  scale: int = 4
  nf: int = 64
  nb: int = 10
  ng: int = 5
  in_nc: int = 3
  loops: int = 4
  kernel_size: int = 21
  code_len: int = 10
  estimator_nf: int = 64
  estimator_nb: int = 5
  scan_unroll: int = 1
  dtype: Any = jnp.float32
  conv_backward: str = "auto"
  input_para: int = 256  # DCLS: length of the Estimator's latent (official input_para)
  reduction: int = 4  # DCLS: channel reduction of the CLS branch and the attention
  remat: str = "none"  # DCLS: rematerialisation in the backward pass (see REMAT_MODES)


# DCLS `remat` modes: what the backward pass recomputes instead of keeping from the forward.
# "none": keep every activation; "groups": keep only each DPCAG group's inputs and recompute
# a group's forward when its gradient is needed; "blocks": the same per DPCAB block.
REMAT_MODES = ("none", "groups", "blocks")

# DCLS defaults for the fields a config leaves out (one pass; the official Estimator has
# 3 residual blocks; rematerialised groups: 0.3x the train-step memory for a few percent of
# its speed, benchmarks/RESULTS.md).
_DCLS_DEFAULTS = {"loops": 1, "estimator_nb": 3, "remat": "groups"}


def delta_code(pca: Array, kernel_size: int) -> Array:
  """PCA code of the delta kernel (a 1 at the centre pixel): the loop's starting code."""
  c = kernel_size // 2
  return pca[c * kernel_size + c]


class DAN(nn.Module):
  """The deep alternating network.

  Call as `model.apply(variables, lr)`; `lr` is [B, H, W, C] float in [0, 1].
  `initial_code` ([B, code_len]) and `iterations` let a caller resume the loop from a
  given code for a given number of iterations; the training step uses this to run the
  first N-1 iterations without gradients and differentiate only the last one.
  """

  spec: ModelSpec

  @nn.compact
  def __call__(
    self, lr: Array, initial_code: Optional[Array] = None, iterations: Optional[int] = None
  ) -> DANOutput:
    s = self.spec
    if lr.ndim != 4 or lr.shape[-1] != s.in_nc:
      raise ValueError(f"lr must be [B, H, W, {s.in_nc}], got shape {lr.shape}")
    pca = self.variable(
      "pca", "matrix", jnp.zeros, (s.kernel_size**2, s.code_len), jnp.float32
    ).value
    lr = lr.astype(jnp.float32)
    if initial_code is None:
      initial_code = jnp.broadcast_to(delta_code(pca, s.kernel_size), (lr.shape[0], s.code_len))
    n = s.loops if iterations is None else iterations
    if n == 1:
      # One iteration (the differentiated last iteration of a train step): called directly,
      # as flax's scan would trace its body twice. Same parameter tree ("alternate/...").
      _, (sr, code, kernel) = AlternatingStep(s, name="alternate")(initial_code, lr, pca)
      return DANOutput(
        sr=sr[None], code=code[None], kernel=None if kernel is None else kernel[None]
      )
    scan = nn.scan(
      AlternatingStep,
      variable_broadcast="params",
      split_rngs={"params": False},
      in_axes=(nn.broadcast, nn.broadcast),
      length=n,
      unroll=max(1, min(s.scan_unroll, n)),
    )
    _, (sr, code, kernel) = scan(s, name="alternate")(initial_code, lr, pca)
    return DANOutput(sr=sr, code=code, kernel=kernel)


# ---------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------


def _get(config: Any, name: str, default: Any) -> Any:
  if isinstance(config, Mapping):
    return config.get(name, default)
  return getattr(config, name, default)


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def spec_from_config(model_config: Any) -> ModelSpec:
  """Validates a model config (ConfigDict, dict or ModelSpec) into a ModelSpec.

  Raises:
    ValueError: naming the field when a value is out of range.
  """
  if isinstance(model_config, ModelSpec):
    return model_config
  fields = {f.name: f.default for f in dataclasses.fields(ModelSpec)}
  known = set(fields) | {"name"}
  keys = set(model_config.keys()) if hasattr(model_config, "keys") else set()
  unknown = sorted(keys - known)
  if unknown:
    raise ValueError(f"unknown model config field(s) {unknown}; known: {sorted(fields)}")
  if _get(model_config, "version", fields["version"]) == "DCLS":
    fields.update(_DCLS_DEFAULTS)
  values = {k: _get(model_config, k, d) for k, d in fields.items()}
  dtype = values["dtype"]
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    values["dtype"] = _DTYPES[dtype]
  spec = ModelSpec(**values)
  if spec.version not in VERSIONS:
    raise ValueError(f"model.version must be one of {VERSIONS}, got {spec.version!r}")
  if spec.scale not in SCALES:
    raise ValueError(f"model.scale must be one of {SCALES}, got {spec.scale!r}")
  for name in (
    "nf",
    "nb",
    "in_nc",
    "loops",
    "kernel_size",
    "code_len",
    "estimator_nf",
    "estimator_nb",
    "scan_unroll",
  ):
    v = getattr(spec, name)
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"model.{name} must be a positive integer, got {v!r}")
  if spec.version == "DANv2" and (not isinstance(spec.ng, (int, np.integer)) or spec.ng < 1):
    raise ValueError(f"model.ng must be a positive integer, got {spec.ng!r}")
  if spec.version == "DCLS":
    _validate_dcls(spec)
  if spec.remat not in REMAT_MODES:
    raise ValueError(f"model.remat must be one of {REMAT_MODES}, got {spec.remat!r}")
  if spec.remat != "none" and spec.version != "DCLS":
    raise ValueError(
      f"model.remat is for DCLS only (version {spec.version!r}), got {spec.remat!r}; use 'none'"
    )
  if spec.conv_backward not in ("auto", "gemm", "xla"):
    raise ValueError(
      f"model.conv_backward must be 'auto', 'gemm' or 'xla', got {spec.conv_backward!r}"
    )
  if spec.kernel_size % 2 == 0:
    raise ValueError(f"model.kernel_size must be odd, got {spec.kernel_size}")
  if spec.version == "DANv1" and spec.nf < 16:
    raise ValueError(
      f"model.nf must be >= 16 for DANv1 (channel attention divides by 16), got {spec.nf}"
    )
  if spec.estimator_nf % 2:
    raise ValueError(f"model.estimator_nf must be even, got {spec.estimator_nf}")
  if spec.version == "DANv1" and spec.estimator_nf < 32:
    raise ValueError(
      f"model.estimator_nf must be >= 32 for DANv1 (channel attention over "
      f"estimator_nf/2 channels divides by 16), got {spec.estimator_nf}"
    )
  return spec


def _validate_dcls(spec: ModelSpec) -> None:
  from dan_jax.models import dcls  # pylint: disable=g-import-not-at-top (dcls imports dan)

  if spec.loops != 1:
    raise ValueError(f"model.loops must be 1 for DCLS (one pass), got {spec.loops!r}")
  if spec.kernel_size not in dcls.FILTER_STRUCTURES:
    raise ValueError(
      f"model.kernel_size must be one of {sorted(dcls.FILTER_STRUCTURES)} "
      f"for DCLS (its filter stacks), got {spec.kernel_size}"
    )
  for name in ("ng", "input_para", "reduction"):
    v = getattr(spec, name)
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"model.{name} must be a positive integer, got {v!r}")
  if spec.nf % spec.reduction or spec.nf // spec.reduction < spec.reduction:
    raise ValueError(
      f"model.nf must be a multiple of model.reduction with nf/reduction >= "
      f"reduction (channel attention), got nf={spec.nf}, "
      f"reduction={spec.reduction}"
    )


def create_model(model_config: Any) -> nn.Module:
  """Builds the module described by `model_config` (see configs/default.py: `model`).

  DANv1/DANv2 give a `DAN`, "DCLS" a `models.dcls.DCLS`; both are called the same way.
  """
  spec = spec_from_config(model_config)
  if spec.version == "DCLS":
    from dan_jax.models import dcls  # pylint: disable=g-import-not-at-top (dcls imports dan)

    return dcls.DCLS(spec)
  return DAN(spec)


def init_variables(model: DAN, rng: Any, pca_matrix: Any) -> dict:
  """Initialises parameters (PyTorch's default init) and installs the PCA matrix.

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
  if s.version == "DCLS":  # the official DCLS constructors re-draw some layers
    from dan_jax.models import dcls  # pylint: disable=g-import-not-at-top (dcls imports dan)

    params = dcls.official_init(params, rng)
  return {"params": params, "pca": {"matrix": pca_matrix}}


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree (shapes or arrays)."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
