"""The networks: one module per method family, re-exported here.

`from dan_jax import models; models.create_model(config)` is the entry point; the DAN
family (DANv1, DANv2) lives in `models.dan`, DCLS-SR in `models.dcls`, the layers they
share (PyTorch-compatible convolutions and default init) in `models.layers`.
"""

from dan_jax.models.dan import AlternatingStep
from dan_jax.models.dan import ChannelAttention
from dan_jax.models.dan import count_params
from dan_jax.models.dan import CRB
from dan_jax.models.dan import create_model
from dan_jax.models.dan import DAN
from dan_jax.models.dan import DANOutput
from dan_jax.models.dan import delta_code
from dan_jax.models.dan import DPCB
from dan_jax.models.dan import DPCG
from dan_jax.models.dan import EstimatorV1
from dan_jax.models.dan import EstimatorV2
from dan_jax.models.dan import init_variables
from dan_jax.models.dan import ModelSpec
from dan_jax.models.dan import REMAT_MODES
from dan_jax.models.dan import RestorerV1
from dan_jax.models.dan import RestorerV2
from dan_jax.models.dan import SCALES
from dan_jax.models.dan import spec_from_config
from dan_jax.models.dan import VERSIONS
from dan_jax.models.dcls import DCLS
from dan_jax.models.dcls import FILTER_STRUCTURES
from dan_jax.models.dcls import reformulated_kernel
from dan_jax.models.layers import constant_channels_conv
from dan_jax.models.layers import Conv2d
from dan_jax.models.layers import conv_gemm_grad
from dan_jax.models.layers import leaky_relu
from dan_jax.models.layers import pixel_shuffle
from dan_jax.models.layers import Upsampler

# Temporary: the family-table rewrite (issue 20) replaces these re-exports.
__all__ = [
  "AlternatingStep",
  "ChannelAttention",
  "CRB",
  "DAN",
  "DANOutput",
  "DPCB",
  "DPCG",
  "EstimatorV1",
  "EstimatorV2",
  "ModelSpec",
  "REMAT_MODES",
  "RestorerV1",
  "RestorerV2",
  "SCALES",
  "VERSIONS",
  "count_params",
  "create_model",
  "delta_code",
  "init_variables",
  "spec_from_config",
  "DCLS",
  "FILTER_STRUCTURES",
  "reformulated_kernel",
  "Conv2d",
  "Upsampler",
  "constant_channels_conv",
  "conv_gemm_grad",
  "leaky_relu",
  "pixel_shuffle",
]
