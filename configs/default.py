"""Default config: DANv2 x4, setting 1 (isotropic Gaussian kernels), as the official YAML.

  python -m dan_jax.main --config=configs/default.py --workdir=/tmp/dan \
      --config.data.train_dir=/data/DIV2K_Flickr2K/HR

`get_config()` is the official DANv2 x4 setting-1 recipe; `official(version, scale,
setting)` gives the recipe of any official training YAML (configs/x2.py, x3.py, x4.py,
x2_setting2.py, x4_setting2.py call it; demo.py and test.py shrink it). Every field is
commented; `--config.a.b=value` overrides any.
"""

import ml_collections

VERSIONS = {"v1": "DANv1", "v2": "DANv2", "dcls": "DCLS", "baseline": "baseline"}
# Official GT_size (HR crop) per scale; the LR crop is 64 px in every official YAML.
HR_CROP = {2: 128, 3: 192, 4: 256}
# Validation blur: the 5th of the 8 Gaussian8 widths of each scale (x4: 2.6, as default).
VAL_SIGMA = {2: 1.26, 3: 1.95, 4: 2.6}


def version_from_arg(arg: str, default: str = "v2") -> str:
  """'v1'/'DANv1' -> 'DANv1', 'v2'/'DANv2'/'' -> 'DANv2', 'dcls' -> 'DCLS', 'baseline'
  -> 'baseline' (`FILE:ARG`)."""
  key = (arg or default).strip().lower().replace("dan", "")
  if key not in VERSIONS:
    raise ValueError(
      f"config argument must be v1, v2, dcls or baseline (e.g. --config=configs/x4.py:v1), "
      f"got {arg!r}"
    )
  return VERSIONS[key]


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The official DANv2 x4 setting-1 training recipe (arg "v1": DANv1's)."""
  if arg:
    return official(version_from_arg(arg), scale=4, setting=1)
  config = ml_collections.ConfigDict()

  # ---- Model (dan_jax.models.spec.ModelSpec) ----
  config.model = model = ml_collections.ConfigDict()
  model.version = "DANv2"  # a key of dan_jax.models.FAMILIES: DANv1, DANv2, DCLS, baseline
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
  # Conv kernel gradients: "gemm" (one GEMM per conv: fast on CPU; refused on GPU/TPU, where
  # it would be a convolution with a whole-image window), "xla", "auto" (gemm on CPU only).
  model.conv_backward = "auto"
  # DCLS only: what the backward pass recomputes instead of keeping (less memory; on CPU no
  # slower, measured):
  # "none" keeps every activation, "groups"/"blocks" keep only each DPCAG group's/DPCAB
  # block's inputs and recompute its forward (benchmarks/RESULTS.md, DCLS section; the
  # official DCLS configs use "groups").
  model.remat = "none"

  # ---- Degradation synthesis (dan_jax.degradation.KernelSpec + noise) ----
  config.degradation = deg = ml_collections.ConfigDict()
  deg.kernel_size = model.get_ref("kernel_size")  # kernel size, tied to the model's
  deg.sig_min = 0.2  # sigma range, also of generalized/plateau kernels (setting 1: U(0.2, 4.0))
  deg.sig_max = 4.0
  deg.rate_iso = 1.0  # fraction of isotropic kernels (setting 1: 1.0; setting 2: 0.0)
  deg.random_disturb = False  # official multiplicative kernel noise (setting 2: True)
  # Kernel family: "gaussian" (official), "generalized_gaussian", "plateau", "motion", or a
  # mixture "gaussian:0.5,motion:0.5" (weights normalised). Named spaces for ablations:
  # degradation.kernel_space("iso"|"aniso"|"generalized"|"plateau"|"motion"|"mixed").
  deg.family = "gaussian"
  deg.beta_min = 0.5  # generalized Gaussian exp(-0.5 q^beta): beta range (1 = Gaussian)
  deg.beta_max = 4.0
  deg.plateau_beta_min = 1.0  # plateau 1 / (1 + q^beta): beta range
  deg.plateau_beta_max = 2.0
  deg.motion_len_min = 4.0  # motion blur path length range in pixels (shrunk to fit the kernel)
  deg.motion_len_max = 16.0
  deg.motion_steps = 8  # random-walk segments of a motion path
  deg.motion_turn = 0.6  # std of the path's direction change per segment, radians (0: straight)
  deg.motion_smooth = 0.5  # std (pixels) of the Gaussian smoothing the rasterised path (0: none)
  deg.noise_sigma = 0.0  # std of Gaussian noise on LR, in [0, 1] units (0: noise-free)
  deg.noise_sigma_max = 0.0  # > noise_sigma: per-image std ~ U(noise_sigma, noise_sigma_max)
  deg.jpeg_prob = 0.0  # probability of JPEG-compressing an LR image (0: never)
  deg.jpeg_quality_min = 30  # JPEG quality range (uniform integers, inclusive)
  deg.jpeg_quality_max = 95
  deg.quantize_lr = True  # round LR to 8 bits, as the official train loop does
  deg.pca_samples = 30000  # random kernels the PCA is fit on (official creat_PCA.py)

  # ---- Data ----
  config.data = data = ml_collections.ConfigDict()
  # "auto": "folder" when train_dir is set, else "tfds" (DIV2K via tensorflow_datasets,
  # downloaded on first use); "folder" (train_dir of images), "tfds" or "demo" (skimage).
  data.source = "auto"
  data.train_dir = ""  # folder(s) of HR training images (DIV2K + Flickr2K), for "folder"
  data.tfds_name = "div2k"  # tfds dataset (HR images under the `hr` feature), for "tfds"
  data.tfds_split = "train"  # its split
  data.tfds_data_dir = ""  # tfds data_dir ("" = tfds default)
  data.tfds_image_key = "hr"  # the tfds image feature read (div2k: "hr"; "lr" is ignored)
  data.tfds_download = True  # let tfds download/prepare a missing dataset (else an error)
  data.hr_crop = 256  # HR training crop (LR crop = hr_crop // scale)
  data.use_flip = True  # random horizontal flips
  data.use_rot = True  # random vertical flips and transposes (the official `use_rot`)
  data.num_parallel_calls = -1  # tf.data parallelism (-1: AUTOTUNE)
  data.prefetch = 2  # batches prefetched to the host
  data.cache_decoded = False  # decode all training images once into host RAM (same batches)
  # Validation: "demo" (the held-out scikit-image photos; always available), "folder"
  # (val_dir of HR images, e.g. Set5) or "none".
  data.val_source = "demo"
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
  # Precision of the training step's float32 matmuls/convolutions: "default" (the platform's
  # fast path: one bf16 pass on TPU, TF32 on Ampere+ GPUs, float32 on CPU) or "highest"
  # (float32 everywhere, ~3-6x slower on TPU/GPU). Default "default": SGD noise dwarfs the
  # ~1e-3 relative rounding of one pass (PyTorch also trains convolutions in TF32 by
  # default, torch.backends.cudnn.allow_tf32), and benchmarks/accelerator_check.py
  # measures the gradient and loss-curve gap on a device. Validation in training and
  # evaluate/infer always run at "highest". bfloat16 activations: model.dtype.
  config.matmul_precision = "default"

  # JAX's persistent compilation cache (training, and evaluate/infer's flag of the same
  # name): a resumed run skips recompiling. "auto": $XDG_CACHE_HOME (else ~/.cache)
  # /dan_jax/jax_compilation_cache; a folder or gs:// URL; "" turns it off.
  config.compilation_cache_dir = "auto"

  # ---- Loop, checkpoints, logs ----
  config.log_every_steps = 100  # scalars to TensorBoard
  config.eval_every_steps = 2500  # validation (official val_freq)
  config.checkpoint_every_steps = 2500  # official save_checkpoint_freq
  config.keep_checkpoints = 3  # most recent checkpoints kept
  config.keep_best = True  # also keep the best checkpoint by validation Y-PSNR
  config.image_every_steps = 2500  # LR/SR/HR and kernel images to TensorBoard (at evals)
  config.init_checkpoint = ""  # start from these weights (e.g. converted official ones)
  config.write_sr_images = True  # write validation SR images to WORKDIR/val at the end
  # TensorBoard event files go here ("" = the workdir). TensorFlow writes them through its
  # own file system, which reaches real gs:// buckets but ignores storage emulators.
  config.tensorboard_dir = ""
  # SIGTERM (preemption) saves a checkpoint and exits 0. With several processes they agree
  # on the step every this many steps (one cross-process all-gather); one process: every step.
  config.preemption_check_every_steps = 10

  # ---- Recovery (unattended runs; README "Reliability") ----
  # A step whose loss or gradient is NaN/inf is skipped on the device (no update, counted
  # in train/skipped_steps). These many skipped steps in a row (checked once per logging
  # window) roll back to the last checkpoint and move the data stream past the failed
  # batches (0: never roll back for this).
  config.max_consecutive_nonfinite = 20
  # Validation Y-PSNR this many dB below the best so far rolls back to the last checkpoint
  # whose validation passed (or the best one) (0: off). DCLS-SR reloads below 20 dB.
  config.collapse_psnr_drop = 3.0
  # Rollbacks in a row (none of them followed by a checkpoint past the failure) before
  # the run stops with an error naming the step, the last good checkpoint and what to do.
  config.max_rollbacks = 3
  config.clip_grad_norm = 0.0  # clip the gradient to this global norm (0: off, as official)
  # Fault injection, for tests of the above only (off by default). Steps are numbered as
  # in an uninterrupted run (they hit batch step-1): after a rollback they do not recur.
  config.debug = debug = ml_collections.ConfigDict()
  debug.nan_at_steps = ()  # the loss and gradient of these steps are NaN
  debug.collapse_at_step = 0  # this step's update is multiplied by 1000 (0: off)
  return config


def official(version: str = "DANv2", scale: int = 4, setting: int = 1) -> ml_collections.ConfigDict:
  """The official training recipe (codes/config/DANv{1,2}/options/setting{1,2}/train).

  Common to all: batch 64, LR crop 64 (HR crop 64 * scale), flips and rotations, Adam
  (0.9, 0.99), lr 4e-4 halved at the milestones, L1 on SR plus L1 on the kernel term,
  4 iterations, code length 10.
  """
  if version not in VERSIONS.values():
    raise ValueError(f"version must be DANv1, DANv2, DCLS or baseline, got {version!r}")
  if version == "DCLS":
    return official_dcls(scale, setting)
  if version == "baseline":
    return baseline(scale, setting)
  if scale not in HR_CROP:
    raise ValueError(f"scale must be 2, 3 or 4, got {scale!r}")
  if setting not in (1, 2) or (setting == 2 and scale == 3):
    raise ValueError(f"setting 2 exists for x2 and x4 only; got setting {setting} x{scale}")
  config = get_config()
  model, deg = config.model, config.degradation
  model.version = version
  model.scale = scale
  config.data.hr_crop = HR_CROP[scale]
  config.data.val_sigma = VAL_SIGMA[scale]
  if version == "DANv1":
    model.nb = 40  # 40 CRBs (ng is unused)
    config.num_train_steps = 400_000
    config.lr_milestones = (200_000,)
  else:
    # The official DANv2 setting-2 YAMLs say nb 40 without ng: they were copied from
    # DANv1's. The DANv2 architecture of the paper and of the released weights is
    # nb 10, ng 5, which we use for both settings.
    model.nb, model.ng = 10, 5
    if setting == 1:
      config.num_train_steps = 800_000
      config.lr_milestones = (200_000, 400_000, 600_000)
    else:  # the setting-2 YAML's schedule (the same copy of DANv1's)
      config.num_train_steps = 400_000
      config.lr_milestones = (200_000,)
  if setting == 2:
    # Anisotropic Gaussians, sigma_x, sigma_y ~ U(0.6, 5), theta ~ U(-pi, pi), with the
    # official multiplicative kernel noise; evaluation on DIV2KRK (dan_jax.evaluate).
    deg.sig_min, deg.sig_max = 0.6, 5.0
    deg.rate_iso = 0.0
    deg.random_disturb = True
    # x2: 11x11 as the official YAML and DIV2KRK's x2 kernels. x4: 31x31, DIV2KRK's x4
    # kernel size, although the official x4 YAML says 21: a sigma of 5 needs +-3 sigma =
    # +-15 px of support, and 21x21 would cut the widest kernels at 2 sigma.
    model.kernel_size = 11 if scale == 2 else 31  # degradation.kernel_size follows
  return config


# DCLS setting-1 sigma range per scale (official DCLS YAMLs: U(0.2, 2/3/4) for x2/x3/x4).
DCLS_SIG_MAX = {2: 2.0, 3: 3.0, 4: 4.0}


def official_dcls(scale: int = 4, setting: int = 1) -> ml_collections.ConfigDict:
  """The official DCLS-SR recipe (megvii-research/DCLS-SR codes/config/DCLS/options/*/train).

  DCLS(nf 64, nb 10, ng 5, input_para 256), one pass; batch 64 of 64x64 LR crops; Adam
  (0.9, 0.99), lr 4e-4 (Restorer and Estimator alike), halved at 200k and 400k of 500k
  steps; loss L1(SR) + L1(kernel, reformulated kernel). Setting 1: isotropic sigma ~
  U(0.2, scale), 21x21; setting 2: as DAN's setting 2 (x2 11x11, x4 31x31, as the YAMLs).
  """
  config = official("DANv2", scale, setting)  # data, degradation and kernel size
  model = config.model
  model.version = "DCLS"
  model.nb, model.ng = 10, 5  # DPCABs per group, groups (official nb, ng)
  model.loops = 1  # one pass, not alternating
  model.estimator_nf = 64  # DCLS Estimator width (the official uses nf)
  model.estimator_nb = 3  # DCLS Estimator residual blocks (fixed to 3 officially)
  model.input_para = 256  # length of the Estimator's latent (official input_para)
  model.reduction = 4  # channel reduction of the CLS branch and the attention layers
  # "auto": recompute each DPCAG group in the backward on the CPU (0.3x the memory), keep
  # the activations on GPUs/TPUs (they fit; 21% fewer FLOPs); "groups", "blocks", "none".
  model.remat = "auto"
  if setting == 1:
    config.degradation.sig_max = DCLS_SIG_MAX[scale]
  config.num_train_steps = 500_000  # official niter
  config.lr_milestones = (200_000, 400_000)  # official lr_steps
  config.kernel_loss_weight = 1.0  # official: d_kr + d_sr
  return config


def baseline(scale: int = 4, setting: int = 1) -> ml_collections.ConfigDict:
  """The plain SR control (EDSR baseline: nf 64, 16 residual blocks, no kernel estimate)
  on DANv2's data, degradations and schedule: the SR loss only, one pass."""
  config = official("DANv2", scale, setting)
  model = config.model
  model.version = "baseline"
  model.nf, model.nb = 64, 16
  model.loops = 1
  return config
