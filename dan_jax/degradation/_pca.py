"""PCA of a kernel space: `build_pca` and kernel <-> code (`encode`, `decode`),
as the official `creat_PCA.py`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf

from dan_jax.degradation._common import _to_kernel
from dan_jax.degradation._common import ArrayLike


def build_pca(
  kernel_sampler: Callable[[int, int], Any],
  n: int = 30000,
  code_len: int = 10,
  seed: int = 0,
  return_mean: bool = False,
):
  """PCA projection (k*k, code_len) float32 from n sampled kernels (as creat_PCA.py).

  Kernels are mean-centred before the decomposition (official `PCA`), but the
  official model stores only the top principal directions and `encode`
  projects the *uncentred* kernel (official PCAEncoder). Column signs
  (arbitrary in an SVD) are fixed so the largest-magnitude entry of each column
  is positive.

  Args:
    kernel_sampler: `(n, seed) -> (n, k, k)` array, e.g. `make_kernel_sampler(spec)`.
    return_mean: also return the mean kernel (k, k) float32, which `decode`
      needs to invert `encode` (not part of the official checkpoint).
  """
  kernels = np.asarray(kernel_sampler(n, seed), np.float64)
  if kernels.ndim != 3 or kernels.shape[1] != kernels.shape[2]:
    raise ValueError(f"kernel_sampler must return (n, k, k), got shape {kernels.shape}")
  x = kernels.reshape(kernels.shape[0], -1)
  if not 1 <= code_len <= min(x.shape):
    raise ValueError(f"code_len must be in [1, {min(x.shape)}], got {code_len}")
  mean = x.mean(axis=0, keepdims=True)
  x = x - mean
  # Eigenvectors of the (k*k, k*k) scatter matrix = right singular vectors of x
  # (what torch.svd(x.T) returns as U), but far cheaper than an SVD of a tall x.
  _, vecs = np.linalg.eigh(x.T @ x)
  p = vecs[:, ::-1][:, :code_len]
  signs = np.sign(p[np.argmax(np.abs(p), axis=0), np.arange(code_len)])
  p = (p * signs).astype(np.float32)
  if return_mean:
    return p, mean.reshape(kernels.shape[1:]).astype(np.float32)
  return p


def _check_pca(k2: int, pca_matrix: tf.Tensor) -> None:
  if pca_matrix.shape.rank != 2 or pca_matrix.shape[0] != k2:
    raise ValueError(f"pca_matrix must be ({k2}, code_len), got shape {pca_matrix.shape}")


def encode(kernel: ArrayLike, pca_matrix: ArrayLike) -> tf.Tensor:
  """Kernel code = kernel.reshape(B, k*k) @ pca_matrix -> (B, code_len) ((code_len,) for (k, k))."""
  kernel = _to_kernel(kernel)
  pca = tf.cast(tf.convert_to_tensor(pca_matrix), tf.float32)
  k = kernel.shape[-1]
  _check_pca(k * k, pca)
  flat = tf.reshape(kernel, [-1, k * k])
  code = flat @ pca
  return code if kernel.shape.rank == 3 else code[0]


def decode(
  code: ArrayLike, pca_matrix: ArrayLike, mean_kernel: Optional[ArrayLike] = None
) -> tf.Tensor:
  """Kernel(s) (B, k, k) ((k, k) for a (code_len,) code) from `encode` codes.

  Because codes project the uncentred kernel, the reconstruction is
  `(I - P P^T) mean + P code` with the PCA mean kernel (`build_pca(...,
  return_mean=True)`); without `mean_kernel` only the in-subspace part
  `P code` is returned, which misses the mean's out-of-subspace component.
  """
  pca = tf.cast(tf.convert_to_tensor(pca_matrix), tf.float32)
  code = tf.cast(tf.convert_to_tensor(code), tf.float32)
  k = int(round(math.sqrt(pca.shape[0])))
  _check_pca(k * k, pca)
  flat = tf.reshape(code, [-1, pca.shape[1]]) @ tf.transpose(pca)
  if mean_kernel is not None:
    mean = tf.reshape(tf.cast(tf.convert_to_tensor(mean_kernel), tf.float32), [1, k * k])
    flat += mean - (mean @ pca) @ tf.transpose(pca)
  out = tf.reshape(flat, [-1, k, k])
  return out if code.shape.rank == 2 else out[0]
