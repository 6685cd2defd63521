"""DCLS's Fourier deconvolution: DFT matrix products (what the model uses) against jnp.fft.

  python benchmarks/dft_vs_fft.py                   # 4x64x64x16 (train), 180x320, 500x500
  python benchmarks/dft_vs_fft.py --sizes 4x64x64 --repeats 10

`models.dcls.cls_deconvolution` runs its transforms as DFT matrix products
(`models/dft.py`) so that a sharded train step splits them over the batch. This prints,
for each batch x height x width of 16-channel features and a 21x21 kernel: the time of the
forward and of forward + gradient with the DFT and with `jnp.fft` (the same deconvolution
with the transforms swapped), and each one's largest error against a float64 numpy
reference. Medians of --repeats after a warm-up. Never run as a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dan_jax import runtime

runtime.setup_entry_point()  # before JAX starts: the XLA:CPU flag on CPU-only hosts

import jax
import jax.numpy as jnp
import numpy as np

from dan_jax import errors
from dan_jax.models import dcls
from dan_jax.models import dft

import timing  # beside this script


def _fft_rfft2(x, height=None, width=None, shift=0):
  """dft.rfft2's contract through jnp.fft: pad, roll, FFT, (real, imaginary)."""
  pad = [(0, 0)] * (x.ndim - 2) + [
    (0, (height or x.shape[-2]) - x.shape[-2]),
    (0, (width or x.shape[-1]) - x.shape[-1]),
  ]
  spec = jnp.fft.rfft2(jnp.roll(jnp.pad(x, pad), (-shift, -shift), axis=(-2, -1)))
  return jnp.real(spec), jnp.imag(spec)


def _fft_irfft2(re, im, height, width):
  return jnp.fft.irfft2(jax.lax.complex(re, im), s=(height, width))


def _reference(x: np.ndarray, kernel: np.ndarray, smooth: np.ndarray) -> np.ndarray:
  """cls_deconvolution in float64 numpy (full complex FFTs, as the official code)."""
  k = kernel.shape[-1]
  xp = np.pad(x, ((0, 0), (k, k), (k, k), (0, 0)), mode="edge")
  hp, wp = xp.shape[1:3]

  def otf(p):
    q = np.zeros(p.shape[:-2] + (hp, wp))
    q[..., : p.shape[-2], : p.shape[-1]] = p
    return np.fft.fft2(np.roll(q, (-(p.shape[-1] // 2),) * 2, axis=(-2, -1)))

  kf = otf(kernel)[:, None]
  pf = otf(np.transpose(smooth, (0, 3, 1, 2)))
  out = np.fft.ifft2(
    np.conj(kf) / (np.abs(kf) ** 2 + np.abs(pf) ** 2) * np.fft.fft2(np.transpose(xp, (0, 3, 1, 2)))
  ).real
  return np.transpose(out, (0, 2, 3, 1))[:, k:-k, k:-k]


def measure(b: int, h: int, w: int, repeats: int) -> dict:
  """{'dft'|'fft': (forward s, forward + gradient s, max error vs float64)}."""
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(b, h, w, 16)).astype(np.float32)
  kernel = rng.uniform(size=(b, 21, 21))
  kernel = (kernel / kernel.sum((1, 2), keepdims=True)).astype(np.float32)
  smooth = rng.uniform(-0.5, 0.5, size=(b, 3, 3, 16)).astype(np.float32)
  want = _reference(x.astype(np.float64), kernel.astype(np.float64), smooth.astype(np.float64))
  original = (dft.rfft2, dft.irfft2)
  out = {}
  for name, transforms in (("dft", original), ("fft", (_fft_rfft2, _fft_irfft2))):
    dft.rfft2, dft.irfft2 = transforms
    try:  # fresh lambdas: jit caches traces by function identity
      fwd = jax.jit(lambda x, k, s: dcls.cls_deconvolution(x, k, s))
      grad = jax.jit(
        jax.grad(lambda x, s: jnp.sum(dcls.cls_deconvolution(x, kernel, s) ** 2), argnums=(0, 1))
      )
      got = np.asarray(fwd(x, kernel, smooth))
      jax.block_until_ready(grad(x, smooth))  # compile
      out[name] = (
        timing.median_seconds(lambda: fwd(x, kernel, smooth), repeats),
        timing.median_seconds(lambda: grad(x, smooth), repeats),
        float(np.max(np.abs(got - want))),
      )
    finally:
      dft.rfft2, dft.irfft2 = original
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument(
    "--sizes",
    default="4x64x64,1x180x320,1x500x500",
    help="comma list of BxHxW feature sizes (16 channels, k 21)",
  )
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args()
  print(
    f"# DFT vs FFT deconvolution, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
    f"{os.cpu_count()} cores, devices {[d.platform for d in jax.devices()]}, "
    f"jax {jax.__version__}"
  )
  print(
    "| features (BxHxW, 16 ch) | DFT fwd (s) | FFT fwd (s) | DFT fwd+grad (s) | "
    "FFT fwd+grad (s) | DFT max err | FFT max err |"
  )
  print("|---|---|---|---|---|---|---|")
  for size in args.sizes.split(","):
    b, h, w = (int(v) for v in size.split("x"))
    r = measure(b, h, w, args.repeats)
    print(
      f"| {size} | {r['dft'][0]:.4f} | {r['fft'][0]:.4f} | {r['dft'][1]:.4f} | "
      f"{r['fft'][1]:.4f} | {r['dft'][2]:.1e} | {r['fft'][2]:.1e} |",
      flush=True,
    )
  print("max err: largest |difference| from a float64 numpy reference (values ~1-2).")


if __name__ == "__main__":
  try:
    main()
  except errors.Error as e:  # a bad config, checkpoint or argument: one line, not a traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
