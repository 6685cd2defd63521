"""The DAN family (DANv1, DANv2) in Flax linen: Restorers, Estimators, the alternating loop.

Layout is NHWC throughout. Every layer mirrors one layer of the official PyTorch code
(github greatlog/DAN, `dan_arch.py`), so official weights map one to one (`params_from_torch`).

The alternating loop starts from the PCA code of a delta kernel and repeats
`sr = Restorer(lr, stop_gradient(code)); code = Estimator(stop_gradient(sr), lr)`; it is an
`nn.scan` whose parameters are broadcast, so all iterations share one set of weights.

The PCA matrix is a model variable (collection `pca`), so a checkpoint is self-contained.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterator, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dan_jax.errors import ConversionError
from dan_jax.models import spec as spec_lib
from dan_jax.models import torch_weights
from dan_jax.models.layers import _opts
from dan_jax.models.layers import ChannelAttention
from dan_jax.models.layers import Conv2d
from dan_jax.models.layers import leaky_relu
from dan_jax.models.layers import Upsampler
from dan_jax.models.spec import ModelOutput
from dan_jax.models.spec import ModelSpec

Array = jax.Array

VERSIONS = ("DANv1", "DANv2")


# ---------------------------------------------------------------------------------------
# Blocks (the shared layers are in `layers`)
# ---------------------------------------------------------------------------------------


# ---- DANv1 blocks ----


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
    gemm_grad = spec_lib.gemm_grad(c)
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
  ) -> ModelOutput:
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
      return ModelOutput(
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
    return ModelOutput(sr=sr, code=code, kernel=kernel)


# ---------------------------------------------------------------------------------------
# The family contract (models.spec.Family)
# ---------------------------------------------------------------------------------------

DEFAULTS: dict = {}
ARCH_FIELDS = (
  "version",
  "scale",
  "nf",
  "nb",
  "ng",
  "in_nc",
  "loops",
  "kernel_size",
  "code_len",
  "estimator_nf",
  "estimator_nb",
)


def arch_fields(version: str) -> tuple[str, ...]:
  """The fields that make a checkpoint another model (DANv1 has no groups)."""
  return tuple(f for f in ARCH_FIELDS if not (f == "ng" and version == "DANv1"))


def validate(spec: ModelSpec) -> None:
  v1 = spec.version == "DANv1"
  if not v1:
    spec_lib.check_positive(spec, ("ng",))
  spec_lib.refuse_remat(spec)
  if v1 and spec.nf < 16:
    raise ValueError(
      f"model.nf must be >= 16 for DANv1 (channel attention divides by 16), got {spec.nf}"
    )
  if v1 and spec.estimator_nf < 32:
    raise ValueError(
      f"model.estimator_nf must be >= 32 for DANv1 (channel attention over "
      f"estimator_nf/2 channels divides by 16), got {spec.estimator_nf}"
    )


def create(spec: ModelSpec) -> nn.Module:
  return DAN(spec)


def init_params(params: dict, seed: int, spec: ModelSpec) -> dict:
  del seed, spec  # PyTorch's default init everywhere, as the official constructors
  return params


def has_kernel(spec: ModelSpec) -> bool:
  return spec.version == "DANv2"  # DANv1's Estimator predicts the code directly


def kernel_loss(out: ModelOutput, batch: dict) -> Array:
  """L1(kernel, true kernel) for DANv2 (official `cri_pix(kernels[i], real_kernel)`),
  L1(code, true code) for DANv1, whose Estimator predicts the code."""
  if out.kernel is not None:
    return jax.vmap(lambda k: spec_lib.l1(k, batch["kernel"]))(out.kernel)
  return jax.vmap(lambda c: spec_lib.l1(c, batch["code"]))(out.code)


def needs_clean_lr(spec: ModelSpec) -> bool:
  del spec
  return False


def fixed_image_size(spec: ModelSpec) -> bool:
  del spec
  return False


def receptive_fields(spec: ModelSpec) -> tuple[int, int]:
  """(Restorer, Estimator-features) receptive-field radii in LR pixels, rounded up.

  Restorer: 3x3 head, two 3x3 convs per block, 3x3 fusion, then the upsampler's convs
  (the ones after a PixelShuffle count a fraction of an LR pixel); +1 covers the SR-to-LR
  pixel-centre offset. Estimator (up to its global pool): LR head (5x5 in v2, 1x1 in v1)
  and the strided SR head (radius 2 LR pixels), two 3x3 convs per block, a 3x3 tail.
  """
  if spec.version == "DANv2":
    restorer = 1 + 2 * spec.nb * spec.ng + 1 + 2 + 1
    estimator = 2 + 2 * spec.estimator_nb + 1 + 1
  else:
    restorer = 1 + 2 * spec.nb + 1 + 2 + 1
    estimator = math.ceil(4 / spec.scale) + 1 + 2 * spec.estimator_nb + 1 + 1
  return restorer, estimator


def tiling(spec: ModelSpec) -> spec_lib.Tiling:
  """Tiles run the Restorer; the Estimator's features before its global pool are summed
  over the tiles, and its head turns the pool into the next code."""
  step = AlternatingStep(spec)
  v2 = spec.version == "DANv2"
  feature = "tail_conv" if v2 else "out"
  alternate = lambda variables: {"params": variables["params"]["alternate"]}

  def restore(variables, lr, code):
    code = jnp.broadcast_to(code, (lr.shape[0], code.shape[-1]))
    return step.apply(
      alternate(variables), lr, code, method=lambda m, x, c: m.restorer(x, c).astype(jnp.float32)
    )

  def capture(mdl, method_name):
    return (
      method_name == "__call__"
      and mdl.name == feature
      and mdl.parent is not None
      and getattr(mdl.parent, "name", None) == "estimator"
    )

  def features(variables, sr, lr):
    _, state = step.apply(
      alternate(variables),
      sr,
      lr,
      method=lambda m, s, x: m.estimator(s, x),
      capture_intermediates=capture,
    )
    return state["intermediates"]["estimator"][feature]["__call__"][0]

  def head(variables, pooled):
    """Code (and kernel) from the globally pooled features, as the Estimator's tail."""
    pooled = jnp.asarray(pooled, jnp.float32)
    if not v2:
      return pooled, None
    tail = variables["params"]["alternate"]["estimator"]["tail_kernel"]
    logits = pooled @ tail["kernel"][0, 0] + tail["bias"]
    kernel = jax.nn.softmax(logits)
    code = kernel @ variables["pca"]["matrix"]
    k = spec.kernel_size
    return code, kernel.reshape(k, k)

  restorer, estimator = receptive_fields(spec)
  return spec_lib.Tiling(
    restorer_radius=restorer,
    estimator_radius=estimator,
    loops=spec.loops,
    exact=v2,
    approximate_why="" if v2 else "DANv1's channel attention pools over the whole image",
    initial_code=lambda v: delta_code(jnp.asarray(v["pca"]["matrix"]), spec.kernel_size)[None],
    restore=restore,
    features=features,
    head=head,
  )


# ---------------------------------------------------------------------------------------
# Official weights (github greatlog/DAN)
# ---------------------------------------------------------------------------------------

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


def official_config(version: str, **official_options: Any) -> dict:
  """Our model config fields from the official `network_G.setting` YAML options.

  `nf`, `nb`, `ng`, `in_nc`, `upscale`, `input_para`, `kernel_size`, `loop` as in the
  official YAMLs (`estimator_nf`/`estimator_nb` also accepted); missing ones take the
  official class defaults (DAN.__init__ of each version).
  """
  unknown = sorted(set(official_options) - set(_OFFICIAL_TO_OURS) - set(_EXTRA_FIELDS))
  if unknown:
    raise ValueError(
      f"unknown official option(s) {unknown}; known: "
      f"{sorted(_OFFICIAL_TO_OURS) + list(_EXTRA_FIELDS)}"
    )
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
  return cfg


def _conv_pairs(spec: ModelSpec) -> Iterator[tuple[str, tuple[str, ...]]]:
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

  v1 = spec.version == "DANv1"
  if v1:
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

  if v1:
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
_MARKERS = {"DANv1": "Restorer.head.weight", "DANv2": "Restorer.head1.weight"}


def params_from_torch(
  state_dict: Mapping[str, np.ndarray], spec: ModelSpec, pca_matrix: Any = None
) -> dict:
  """Maps an official DAN state_dict (with its `encoder` buffer, the PCA matrix) onto our
  variables; `pca_matrix` must be None (the weights carry theirs)."""
  if pca_matrix is not None:
    raise ConversionError("official DAN weights carry their PCA matrix (the encoder buffer)")
  sd = torch_weights.strip_prefix(state_dict)
  other = "DANv2" if spec.version == "DANv1" else "DANv1"
  if _MARKERS[spec.version] not in sd and _MARKERS[other] in sd:
    raise ConversionError(f"these weights are {other}, but the model config is {spec.version}")
  model = DAN(spec)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros((1, 8, 8, spec.in_nc), np.float32), iterations=1)
  )
  params, used, problems = torch_weights.map_weights(
    sd, shapes["params"], _conv_pairs(spec), " (as HWIO)"
  )
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
  problems += torch_weights.unexpected(sd, used)
  torch_weights.fail(
    problems,
    f"official {spec.version} x{spec.scale} weights do not match the model config "
    f"(nf={spec.nf}, nb={spec.nb}"
    + (f", ng={spec.ng}" if spec.version == "DANv2" else "")
    + f", kernel_size={k}, code_len={code_len})",
  )
  if "init_ker_map" in sd:
    start = delta_code(encoder, k)
    if not np.allclose(sd["init_ker_map"].reshape(-1), start, atol=1e-5):
      raise ConversionError(
        "init_ker_map is not the code of the delta kernel under the "
        "encoder: the checkpoint is inconsistent"
      )
  return {"params": params, "pca": {"matrix": encoder}}


def official_options(state_dict: Mapping[str, np.ndarray]) -> Optional[tuple[str, dict]]:
  """(version, YAML options) read off an official DAN state_dict; None if it is not one."""
  sd = torch_weights.strip_prefix(state_dict)
  if "Restorer.head1.weight" in sd and "Estimator.head_LR.0.weight" in sd:
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
    return None
  if "encoder" not in sd:
    raise ConversionError("the state_dict has no encoder buffer (the PCA matrix)")
  enc = sd["encoder"].reshape(-1, sd["encoder"].shape[-1])
  opts["input_para"] = enc.shape[1]
  opts["kernel_size"] = int(round(enc.shape[0] ** 0.5))
  opts["loop"] = 4  # not stored in the weights: the official test loops
  return version, opts
