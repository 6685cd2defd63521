"""DCLS-SR (Deep Constrained Least Squares, CVPR 2022) in Flax linen, NHWC: the DCLS family.

One pass: the Estimator maps the LR image to a k x k kernel, the Restorer deconvolves LR
features with it (stop-gradiented) in the Fourier domain and upsamples. Every layer mirrors
one of the official code (github megvii-research/DCLS-SR), so official weights map one to
one (`params_from_torch`); numerical quirks trained weights depend on are reproduced where
they happen. Output: a `ModelOutput` of one "iteration": `sr` clamped to [0, 1], `kernel`
sum-normalised (may have negative taps), `code` = `kernel.flatten() @ pca`.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dan_jax.errors import ConversionError
from dan_jax.models import dft
from dan_jax.models import spec as spec_lib
from dan_jax.models import torch_weights
from dan_jax.models.layers import _opts
from dan_jax.models.layers import ChannelAttention
from dan_jax.models.layers import Conv2d
from dan_jax.models.layers import ResBlock
from dan_jax.models.layers import torch_uniform
from dan_jax.models.layers import Upsampler
from dan_jax.models.spec import ModelOutput
from dan_jax.models.spec import ModelSpec

Array = jax.Array

# The official per-kernel-size filter stacks composed into the estimated kernel
# (`DCLS.__init__`): 21 for isotropic kernels (setting 1, every scale), 11 for anisotropic
# x2 and 31 for anisotropic x4 (setting 2). Their sizes compose to k: sum(f - 1) = k - 1.
FILTER_STRUCTURES = {21: (11, 7, 5, 1), 11: (7, 3, 3, 1), 31: (11, 9, 7, 5, 3)}
# Channels between the composed filters (official `Estimator.G_chan`).
G_CHAN = 16


def lrelu(x: Array) -> Array:
  """DCLS uses LeakyReLU(0.1) everywhere (DAN uses 0.2)."""
  return nn.leaky_relu(x, negative_slope=0.1)


class Linear(nn.Module):
  """torch.nn.Linear with PyTorch's default init: params kernel [in, out], bias [out]."""

  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = torch_uniform(x.shape[-1])
    kernel = self.param("kernel", init, (x.shape[-1], self.features))
    bias = self.param("bias", init, (self.features,))
    return x.astype(jnp.float32) @ kernel + bias


def adaptive_pool_bins(n: int, out: int) -> list[tuple[int, int]]:
  """The [lo, hi) bins of PyTorch's AdaptiveAvgPool along an axis of `n` into `out`.

  Bin i covers [floor(i*n/out), ceil((i+1)*n/out)), so bins overlap when `out` does not
  divide `n` (e.g. n=4, out=3: [0,2), [1,3), [2,4)).
  """
  return [((i * n) // out, -((-(i + 1) * n) // out)) for i in range(out)]


def adaptive_avg_pool(x: Array, out: int) -> Array:
  """PyTorch's AdaptiveAvgPool2d(out) of x [B, H, W, C] -> [B, out, out, C].

  Means of static slices, not products with averaging matrices: a [*, 3] dot is a shape
  XLA:GPU's compile-only Triton tiling refuses ("Couldn't find output tile sizes").
  """
  for axis in (1, 2):  # rows, then columns
    bins = adaptive_pool_bins(x.shape[axis], out)
    x = jnp.stack([jax.lax.slice_in_dim(x, lo, hi, axis=axis).mean(axis) for lo, hi in bins], axis)
  return x


def psf2otf(psf: Array, height: int, width: int) -> tuple[Array, Array]:
  """Half-spectrum OTF (real, imaginary), each [..., height, width//2+1], of k x k
  kernels `psf` [..., k, k].

  The official `convert_psf2otf`: zero-pad to the image size and circularly shift the
  kernel's centre tap to (0, 0), then FFT (here one DFT with the pad and shift folded in).
  """
  return dft.rfft2(psf, height, width, shift=psf.shape[-1] // 2)


def _replicate_pad(x: Array, k: int) -> Array:
  """x [B, H, W, C] padded by k pixels on each side with its edge values.

  `jnp.pad(mode="edge")` gives the same array; written with broadcasts because jax2onnx
  mis-sizes the concatenation it lowers that one to (onnxruntime refuses the graph).
  """
  b, h, w, c = x.shape
  x = jnp.concatenate(
    [jnp.broadcast_to(x[:, :1], (b, k, w, c)), x, jnp.broadcast_to(x[:, -1:], (b, k, w, c))], axis=1
  )
  return jnp.concatenate(
    [
      jnp.broadcast_to(x[:, :, :1], (b, h + 2 * k, k, c)),
      x,
      jnp.broadcast_to(x[:, :, -1:], (b, h + 2 * k, k, c)),
    ],
    axis=2,
  )


def cls_deconvolution(x: Array, kernel: Array, smooth: Array) -> Array:
  """Constrained least squares deconvolution of each channel of x, as the official CLS.

  Replicate-pads x by k, applies conj(K) / (|K|^2 + |P|^2) in the Fourier domain (no
  epsilon, as official: |K(0)| = 1 keeps DC finite) and crops the padding off. The
  official `torch.rfft(x, 3, onesided=False)` is an FFT over (channel=1, H, W), i.e. a 2-D
  FFT per channel; the real DFT here is the same transform (`dft`: matrix products, which
  shard over the batch where an FFT would be gathered onto every device).

  Args:
    x: [B, H, W, c] features.
    kernel: [B, k, k] blur kernel.
    smooth: [B, 3, 3, c] smoothness filter per channel.
  Returns:
    [B, H, W, c] float32.
  """
  k = kernel.shape[-1]
  xp = _replicate_pad(x.astype(jnp.float32), k)
  hp, wp = xp.shape[1:3]
  feats = dft.rfft2(jnp.transpose(xp, (0, 3, 1, 2)))  # [B, c, hp, wp//2+1] (re, im)
  k_re, k_im = (a[:, None] for a in psf2otf(kernel.astype(jnp.float32), hp, wp))
  p_re, p_im = psf2otf(jnp.transpose(smooth.astype(jnp.float32), (0, 3, 1, 2)), hp, wp)
  denom = k_re**2 + k_im**2 + p_re**2 + p_im**2
  re, im = dft.conj_times((k_re, k_im), feats)
  out = dft.irfft2(re / denom, im / denom, hp, wp)
  return jnp.transpose(out, (0, 2, 3, 1))[:, k:-k, k:-k]


class CLS(nn.Module):
  """The CLS branch: reduce, deconvolve with the kernel and a learned smoothness filter,
  expand back to nf channels."""

  reduction: int = 4
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, x: Array, kernel: Array) -> Array:
    nf = x.shape[-1]
    c = nf // self.reduction
    f = Conv2d(c, 1, **_opts(self), name="reduce")(x)
    g = f
    for i in range(3):  # three valid 3x3 convolutions: H-6 x W-6
      g = Conv2d(c, 3, **_opts(self), name=f"grad_conv{i}")(lrelu(g) if i else g)
    g = g.astype(jnp.float32)
    g = adaptive_avg_pool(g, 3)
    g = jnp.exp(Conv2d(c, 1, name="grad_out")(g).astype(jnp.float32))
    smooth = g - jnp.mean(g, axis=(1, 2), keepdims=True)  # zero-mean: |P(0)| = 0
    clear = cls_deconvolution(f, kernel, smooth)
    return Conv2d(nf, 1, **_opts(self), name="expand")(clear.astype(self.dtype))


def _tied_to(tree: Any, cotangent: Any) -> Any:
  """`tree` plus a zero that XLA cannot prove is zero: it reads one element of `cotangent`.

  Values are unchanged (the zero is exact, also for a non-finite element), but to the
  compiler they are new values available only once the backward pass has produced the
  cotangent, so a forward recomputed from them is neither merged with the original
  forward (CSE) nor scheduled before it is needed.
  """
  s = jax.tree_util.tree_leaves(cotangent)[0].reshape(-1)[0].astype(jnp.float32)
  zero = jnp.where(jnp.isfinite(s), s * 0.0, 0.0)
  return jax.tree_util.tree_map(lambda a: a + zero.astype(a.dtype), tree)


def rematerialised(module: nn.Module, *args: Array) -> Any:
  """`module(*args)`, keeping only `args` and the module's params for the backward pass,
  which recomputes the module's forward (same values and parameter tree as `module(*args)`).

  flax's `nn.remat` (jax.checkpoint) does not save memory on XLA:CPU: its optimization
  barriers are expanded before common-subexpression elimination, which merges the
  recomputed forward back into the original one (the compiled step kept every activation,
  the same 1951 MiB of temporaries as without it). Here the recomputation reads inputs tied
  to the cotangent (`_tied_to`), which no compiler pass can merge or hoist.
  """
  pure = module.clone(parent=None)

  def apply(mdl, *xs):
    return mdl(*xs)

  def forward(mdl, *xs):
    return mdl(*xs), (mdl.variables["params"], xs)

  def backward(residuals, g):
    params, xs = _tied_to(residuals, g)
    _, vjp = jax.vjp(lambda p, *a: pure.apply({"params": p}, *a), params, *xs)
    params_g, *xs_g = vjp(g)
    return ({"params": params_g}, *xs_g)

  return nn.custom_vjp(apply, forward, backward)(module, *args)


def recomputed(fn: Any) -> Any:
  """`fn(params, *xs)` for pure functions, with `rematerialised`'s backward pass: only
  `params` and `xs` are kept, and the forward is recomputed from them tied to the
  cotangent (`_tied_to`)."""

  @jax.custom_vjp
  def wrapped(params, *xs):
    return fn(params, *xs)

  def forward(params, *xs):
    return fn(params, *xs), (params, xs)

  def backward(residuals, g):
    params, xs = _tied_to(residuals, g)
    return jax.vjp(fn, params, *xs)[1](g)

  wrapped.defvjp(forward, backward)
  return wrapped


class DPCAB(nn.Module):
  """Dual-path channel-attention block on (x0 [nf], x1 [nf2])."""

  reduction: int = 4
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, x0: Array, x1: Array) -> tuple[Array, Array]:
    nf0, nf1 = x0.shape[-1], x1.shape[-1]
    conv = lambda n, name: Conv2d(n, 3, padding=1, **_opts(self), name=name)
    f0 = conv(nf0, "body1_conv2")(lrelu(conv(nf0, "body1_conv1")(x0)))
    f1 = conv(nf1, "body2_conv2")(lrelu(conv(nf1, "body2_conv1")(x1)))
    ca0 = conv(nf0, "ca1_conv")(lrelu(jnp.concatenate([f0, f1], axis=-1)))
    attention = lambda name: ChannelAttention(self.reduction, 0.0, **_opts(self), name=name)
    ca0 = attention("ca1_attention")(ca0)  # DCLS's CALayer: ReLU (slope 0)
    ca1 = attention("ca2_attention")(f1)
    return x0 + ca0, x1 + ca1


class DPCAG(nn.Module):
  """A group of DPCABs with the official group 'residual'.

  Like DANv2's DPCG, the official DPCAG's blocks update the input list in place, so its
  `x + body(x)` equals `2 * body(x)`; trained weights depend on it.
  """

  nb: int
  reduction: int = 4
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d
  remat_blocks: bool = False  # recompute each block's forward in the backward pass

  @nn.compact
  def __call__(self, x0: Array, x1: Array) -> tuple[Array, Array]:
    for i in range(self.nb):
      block = DPCAB(self.reduction, **_opts(self), name=f"block{i}")
      x0, x1 = rematerialised(block, x0, x1) if self.remat_blocks else block(x0, x1)
    return 2 * x0, 2 * x1


class Estimator(nn.Module):
  """DCLS Estimator: conv head, residual blocks, a pooled latent, and linear layers that
  emit a stack of filters composed into one k x k kernel, sum-normalised.

  Returns [B, k, k]; not softmaxed, so taps can be negative (as official).
  """

  nf: int = 64
  nb: int = 3
  input_para: int = 256
  kernel_size: int = 21
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, lr: Array) -> Array:
    b, c = lr.shape[0], lr.shape[-1]
    f1 = Conv2d(self.nf, 7, padding=3, **_opts(self), name="head")(lr)
    f = f1
    for i in range(self.nb):
      f = ResBlock(**_opts(self), name=f"block{i}")(f)
    f = f + f1
    f = Conv2d(self.nf, 3, **_opts(self), name="tail_conv1")(f)
    f = Conv2d(self.nf, 3, **_opts(self), name="tail_conv2")(lrelu(f))
    f = jnp.mean(f.astype(jnp.float32), axis=(1, 2), keepdims=True)
    latent = Conv2d(self.input_para, 1, name="tail_latent")(f)[:, 0, 0]  # [B, para]
    structure = FILTER_STRUCTURES[self.kernel_size]
    filters = []
    for i, size in enumerate(structure):
      c_in = c if i == 0 else G_CHAN
      c_out = c if i == len(structure) - 1 else G_CHAN
      w = Linear(c_out * c_in * size * size, name=f"dec{i}")(latent)
      filters.append(w.reshape(b, c_out, c_in, size, size))  # OIHW per image
    return jax.vmap(self._compose)(filters)

  def _compose(self, filters: Sequence[Array]) -> Array:
    """The official `calc_curr_k`: the kernel the filter stack imitates, for one image."""
    k = self.kernel_size
    x = jnp.ones((1, filters[0].shape[1], 1, 1), jnp.float32)  # a delta per channel
    for i, w in enumerate(filters):
      pad = k - 1 if i == 0 else 0
      # A convolution whose weights differ per image becomes, under vmap, a grouped
      # convolution that XLA's SPMD partitioner mis-shards over a batch-sharded mesh
      # ("output feature dimension not divisible by feature_group_count"). Patches (a
      # convolution with fixed weights) and a dot with the image's weights are the same sum.
      s = w.shape[-1]
      patches = jax.lax.conv_general_dilated_patches(
        x,
        (s, s),
        (1, 1),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        precision=jax.lax.Precision.HIGHEST,
      )  # [1, Cin*s*s, H, W], (c, kh, kw) order
      x = jnp.einsum(
        "npyx,op->noyx", patches, w.reshape(w.shape[0], -1), precision=jax.lax.Precision.HIGHEST
      )
    kernel = jnp.mean(x[0, :, ::-1, ::-1], axis=0)  # flip, then average the channels
    return kernel / jnp.sum(kernel)


class Restorer(nn.Module):
  """DCLS Restorer: features, the CLS branch, DPCAGs, fusion, pixel-shuffle upsampling."""

  nf: int = 64
  nb: int = 10
  ng: int = 5
  scale: int = 4
  out_nc: int = 3
  reduction: int = 4
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d
  remat: str = "none"  # see ModelSpec.remat
  # Run the ng x nb identical DPCABs as two nested `lax.scan`s over their stacked parameters
  # (the parameter tree is unchanged): XLA compiles one block body instead of ng * nb
  # blocks (forward, recomputed forward and backward each). Off by default: on XLA:CPU it
  # cut the x4 train step's tracing (16 -> 7 s) and convolutions (1075 -> 95) but not its
  # compile, ~95% of whose 10k kernels are then the per-parameter optimizer update
  # (benchmarks/RESULTS.md). Needs the `gemm_grad` convolution backward: XLA's own kernel
  # gradient inside a loop body runs on a generic emitter (~20x slower).
  scan: bool = False

  @nn.compact
  def __call__(self, lr: Array, kernel: Array) -> Array:
    nf2 = self.nf // self.reduction
    f = Conv2d(self.nf, 3, padding=1, **_opts(self), name="conv_first")(lr)
    feature = f
    for i in range(3):
      feature = ResBlock(**_opts(self), name=f"feature{i}")(feature)
    x1 = Conv2d(nf2, 3, padding=1, **_opts(self), name="head1")(feature)
    x0 = CLS(self.reduction, **_opts(self), name="cls")(feature, kernel)
    if self.scan and not self.is_initializing():
      x0, x1 = self._scanned_groups(x0, x1)
    else:
      for g in range(self.ng):
        group = DPCAG(
          self.nb,
          self.reduction,
          **_opts(self),
          remat_blocks=self.remat == "blocks",
          name=f"group{g}",
        )
        x0, x1 = rematerialised(group, x0, x1) if self.remat == "groups" else group(x0, x1)
    # The official concatenates (head1 path, CLS path) in this order.
    f = (
      Conv2d(self.nf, 3, padding=1, **_opts(self), name="fusion")(
        jnp.concatenate([x1, x0], axis=-1)
      )
      + f
    )
    out = Upsampler(self.nf, self.scale, self.out_nc, **_opts(self), name="upsample")(f)
    return jnp.clip(out.astype(jnp.float32), 0.0, 1.0)

  def _scanned_groups(self, x0: Array, x1: Array) -> tuple[Array, Array]:
    """The DPCAGs `group{g}` as a scan over groups of a scan over their blocks, reading
    the unrolled modules' parameters (`group{g}/block{b}`), stacked [ng, nb, ...].

    Same values as the unrolled loop, and the same `remat` modes: "groups" recomputes a
    group body from its inputs, "blocks" a block's (`recomputed`).
    """
    params = self.variables["params"]
    per_block = [params[f"group{g}"][f"block{b}"] for g in range(self.ng) for b in range(self.nb)]
    stacked = jax.tree_util.tree_map(
      lambda *a: jnp.stack(a).reshape(self.ng, self.nb, *a[0].shape), *per_block
    )
    block = DPCAB(self.reduction, **_opts(self), parent=None)

    def block_fn(p, x0, x1):
      return block.apply({"params": p}, x0, x1)

    if self.remat == "blocks":
      block_fn = recomputed(block_fn)

    def group_fn(p, x0, x1):
      (x0, x1), _ = jax.lax.scan(lambda xs, bp: (block_fn(bp, *xs), None), (x0, x1), p)
      return 2 * x0, 2 * x1  # the official group "residual" (see DPCAG)

    if self.remat == "groups":
      group_fn = recomputed(group_fn)
    (x0, x1), _ = jax.lax.scan(lambda xs, gp: (group_fn(gp, *xs), None), (x0, x1), stacked)
    return x0, x1


class DCLS(nn.Module):
  """DCLS-SR: `model.apply(variables, lr)` with lr [B, H, W, C] in [0, 1], H, W >= 7.

  `initial_code` is ignored and `iterations` must be None or 1 (one pass); both exist so
  DCLS is called like DAN. Returns a ModelOutput with a leading axis of length 1.
  """

  spec: ModelSpec

  @nn.compact
  def __call__(
    self, lr: Array, initial_code: Optional[Array] = None, iterations: Optional[int] = None
  ) -> ModelOutput:
    del initial_code  # one pass: nothing to resume from
    s = self.spec
    if lr.ndim != 4 or lr.shape[-1] != s.in_nc:
      raise ValueError(f"lr must be [B, H, W, {s.in_nc}], got shape {lr.shape}")
    if min(lr.shape[1:3]) < 7:
      raise ValueError(f"DCLS needs lr of at least 7x7 pixels, got {lr.shape[1:3]}")
    if iterations not in (None, 1):
      raise ValueError(f"DCLS runs one pass; iterations must be 1, got {iterations}")
    pca = self.variable(
      "pca", "matrix", jnp.zeros, (s.kernel_size**2, s.code_len), jnp.float32
    ).value
    opts = dict(dtype=s.dtype, gemm_grad=spec_lib.gemm_grad(s))
    lr = lr.astype(jnp.float32)
    kernel = Estimator(
      s.estimator_nf, s.estimator_nb, s.input_para, s.kernel_size, **opts, name="estimator"
    )(lr)
    sr = Restorer(
      s.nf,
      s.nb,
      s.ng,
      s.scale,
      s.in_nc,
      s.reduction,
      **opts,
      remat=spec_lib.remat_mode(s),
      name="restorer",
    )(lr, jax.lax.stop_gradient(kernel))
    code = kernel.reshape(kernel.shape[0], -1) @ pca
    return ModelOutput(sr=sr[None], code=code[None], kernel=kernel[None])


def reformulated_kernel(
  lr_blurred: Array, lr_clean: Array, kernel_size: int, eps: float = 1e-20, keep: int = 40
) -> Array:
  """The DCLS kernel-loss target (official `CorrectionLoss`), from one training pair.

  Per channel, the kernel that maps the bicubic-downsampled HR to the bicubic-downsampled
  blurred HR: the Fourier ratio F(lr_blurred) conj(F(lr_clean)) / (|F(lr_clean)|^2 + eps),
  back in space with the psf2otf shift undone and cropped to k x k. The channels are
  averaged and zeroed where their product is not positive (official mask), then every tap
  below 0.75x the (keep+1)-th largest is zeroed, the rest shifted down by that value, and
  the result sum-normalised (official `zeroize_negligible_val`, including its 1e-20 added
  at tap (k//2+1, k//2+1), one right of and below the centre).

  Args:
    lr_blurred: [B, h, w, C] noise-free bicubic LR of the blurred HR.
    lr_clean: [B, h, w, C] bicubic LR of the HR.
  Returns:
    [B, k, k] float32 (no gradient flows to the images).
  """
  c = kernel_size // 2
  blur = dft.rfft2(jnp.transpose(lr_blurred.astype(jnp.float32), (0, 3, 1, 2)))
  c_re, c_im = dft.rfft2(jnp.transpose(lr_clean.astype(jnp.float32), (0, 3, 1, 2)))
  denom = c_re**2 + c_im**2 + eps  # B conj(C) / (|C|^2 + eps)
  re, im = dft.conj_times((c_re, c_im), blur)
  psf = dft.irfft2(re / denom, im / denom, *lr_clean.shape[1:3])  # [B, C, h, w]
  # Undo the psf2otf shift: the last c rows/columns, then the first c+1 (as official, which
  # reuses a row/column when the LR is smaller than the kernel).
  psf = jnp.concatenate([psf[..., -c:, :], psf[..., : c + 1, :]], axis=-2)
  per_channel = jnp.concatenate([psf[..., -c:], psf[..., : c + 1]], axis=-1)
  mask = jnp.prod(per_channel, axis=1) > 0
  kern = jnp.mean(per_channel, axis=1) * mask  # [B, k, k]
  flat = kern.reshape(kern.shape[0], -1)
  floor = 0.75 * jnp.sort(flat, axis=-1)[:, -keep - 1]
  kern = jnp.clip(kern - floor[:, None, None], 0.0, 1.0)
  kern = kern.at[:, c + 1, c + 1].add(1e-20)
  kern = kern / jnp.sum(kern, axis=(1, 2), keepdims=True)
  return jax.lax.stop_gradient(kern)


def official_init(params: Any, seed: int) -> dict:
  """Re-draws DCLS parameters as the official constructors do, on the host.

  `params` holds PyTorch-default draws (see `init_variables`). The official Estimator
  re-initialises all its layers with Kaiming-normal weights (fan_in, gain sqrt(2)) and zero
  biases; the Restorer's residual blocks get Kaiming-normal weights scaled by 0.1 and zero
  biases; every other Restorer layer keeps PyTorch's default.
  """
  rng = np.random.default_rng([seed, 1])

  def kaiming(layer, scale):
    shape = layer["kernel"].shape
    std = np.sqrt(2.0 / np.prod(shape[:-1]))  # fan_in: all but the output axis
    return {
      "kernel": (rng.normal(0.0, std, shape) * scale).astype(np.float32),
      "bias": np.zeros(layer["bias"].shape, np.float32),
    }

  def walk(node, scale):
    if "kernel" in node and "bias" in node:
      return kaiming(node, scale)
    return {name: walk(child, scale) for name, child in sorted(node.items())}

  out = dict(params)
  out["estimator"] = walk(params["estimator"], 1.0)
  restorer = dict(params["restorer"])
  for name in sorted(restorer):
    if name.startswith("feature"):
      restorer[name] = walk(restorer[name], 0.1)
  out["restorer"] = restorer
  return out


# ---------------------------------------------------------------------------------------
# The family contract (models.spec.Family)
# ---------------------------------------------------------------------------------------

VERSIONS = ("DCLS",)
# Defaults for the fields a config leaves out (one pass; the official Estimator has 3
# residual blocks; remat "auto": rematerialised groups on the CPU, 0.3x the train-step
# memory at no measured cost in speed there; none on GPUs/TPUs; benchmarks/RESULTS.md).
DEFAULTS = {"loops": 1, "estimator_nb": 3, "remat": "auto"}
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
  "input_para",
  "reduction",
)


def arch_fields(version: str) -> tuple[str, ...]:
  del version
  return ARCH_FIELDS


def validate(spec: ModelSpec) -> None:
  if spec.loops != 1:
    raise ValueError(f"model.loops must be 1 for DCLS (one pass), got {spec.loops!r}")
  if spec.kernel_size not in FILTER_STRUCTURES:
    raise ValueError(
      f"model.kernel_size must be one of {sorted(FILTER_STRUCTURES)} "
      f"for DCLS (its filter stacks), got {spec.kernel_size}"
    )
  spec_lib.check_positive(spec, ("ng", "input_para", "reduction"))
  if spec.nf % spec.reduction or spec.nf // spec.reduction < spec.reduction:
    raise ValueError(
      f"model.nf must be a multiple of model.reduction with nf/reduction >= "
      f"reduction (channel attention), got nf={spec.nf}, "
      f"reduction={spec.reduction}"
    )


def create(spec: ModelSpec) -> nn.Module:
  return DCLS(spec)


def init_params(params: dict, seed: int, spec: ModelSpec) -> dict:
  del spec
  return official_init(params, seed)


def has_kernel(spec: ModelSpec) -> bool:
  del spec
  return True


def kernel_loss(out: ModelOutput, batch: dict) -> Array:
  """L1 to the reformulated kernel (official CorrectionLoss; batch 'lr_blurred', 'lr_clean')."""
  target = reformulated_kernel(batch["lr_blurred"], batch["lr_clean"], out.kernel.shape[-1])
  return jax.vmap(lambda k: spec_lib.l1(k, target))(out.kernel)


def needs_clean_lr(spec: ModelSpec) -> bool:
  del spec
  return True


def fixed_image_size(spec: ModelSpec) -> bool:
  """Artifacts take one LR size: the deconvolution's DFT matrices are built for it
  (`models/dft.py`); an FFT would need static lengths as well."""
  del spec
  return True


def receptive_fields(spec: ModelSpec) -> tuple[int, int]:
  """Of the convolutions only: the Fourier deconvolution and the kernel estimate are global."""
  restorer = 1 + 6 + 3 * spec.nb * spec.ng + 1 + 2 + 1
  estimator = 3 + 2 * spec.estimator_nb + 2
  return restorer, estimator


def tiling(spec: ModelSpec) -> spec_lib.Tiling:
  del spec
  raise ValueError(
    "tiled inference is not available for DCLS: its Fourier "
    "deconvolution and kernel estimate see the whole image; run "
    "whole images (--tile 0)"
  )


# ---------------------------------------------------------------------------------------
# Official weights (github megvii-research/DCLS-SR)
# ---------------------------------------------------------------------------------------

# Official constructor option -> our model config field.
_OFFICIAL_TO_OURS = {
  "nf": "nf",
  "nb": "nb",
  "ng": "ng",
  "in_nc": "in_nc",
  "reduction": "reduction",
  "upscale": "scale",
  "input_para": "input_para",
  "kernel_size": "kernel_size",
}
_EXTRA_FIELDS = ("estimator_nf", "estimator_nb", "code_len")


def official_config(version: str, **official_options: Any) -> dict:
  """Our model config fields from the official `DCLS(...)` options (YAML `network_G`).

  `nf`, `nb`, `ng`, `in_nc`, `reduction`, `upscale`, `input_para`, `kernel_size` as the
  official constructor (`estimator_nf`, `estimator_nb`, `code_len` also accepted); missing
  ones take its defaults. The official Estimator is as wide as the Restorer (nf) and has
  3 residual blocks; one pass.
  """
  unknown = sorted(set(official_options) - set(_OFFICIAL_TO_OURS) - set(_EXTRA_FIELDS))
  if unknown:
    raise ValueError(
      f"unknown official DCLS option(s) {unknown}; known: "
      f"{sorted(_OFFICIAL_TO_OURS) + list(_EXTRA_FIELDS)}"
    )
  cfg = dict(
    version=version,
    scale=4,
    nf=64,
    nb=16,
    ng=5,
    in_nc=3,
    reduction=4,
    input_para=128,
    kernel_size=21,
    loops=1,
    code_len=10,
    estimator_nb=3,
  )
  for name, value in official_options.items():
    cfg[_OFFICIAL_TO_OURS.get(name, name)] = value
  cfg.setdefault("estimator_nf", cfg["nf"])
  return cfg


def _pairs(spec: ModelSpec) -> Iterator[tuple[str, tuple[str, ...]]]:
  """(official module name, our parameter path) for every conv/linear layer of DCLS."""
  r, e = ("restorer",), ("estimator",)
  yield "Estimator.head.0", e + ("head",)
  for i in range(spec.estimator_nb):
    for j in (1, 2):
      yield f"Estimator.body.0.{i}.conv{j}", e + (f"block{i}", f"conv{j}")
  yield "Estimator.tail.0", e + ("tail_conv1",)
  yield "Estimator.tail.2", e + ("tail_conv2",)
  yield "Estimator.tail.4", e + ("tail_latent",)
  for i in range(len(FILTER_STRUCTURES[spec.kernel_size])):
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


def params_from_torch(
  state_dict: Mapping[str, np.ndarray], spec: ModelSpec, pca_matrix: Any = None
) -> dict:
  """Maps an official DCLS state_dict onto our variables.

  `pca_matrix` ([k*k, code_len]) gives the `code` output (official DCLS weights carry no
  PCA matrix); default zeros, so `code` is zero.
  """
  sd = torch_weights.strip_prefix(state_dict)
  model = DCLS(spec)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros((1, 8, 8, spec.in_nc), np.float32))
  )
  params, used, problems = torch_weights.map_weights(sd, shapes["params"], _pairs(spec))
  problems += torch_weights.unexpected(sd, used)
  k = spec.kernel_size
  if pca_matrix is None:
    pca_matrix = np.zeros((k * k, spec.code_len), np.float32)
  pca_matrix = np.asarray(pca_matrix, np.float32)
  if pca_matrix.shape != (k * k, spec.code_len):
    problems.append(f"pca matrix: shape {pca_matrix.shape}, needs {(k * k, spec.code_len)}")
  torch_weights.fail(
    problems,
    f"official DCLS x{spec.scale} weights do not match the model config (nf={spec.nf}, "
    f"nb={spec.nb}, ng={spec.ng}, kernel_size={k}, input_para={spec.input_para})",
  )
  return {"params": params, "pca": {"matrix": pca_matrix}}


def official_options(state_dict: Mapping[str, np.ndarray]) -> Optional[tuple[str, dict]]:
  """("DCLS", constructor options) read off an official DCLS state_dict; None if not one."""
  sd = torch_weights.strip_prefix(state_dict)
  if not any(k.startswith("Restorer.head2.grad_filter") for k in sd):
    return None
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
  n_dec = count(r"Estimator\.dec\.(\d+)\.")
  for i in range(n_dec):
    w = sd[f"Estimator.dec.{i}.weight"]
    channels = (in_nc if i == 0 else G_CHAN) * (in_nc if i == n_dec - 1 else G_CHAN)
    sizes.append(int(round((w.shape[0] / channels) ** 0.5)))
  by_structure = {v: k for k, v in FILTER_STRUCTURES.items()}
  if tuple(sizes) not in by_structure:
    raise ConversionError(f"unknown DCLS filter structure {sizes}; known: {sorted(by_structure)}")
  ratio = sd["Restorer.upscale.0.weight"].shape[0] // nf
  return "DCLS", dict(
    nf=int(nf),
    in_nc=int(in_nc),
    nb=count(r"Restorer\.body\.0\.body\.(\d+)\."),
    ng=count(r"Restorer\.body\.(\d+)\."),
    reduction=int(nf // sd["Restorer.head1.weight"].shape[0]),
    input_para=int(sd["Estimator.tail.4.weight"].shape[0]),
    kernel_size=by_structure[tuple(sizes)],
    estimator_nf=int(sd["Estimator.head.0.weight"].shape[0]),
    estimator_nb=count(r"Estimator\.body\.0\.(\d+)\."),
    upscale=4 if "Restorer.upscale.4.weight" in sd else int(round(ratio**0.5)),
  )
