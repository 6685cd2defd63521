"""Synthetic blind-SR degradations (blur -> bicubic downsampling -> noise) in TensorFlow.

The degradation model of the official DAN code, extended for kernel-space ablations
(kernel families, named kernel spaces, noise ranges, JPEG), driven by
`config.degradation`. Every function uses TensorFlow ops only, so the same code runs in
`tf.data` maps (graph mode, stateless seeds) and eagerly on numpy arrays. This package is
the one import path (`from dan_jax import degradation`); its `_`-modules are private. It
never imports jax or the model. Conventions (ranges, kernel orientation, noise units) are
in the README ("Degradations").
"""

from dan_jax.degradation._common import ArrayLike
from dan_jax.degradation._common import SUPPORTED_SCALES
from dan_jax.degradation._kernel_families import generalized_gaussian_kernel
from dan_jax.degradation._kernel_families import make_kernel_sampler
from dan_jax.degradation._kernel_families import motion_kernel
from dan_jax.degradation._kernel_families import plateau_kernel
from dan_jax.degradation._kernel_families import random_motion_kernels
from dan_jax.degradation._kernel_families import random_motion_trajectories
from dan_jax.degradation._kernel_families import random_shaped_kernels
from dan_jax.degradation._kernel_families import sample_kernels
from dan_jax.degradation._kernels import anisotropic_gaussian_kernel
from dan_jax.degradation._kernels import apply_disturbance
from dan_jax.degradation._kernels import isotropic_gaussian_kernel
from dan_jax.degradation._kernels import KERNEL_FAMILIES
from dan_jax.degradation._kernels import kernel_space
from dan_jax.degradation._kernels import kernel_space_overrides
from dan_jax.degradation._kernels import KERNEL_SPACES
from dan_jax.degradation._kernels import kernel_spec_from_config
from dan_jax.degradation._kernels import KernelSpec
from dan_jax.degradation._kernels import NOISE_CONFIG_KEYS
from dan_jax.degradation._kernels import NON_KERNEL_CONFIG_KEYS
from dan_jax.degradation._kernels import parse_family
from dan_jax.degradation._kernels import random_kernels
from dan_jax.degradation._kernels import sample_kernel_params
from dan_jax.degradation._kernels import setting1_spec
from dan_jax.degradation._kernels import setting2_spec
from dan_jax.degradation._pca import build_pca
from dan_jax.degradation._pca import decode
from dan_jax.degradation._pca import encode
from dan_jax.degradation._resize import imresize
from dan_jax.degradation._synthesis import apply_jpeg
from dan_jax.degradation._synthesis import blur
from dan_jax.degradation._synthesis import degrade
from dan_jax.degradation._synthesis import noise_spec_from_config
from dan_jax.degradation._synthesis import NoiseSpec
from dan_jax.degradation._synthesis import quantize_8bit
from dan_jax.degradation._synthesis import sample_jpeg_quality
from dan_jax.degradation._synthesis import sample_noise_sigma
from dan_jax.degradation._synthesis import synthesize
from dan_jax.degradation._testsets import gaussian8_sigmas
from dan_jax.degradation._testsets import make_gaussian8_lr
from dan_jax.degradation._testsets import modcrop
from dan_jax.degradation._testsets import write_gaussian8_set

__all__ = [
  "ArrayLike",
  "SUPPORTED_SCALES",
  "isotropic_gaussian_kernel",
  "anisotropic_gaussian_kernel",
  "apply_disturbance",
  "KERNEL_FAMILIES",
  "parse_family",
  "KernelSpec",
  "setting1_spec",
  "setting2_spec",
  "KERNEL_SPACES",
  "kernel_space",
  "kernel_space_overrides",
  "sample_kernel_params",
  "random_kernels",
  "NOISE_CONFIG_KEYS",
  "NON_KERNEL_CONFIG_KEYS",
  "kernel_spec_from_config",
  "generalized_gaussian_kernel",
  "plateau_kernel",
  "random_shaped_kernels",
  "motion_kernel",
  "random_motion_trajectories",
  "random_motion_kernels",
  "sample_kernels",
  "make_kernel_sampler",
  "imresize",
  "blur",
  "degrade",
  "quantize_8bit",
  "NoiseSpec",
  "noise_spec_from_config",
  "sample_noise_sigma",
  "sample_jpeg_quality",
  "apply_jpeg",
  "synthesize",
  "build_pca",
  "encode",
  "decode",
  "gaussian8_sigmas",
  "modcrop",
  "make_gaussian8_lr",
  "write_gaussian8_set",
]
