"""Layers shared by the model families: PyTorch-compatible convolutions and init.

`Conv2d` mirrors torch.nn.Conv2d (padding, stride, default initialisation) in NHWC/HWIO;
`torch_uniform` and `torch_default_params` are PyTorch's default init, written once, as a
flax initializer and as host-side draws for a whole parameter tree (`init_variables`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def torch_default_bound(fan_in: int) -> float:
  """PyTorch's default Conv2d/Linear init: weight and bias ~ U(-b, b), b = 1/sqrt(fan_in)."""
  return 1.0 / math.sqrt(fan_in)


def torch_uniform(fan_in: int):
  """PyTorch's default init as a flax initializer (weight and bias of one layer)."""
  bound = torch_default_bound(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    (stride, stride),
    ((padding, padding), (padding, padding)),
    dimension_numbers=_DIMENSIONS,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_gemm_grad(x: Array, kernel: Array, padding: int, stride: int = 1) -> Array:
  """A convolution whose kernel gradient runs as one GEMM-shaped convolution.

  XLA:CPU emits a convolution's kernel gradient (a "convolution" whose window is the
  whole activation map, dim_labels f01b_i01o->01bf) with a generic loop emitter that ran
  at 0.5-2 GFLOP/s inside DAN. The same sum, written as a convolution in the canonical
  NHWC/HWIO layout over transposed operands (channels as the batch, the batch as the
  features; the stride becomes a kernel dilation), goes to Eigen's GEMM-based
  convolution at 60-100 GFLOP/s. Same values as the plain convolution (up to float
  summation order).
  """
  return _conv(x, kernel, stride, padding)


def _conv_gemm_grad_fwd(x, kernel, padding, stride):
  return _conv(x, kernel, stride, padding), (x, kernel)


def _conv_gemm_grad_bwd(padding, stride, residuals, g):
  x, kernel = residuals
  k = kernel.shape[0]
  if stride == 1 and padding <= k - 1:
    # Input gradient: the output gradient convolved with the kernel rotated by 180 degrees,
    # in/out swapped, written out in the canonical NHWC/HWIO layout: XLA's own transpose
    # ('01oi' kernel) is canonicalised outside loops only, and inside a scan's body it ran
    # on the generic emitter at ~1/10 of the speed.
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    dx = _conv(g.astype(x.dtype), flipped, 1, k - 1 - padding)
  else:
    dx = jax.vjp(lambda v: _conv(v, kernel, stride, padding), x)[1](g)[0]
  # Kernel gradient: dk[i, j, c, o] = sum_{b,y,x} x_pad[b, s*y + i, s*x + j, c] g[b, y, x, o],
  # a convolution of x as [c, H, W, B] with g as an s-dilated [H', W', B, o] "kernel".
  x_t = jnp.transpose(x, (3, 1, 2, 0))
  g_t = jnp.transpose(g.astype(x.dtype), (1, 2, 0, 3))
  dk = jax.lax.conv_general_dilated(
    x_t,
    g_t,
    (1, 1),
    ((padding, padding),) * 2,
    rhs_dilation=(stride, stride),
    dimension_numbers=_DIMENSIONS,
  )
  dk = jnp.transpose(dk[:, :k, :k], (1, 2, 0, 3))  # [c, k, k, o] -> HWIO
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


conv_gemm_grad.defvjp(_conv_gemm_grad_fwd, _conv_gemm_grad_bwd)


@jax.custom_vjp
def add_bias(y: Array, bias: Array) -> Array:
  """`y + bias` (bias over the last axis) whose bias gradient is a dot, not a reduction.

  Autodiff sums the output gradient over batch and space with a reduce, which XLA:CPU
  splits into a reduce-window and a reduce (~1.7 ms for a 4x64x64x64 gradient); the same
  sum as a ones-vector times the [N, C] gradient is one GEMV (~0.4 ms). Used on the CPU
  path (`gemm_grad`) of every convolution.
  """
  return y + bias


def _add_bias_fwd(y, bias):
  return y + bias, None


def _add_bias_bwd(_, g):
  flat = g.reshape(-1, g.shape[-1])
  ones = jnp.ones((1, flat.shape[0]), g.dtype)
  return g, jnp.dot(ones, flat, preferred_element_type=jnp.float32)[0].astype(g.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def constant_channels_conv(
  const: Array, kernel: Array, height: int, width: int, padding: int
) -> Array:
  """Stride-1 convolution of inputs that are constant over space, zero padded.

  Equals `conv(broadcast(const, [B, H, W, c]), kernel)` exactly: in the interior every
  tap sees the constant, at the border only the taps that fall inside the image do. It
  costs O(B*H*W*k*out) instead of O(B*H*W*k*k*c*out).

  Args:
    const: [B, c] per-image values.
    kernel: [k, k, c, out].
  Returns:
    [B, H, W, out]
  """
  k = kernel.shape[0]

  def inside(n):  # [n, k]: does tap i of output position y read a real pixel?
    # iota rather than np.arange: n may be a symbolic dimension (jax.export, dan_jax.export).
    pos = (
      jax.lax.broadcasted_iota(jnp.int32, (n, k), 0)
      + jax.lax.broadcasted_iota(jnp.int32, (n, k), 1)
      - padding
    )
    return ((pos >= 0) & (pos < n)).astype(const.dtype)

  per_tap = jnp.einsum("bc,ijco->bijo", const, kernel.astype(const.dtype))
  rows = jnp.einsum("wj,bijo->biwo", inside(width), per_tap)
  return jnp.einsum("hi,biwo->bhwo", inside(height), rows)


class Conv2d(nn.Module):
  """A 2-D convolution with PyTorch's padding, stride and default initialisation.

  Params are `kernel` [kh, kw, in, out] (HWIO) and `bias` [out]. `const` ([B, c]) are extra
  input channels that are constant over space (DANv1's stretched kernel code), appended
  after x's channels; they are convolved in closed form rather than materialised.
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # kernel gradient as one GEMM (see conv_gemm_grad)

  @nn.compact
  def __call__(self, x: Array, const: Optional[Array] = None) -> Array:
    k, p = self.kernel_size, self.padding
    in_ch = x.shape[-1] + (0 if const is None else const.shape[-1])
    init = torch_uniform(in_ch * k * k)
    kernel = self.param("kernel", init, (k, k, in_ch, self.features))
    bias = self.param("bias", init, (self.features,))
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    if const is not None:
      if self.stride != 1:
        raise ValueError("constant input channels need a stride-1 convolution")
      c = x.shape[-1]
      y = constant_channels_conv(
        const.astype(self.dtype), kernel[:, :, c:], x.shape[1], x.shape[2], p
      )
      kernel = kernel[:, :, :c]
      return self._add_bias(self._conv(x, kernel) + y, bias)
    return self._add_bias(self._conv(x, kernel), bias)

  def _add_bias(self, y: Array, bias: Array) -> Array:
    return add_bias(y, bias) if self.gemm_grad else y + bias

  def _conv(self, x: Array, kernel: Array) -> Array:
    k, p = self.kernel_size, self.padding
    if k == 1 and self.stride == 1 and p == 0:
      # A 1x1 convolution is a matmul; dot_general is cheaper than a conv on XLA:CPU.
      return jnp.einsum("...c,cd->...d", x, kernel[0, 0])
    if self.gemm_grad:
      return conv_gemm_grad(x, kernel, p, self.stride)
    return _conv(x, kernel, self.stride, p)


class ChannelAttention(nn.Module):
  """x * sigmoid(conv(act(conv(mean_hw(x))))), act a leaky ReLU (slope 0: ReLU).

  DAN's CALayer: reduction 16, slope 0.2; DCLS's: reduction 4, slope 0 (ReLU).
  """

  reduction: int = 16
  negative_slope: float = 0.2
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nf = x.shape[-1]
    y = jnp.mean(x, axis=(1, 2), keepdims=True)
    y = Conv2d(nf // self.reduction, 1, **_opts(self), name="squeeze")(y)
    s = self.negative_slope
    y = nn.relu(y) if s == 0 else nn.leaky_relu(y, negative_slope=s)
    y = Conv2d(nf, 1, **_opts(self), name="excite")(y)
    return x * nn.sigmoid(y)


class ResBlock(nn.Module):
  """A residual block without batch norm: x + conv2(act(conv1(x))), act a leaky ReLU.

  DCLS's ResidualBlock_noBN: slope 0.1; the baseline's EDSR block: slope 0 (ReLU).
  """

  negative_slope: float = 0.1
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nf = x.shape[-1]
    y = Conv2d(nf, 3, padding=1, **_opts(self), name="conv1")(x)
    s = self.negative_slope
    y = nn.relu(y) if s == 0 else nn.leaky_relu(y, negative_slope=s)
    return x + Conv2d(nf, 3, padding=1, **_opts(self), name="conv2")(y)


def _opts(module: nn.Module) -> dict:
  """The compute dtype and conv-gradient choice a layer passes to its sub-layers."""
  return dict(dtype=module.dtype, gemm_grad=module.gemm_grad)


def leaky_relu(x: Array) -> Array:
  return nn.leaky_relu(x, negative_slope=0.2)


def pixel_shuffle(x: Array, r: int) -> Array:
  """torch.nn.PixelShuffle in NHWC: channel c*r*r + i*r + j goes to pixel (h*r+i, w*r+j)."""
  b, h, w, c = x.shape
  c_out = c // (r * r)
  x = x.reshape(b, h, w, c_out, r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c_out)


class Upsampler(nn.Module):
  """The official tail: conv + PixelShuffle (x2, x3) or two (conv + PixelShuffle(2)) (x4)."""

  nf: int
  scale: int
  out_nc: int
  dtype: Any = jnp.float32
  gemm_grad: bool = False  # see Conv2d

  @nn.compact
  def __call__(self, f: Array) -> Array:
    steps = [2, 2] if self.scale == 4 else [self.scale]
    for i, r in enumerate(steps):
      f = Conv2d(self.nf * r * r, 3, padding=1, **_opts(self), name=f"conv{i}")(f)
      f = pixel_shuffle(f, r)
    return Conv2d(self.out_nc, 3, padding=1, **_opts(self), name="out")(f)


def torch_default_params(shapes: Any, seed: int) -> dict:
  """Draws PyTorch's default init (`torch_default_bound`) on the host for a tree of shapes.

  Host-side numpy keeps initialisation free of XLA compilation: on XLA:CPU, compiling
  threefry random bits for every parameter shape costs seconds each (LLVM optimises the
  unrolled hash), which made a tiny model's `init` take ~20 s.
  """
  rng = np.random.default_rng(seed)

  def walk(node):
    out = {}
    for name in sorted(node):
      child = node[name]
      if isinstance(child, Mapping) and "kernel" in child and "bias" in child:
        k_shape = child["kernel"].shape
        bound = torch_default_bound(int(np.prod(k_shape[:-1])))  # fan_in: all but out
        out[name] = {
          "kernel": rng.uniform(-bound, bound, k_shape).astype(np.float32),
          "bias": rng.uniform(-bound, bound, child["bias"].shape).astype(np.float32),
        }
      elif isinstance(child, Mapping):
        out[name] = walk(child)
      else:
        raise ValueError(f"unexpected parameter {name} of shape {child.shape}")
    return out

  return walk(shapes)
