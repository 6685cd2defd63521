"""DAN x4, setting 1 (isotropic Gaussian kernels, Gaussian8 evaluation): the official recipe.

  python -m dan_jax.main --config=configs/x4.py:v2 --workdir=/runs/x4_v2 \
      --config.data.train_dir=/data/DIV2K_train_HR,/data/Flickr2K_HR

The argument picks the model (default v2):
  :v2  DANv2 (nf 64, nb 10, ng 5), 800k steps, lr 4e-4 halved at 200k, 400k and 600k.
  :v1  DANv1 (nf 64, nb 40), 400k steps, lr 4e-4 halved at 200k.
  :dcls  DCLS-SR (configs/default.py: official_dcls).
  :baseline  plain SR control (EDSR baseline, nf 64, 16 blocks), v2's data and schedule.
Both: global batch 64 of 256x256 HR crops (64x64 LR), sigma ~ U(0.2, 4.0), 21x21
kernels, 4 iterations. Validation: the held-out demo photographs blurred with sigma
2.6; the paper's benchmark numbers come from `python -m dan_jax.evaluate`.
"""

import pathlib
import runpy

_DEFAULT = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config(arg: str = "v2"):
  """Official x4 setting-1 training ("v1", "v2", "dcls" or "baseline")."""
  return _DEFAULT["official"](_DEFAULT["version_from_arg"](arg), scale=4, setting=1)
