"""A tiny config for tests: a DANv2 of ~3k parameters on 16x16 HR crops of the demo photos.

  python -m dan_jax.main --config=configs/test.py --workdir=/tmp/dan_test

Compiles in seconds and runs a step in milliseconds on one CPU core; learns little.
The batch (8) divides over 1, 2, 4 or 8 devices.
"""

import pathlib
import runpy

_DEFAULT = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config(arg: str = ""):
  """The default config shrunk (arg "v1": the smallest legal DANv1, nf 16; "dcls": DCLS;
  "baseline": the plain SR control)."""
  config = _DEFAULT["get_config"]()
  model = config.model
  model.version = _DEFAULT["version_from_arg"](arg)
  model.scale = 2
  model.nf = 16 if model.version == "DANv1" else 8  # DANv1's attention needs nf >= 16
  model.nb = 1
  model.ng = 1
  model.loops = 3
  model.kernel_size = 7  # degradation.kernel_size follows
  model.code_len = 4
  model.estimator_nf = 32 if model.version == "DANv1" else 8
  model.estimator_nb = 1

  if model.version == "DCLS":  # kernel sizes are DCLS's filter stacks: 11 is the smallest
    model.nf, model.loops, model.kernel_size = 16, 1, 11  # nf >= reduction^2 for attention
    model.estimator_nf, model.input_para = 8, 8  # input_para: the Estimator's latent
  if model.version == "baseline":  # the plain SR control: one pass
    model.loops = 1

  deg = config.degradation
  deg.sig_min, deg.sig_max = 0.2, 2.0  # what a 7x7 kernel can hold
  deg.pca_samples = 256

  data = config.data
  data.source = "demo"
  data.hr_crop = 16
  data.num_parallel_calls = 1
  data.prefetch = 1
  data.val_source = "demo"
  data.val_crop = 32
  data.val_max_images = 1
  data.val_sigma = 1.2

  config.batch_size = 8
  config.num_train_steps = 4
  config.learning_rate = 3e-3  # tiny nets learn visibly in a few dozen steps
  config.lr_milestones = (3,)
  config.ema_decay = 0.5  # exercises the EMA path (validation then uses the EMA weights)
  config.log_every_steps = 1
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.image_every_steps = 2
  config.compilation_cache_dir = ""  # tests write nothing under the user's cache folder
  return config
