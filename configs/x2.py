"""DAN x2, setting 1 (isotropic Gaussian kernels, Gaussian8 evaluation): the official recipe.

  python -m dan_jax.main --config=configs/x2.py:v2 --workdir=/runs/x2_v2 \
      --config.data.train_dir=/data/DIV2K_train_HR,/data/Flickr2K_HR

The argument picks the model (default v2):
  :v2  DANv2 (nf 64, nb 10, ng 5), 800k steps, lr 4e-4 halved at 200k, 400k and 600k.
  :v1  DANv1 (nf 64, nb 40), 400k steps, lr 4e-4 halved at 200k.
Both: global batch 64 of 128x128 HR crops (64x64 LR), sigma ~ U(0.2, 4.0), 21x21
kernels, 4 iterations. Validation: the held-out demo photographs blurred with sigma
1.26; the paper's benchmark numbers come from `python -m dan_jax.evaluate`.
"""

import pathlib
import runpy

_DEFAULT = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config(arg: str = "v2"):
  """Official DANv1/DANv2 x2 setting-1 training ("v1" or "v2")."""
  return _DEFAULT["official"](_DEFAULT["version_from_arg"](arg), scale=2, setting=1)
