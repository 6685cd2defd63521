"""Default config: DANv2 x4, setting 1 (isotropic Gaussian kernels), as the official YAML.

  python -m dan_jax.main --config=configs/default.py --workdir=/tmp/dan \
      --config.data.train_dir=/data/DIV2K_Flickr2K/HR

Variants (configs/x2.py, x4_setting2.py, demo.py, test.py, ...) start from `get_config()`
here and override a few fields. Every field is commented; `--config.a.b=value` overrides any.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The official DANv2 x4 setting-1 training recipe."""
  config = ml_collections.ConfigDict()

  # ---- Model (dan_jax.models.ModelSpec) ----
  config.model = model = ml_collections.ConfigDict()
  model.version = "DANv2"  # "DANv1" or "DANv2"
  model.scale = 4  # upscaling factor: 2, 3 or 4
  model.nf = 64  # Restorer feature channels
  model.nb = 10  # Restorer blocks (DANv1: CRB blocks, official 40; DANv2: DPCBs per group)
  model.ng = 5  # DANv2 Restorer groups (DPCG); unused by DANv1
  model.in_nc = 3  # image channels
  model.loops = 4  # alternating iterations (official `loop`)
  model.kernel_size = 21  # blur kernel size k (the Estimator of DANv2 predicts k*k)
  model.code_len = 10  # PCA code length (official `input_para`)
  model.estimator_nf = 64  # Estimator feature channels (fixed to 64 officially)
  model.estimator_nb = 5  # Estimator blocks (fixed to 5 officially)
  model.scan_unroll = 1  # unroll factor of the nn.scan over iterations (XLA:CPU likes >1)
  model.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (params stay float32)

  # ---- Degradation synthesis (dan_jax.degradation.KernelSpec + noise) ----
  config.degradation = deg = ml_collections.ConfigDict()
  deg.kernel_size = model.get_ref("kernel_size")  # kernel size, tied to the model's
  deg.sig_min = 0.2  # Gaussian sigma range (setting 1: U(0.2, 4.0))
  deg.sig_max = 4.0
  deg.rate_iso = 1.0  # fraction of isotropic kernels (setting 1: 1.0; setting 2: 0.0)
  deg.random_disturb = False  # official multiplicative kernel noise (setting 2: True)
  deg.noise_sigma = 0.0  # std of Gaussian noise on LR, in [0, 1] units (0: noise-free)
  deg.quantize_lr = True  # round LR to 8 bits, as the official train loop does
  deg.pca_samples = 30000  # random kernels the PCA is fit on (official creat_PCA.py)

  # ---- Data ----
  config.data = data = ml_collections.ConfigDict()
  data.source = "folder"  # "folder" (train_dir of images), "tfds" or "demo" (skimage photos)
  data.train_dir = ""  # folder of HR training images (DIV2K + Flickr2K), for "folder"
  data.tfds_name = "div2k"  # tfds dataset (HR images under the `hr` feature), for "tfds"
  data.tfds_split = "train"  # its split
  data.tfds_data_dir = ""  # tfds data_dir ("" = tfds default)
  data.hr_crop = 256  # HR training crop (LR crop = hr_crop // scale)
  data.use_flip = True  # random horizontal flips
  data.use_rot = True  # random vertical flips and transposes (the official `use_rot`)
  data.num_parallel_calls = -1  # tf.data parallelism (-1: AUTOTUNE)
  data.prefetch = 2  # batches prefetched to the host
  data.val_source = "folder"  # "folder" (val_dir of HR images), "demo" or "none"
  data.val_dir = ""  # folder of held-out HR images (e.g. Set5); Gaussian8-style LR made once
  data.val_sigma = 2.6  # isotropic sigma of the validation blur (setting 1 centre)
  data.val_crop = 0  # centre-crop validation HR to this size (0: whole modcropped image)
  data.val_max_images = 16  # at most this many validation images

  # ---- Optimisation (official: Adam(0.9, 0.99), lr 4e-4, MultiStep halving) ----
  config.seed = 0  # seeds data order, kernels, noise and init
  config.batch_size = 64  # global batch (divided over all devices of all hosts)
  config.num_train_steps = 800_000  # official niter (DANv2 setting 1)
  config.learning_rate = 4e-4  # official lr_G
  config.lr_milestones = (200_000, 400_000, 600_000)  # steps where lr is multiplied by gamma
  config.lr_gamma = 0.5  # official lr_gamma
  config.adam_b1 = 0.9  # official beta1
  config.adam_b2 = 0.99  # official beta2
  config.weight_decay = 0.0  # official weight_decay_G
  config.kernel_loss_weight = 1.0  # weight of the kernel term (v1: L1 on code; v2: on kernel)
  config.supervise_all_iterations = False  # official: only the last iteration's loss
  config.ema_decay = 0.0  # EMA of the weights (0: off; e.g. 0.999); evaluated with when on

  # ---- Loop, checkpoints, logs ----
  config.log_every_steps = 100  # scalars to TensorBoard
  config.eval_every_steps = 2500  # validation (official val_freq)
  config.checkpoint_every_steps = 2500  # official save_checkpoint_freq
  config.keep_checkpoints = 3  # most recent checkpoints kept
  config.keep_best = True  # also keep the best checkpoint by validation Y-PSNR
  config.image_every_steps = 2500  # LR/SR/HR and kernel images to TensorBoard
  config.init_checkpoint = ""  # start from these weights (e.g. converted official ones)
  config.write_sr_images = True  # write validation SR images to WORKDIR/val at the end
  return config
