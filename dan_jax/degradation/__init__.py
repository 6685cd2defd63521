"""Synthetic blind-SR degradations (blur -> bicubic downsampling -> noise) in TensorFlow.

This reproduces the degradation model of the official DAN code (greatlog/DAN,
`utils/deg_utils.py`, `data/util.py`, `scripts/generate_mod_blur_LR_bic.py`,
`config/DANv*/creat_PCA.py`), and extends it for kernel-space ablations: kernel
families beyond the official Gaussians (`KernelSpec.family`: generalized
Gaussian and plateau kernels as in Real-ESRGAN, random-trajectory motion blur,
mixtures; named spaces in `kernel_space`), noise level ranges and JPEG
(`NoiseSpec`), all driven by `config.degradation` (`kernel_spec_from_config`,
`noise_spec_from_config`, `synthesize`). Every image/kernel function is written with
TensorFlow ops only, so the same code runs

* inside `tf.data` `map` functions (graph mode, parallel, deterministic with
  stateless seeds), and
* eagerly on numpy arrays (evaluation sets, notebooks, tests): pass numpy in,
  get `tf.Tensor` out and call `.numpy()`.

Conventions:
  * Images are float in [0, 1], channels last: HWC or BHWC. Computation and
    outputs are float32. Integer images are rejected with `ValueError` by
    `blur`, `imresize`, `degrade` and `quantize_8bit` (a silent uint8 -> float
    conversion would make the [0, 255] vs [0, 1] range ambiguous); only the
    Gaussian8 helpers (`make_gaussian8_lr`, `write_gaussian8_set`) accept uint8
    and divide by 255 like the official `img2tensor`.
  * Kernels are (k, k) or (B, k, k), rows = image y axis, columns = x axis,
    applied as a cross-correlation (exactly like `F.conv2d` in the official
    `BatchBlur`; this matters for anisotropic kernels).
  * Noise levels are standard deviations in [0, 1] image units (the official
    `b_GaussianNoising` adds `N(0, noise_high)` to [0, 1] images; use e.g.
    `15 / 255` for "noise level 15").
  * Random sampling uses stateless TF ops with `seed` = shape-[2] int tensor.

This module must not import jax/flax or the model: it is used by input
pipelines that run on the host.

Modules (this package re-exports every name, so `from dan_jax import degradation as deg;
deg.imresize(...)` is all a caller needs):
  kernels          Gaussian kernels, KernelSpec, named kernel spaces, config -> KernelSpec
  kernel_families  generalized Gaussian, plateau and motion kernels; sample_kernels
  resize           MATLAB bicubic imresize
  synthesis        blur, degrade, quantize_8bit, NoiseSpec, JPEG, synthesize
  pca              build_pca, encode, decode
  testsets         Gaussian8 test sets
  _common          shared argument checks (a leaf: imports no other module here)
"""

# pylint: disable=g-importing-member,unused-import
from dan_jax.degradation._common import ArrayLike, SUPPORTED_SCALES
from dan_jax.degradation.kernels import (isotropic_gaussian_kernel,
                                         anisotropic_gaussian_kernel, apply_disturbance,
                                         KERNEL_FAMILIES, parse_family, KernelSpec,
                                         setting1_spec, setting2_spec, KERNEL_SPACES,
                                         kernel_space, kernel_space_overrides,
                                         sample_kernel_params, random_kernels,
                                         NOISE_CONFIG_KEYS, NON_KERNEL_CONFIG_KEYS,
                                         kernel_spec_from_config)
from dan_jax.degradation.kernel_families import (generalized_gaussian_kernel,
                                                 plateau_kernel, random_shaped_kernels,
                                                 motion_kernel, random_motion_trajectories,
                                                 random_motion_kernels, sample_kernels,
                                                 make_kernel_sampler)
from dan_jax.degradation.resize import imresize
from dan_jax.degradation.synthesis import (blur, degrade, quantize_8bit, NoiseSpec,
                                           noise_spec_from_config, sample_noise_sigma,
                                           sample_jpeg_quality, apply_jpeg, synthesize)
from dan_jax.degradation.pca import build_pca, encode, decode
from dan_jax.degradation.testsets import (gaussian8_sigmas, modcrop, make_gaussian8_lr,
                                          write_gaussian8_set)
