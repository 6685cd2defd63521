"""DCLS-SR: parity with the official forward, parameter counts, weight conversion.

The fixtures hold numbers from running the official DCLS code (megvii-research/DCLS-SR,
`dcls_arch.py`) on CPU with torch 2.13 (a shim mapping the removed `torch.rfft`/`irfft` to
`torch.fft` and `.cuda()` to a no-op, outside the repo): reduced-width models (nf=16, nb=2,
ng=2, input_para=4) with random weights (stored as float16 values, loaded as float32 on both
sides), their inputs, the estimated kernel, the CLS branch output, the pre-clamp
upsampler output and the SR image.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from dan_jax import checkpoint
from dan_jax import config as config_lib
from dan_jax import convert
from dan_jax import errors
from dan_jax import models
from dan_jax.models import dcls
from dan_jax.models import spec as spec_lib

import test_notebooks  # the nbclient runner
from test_notebooks import kernel_env  # noqa: F401  (a pytest fixture of this module)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CASES = ("x4_setting1", "x4_setting2", "x2_setting1")
# Official DCLS(nf=64, nb=10, ng=5, input_para=256) parameter counts, counted by the official
# code (sum of numel); x4 setting 1 is the paper's 13.63M.
OFFICIAL_COUNTS = {
  (21, 4): 13626187,
  (31, 4): 19054027,
  (21, 2): 13478475,
  (21, 3): 13663115,
  (11, 2): 8905931,
}


def _state_dict(data) -> dict:
  return {k[2:]: data[k].astype(np.float32) for k in data.files if k.startswith("w/")}


def _rel_err(got, want) -> float:
  """Max abs error relative to the largest magnitude of the reference."""
  return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("kernel_size,scale", sorted(OFFICIAL_COUNTS))
def test_parameter_count_equals_official(kernel_size, scale):
  model = models.create_model(
    dict(version="DCLS", kernel_size=kernel_size, scale=scale, nf=64, nb=10, ng=5, input_para=256)
  )
  shapes = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  )
  assert models.count_params(shapes["params"]) == OFFICIAL_COUNTS[(kernel_size, scale)]


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_official(case):
  data = np.load(FIXTURES / f"parity_dcls_{case}.npz")
  config = convert.model_config_from_state_dict(_state_dict(data))
  assert (config.nf, config.nb, config.ng, config.input_para) == (16, 2, 2, 4)
  variables = convert.params_from_torch(_state_dict(data), config)
  model = models.create_model(config)
  out, inter = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True))(
    variables, data["lr"]
  )
  inter = inter["intermediates"]["restorer"]
  checks = {
    "kernel": (out.kernel[0], data["kernel"]),
    "cls": (inter["cls"]["__call__"][0], data["cls"]),
    "upscale": (inter["upsample"]["__call__"][0], data["upscale"]),
    "sr": (out.sr[0], data["sr"]),
  }
  for name, (got, want) in checks.items():
    assert got.shape == want.shape, name
    assert _rel_err(got, want) < 1e-4, (name, _rel_err(got, want))
  assert out.code.shape == (1, 2, 10)


def test_adaptive_pool_bins_overlap_like_pytorch():
  # AdaptiveAvgPool2d(3) over 4 pixels: bins [0,2), [1,3), [2,4).
  assert dcls.adaptive_pool_bins(4, 3) == [(0, 2), (1, 3), (2, 4)]
  assert dcls.adaptive_pool_bins(6, 3) == [(0, 2), (2, 4), (4, 6)]
  # The pooled image is each bin's mean, rows then columns (here 58 x 5 pixels).
  x = np.random.default_rng(0).uniform(size=(2, 58, 5, 3)).astype(np.float32)
  want = np.stack(
    [
      np.stack([x[:, a:b, c:d].mean((1, 2)) for c, d in dcls.adaptive_pool_bins(5, 3)], 1)
      for a, b in dcls.adaptive_pool_bins(58, 3)
    ],
    1,
  )
  np.testing.assert_allclose(dcls.adaptive_avg_pool(jnp.asarray(x), 3), want, rtol=1e-6)


def test_cls_deconvolution_undoes_a_shift_kernel():
  # A kernel with its one tap right of the centre blurs y[:, j] = x[:, j-1] (psf2otf puts
  # tap (c+i, c+j) at offset (i, j)); with |K| = 1 and no smoothness term the
  # deconvolution is exact away from the replicate-padded border.
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (2, 12, 16, 3)).astype(np.float32)
  k = np.zeros((2, 5, 5), np.float32)
  k[:, 2, 3] = 1.0
  got = np.asarray(
    dcls.cls_deconvolution(
      jnp.asarray(np.roll(x, 1, axis=2)), jnp.asarray(k), jnp.zeros((2, 3, 3, 3))
    )
  )
  np.testing.assert_allclose(got[:, :, :-1], x[:, :, :-1], atol=1e-5)
  # A delta kernel returns the input everywhere.
  delta = np.zeros((2, 5, 5), np.float32)
  delta[:, 2, 2] = 1.0
  got = dcls.cls_deconvolution(jnp.asarray(x), jnp.asarray(delta), jnp.zeros((2, 3, 3, 3)))
  np.testing.assert_allclose(got, x, atol=1e-5)


def test_dcls_config_errors_name_the_field():
  with pytest.raises(ValueError, match="model.loops must be 1"):
    models.create_model(dict(version="DCLS", loops=4))
  with pytest.raises(ValueError, match="model.kernel_size must be one of"):
    models.create_model(dict(version="DCLS", kernel_size=15))
  spec = models.create_model(dict(version="DCLS")).spec
  assert spec.estimator_nb == 3 and spec.remat == "auto"
  # "auto": rematerialised groups on the CPU, every activation kept on GPUs and TPUs (an
  # explicit mode stays what it is everywhere).
  assert spec_lib.remat_mode(spec) == "groups"  # the tests run on the CPU
  assert spec_lib.remat_mode(spec, "tpu") == spec_lib.remat_mode(spec, "gpu") == "none"
  blocks = models.create_model(dict(version="DCLS", remat="blocks")).spec
  assert spec_lib.remat_mode(blocks, "tpu") == "blocks"
  assert models.create_model(dict(version="DANv2")).spec.remat == "none"
  with pytest.raises(
    ValueError,
    match=r"model.remat must be one of \('none', 'groups', "
    r"'blocks', 'auto'\), got 'all'",
  ):
    models.create_model(dict(version="DCLS", remat="all"))
  with pytest.raises(ValueError, match="model.remat is for DCLS only"):
    models.create_model(dict(version="DANv2", remat="groups"))


def test_bad_remat_in_a_training_config_is_one_clear_error():
  from dan_jax import config as config_lib
  from dan_jax import train_config
  from dan_jax.errors import TrainingError

  c = config_lib.load(str(ROOT / "configs" / "test.py:dcls"))
  c.model.remat = "group"
  with pytest.raises(TrainingError, match=r"^config.model.remat must be one of"):
    train_config.validate_config(c)


@pytest.mark.slow  # ~30-60 s on 2 cores: compiles four Restorer gradients
def test_remat_gives_the_gradients_of_no_remat():
  # The Restorer (where remat acts) of two groups of two blocks, so both levels wrap more
  # than one module; the model-level switch is `ModelSpec.remat` (checked above).
  rng = np.random.default_rng(0)
  lr = jnp.asarray(rng.uniform(size=(2, 10, 10, 3)), jnp.float32)
  kernel = rng.uniform(size=(2, 5, 5))
  kernel = jnp.asarray(kernel / kernel.sum((1, 2), keepdims=True), jnp.float32)
  # The reference is unrolled (the default); `Restorer.scan` runs the groups and blocks as
  # scans over their stacked parameters (same tree), in each remat mode.
  grads, temp, convs = {}, {}, {}
  modes = [m for m in spec_lib.REMAT_MODES if m != "auto"]  # what a Restorer is given
  for mode, scan in [(m, True) for m in modes] + [("unrolled", False)]:
    restorer = dcls.Restorer(
      nf=16, nb=2, ng=2, scale=2, gemm_grad=True, remat="none" if mode == "unrolled" else mode
    )
    restorer = restorer.clone(scan=scan)
    params = restorer.init(jax.random.key(0), lr, kernel)["params"]
    loss = lambda p, r=restorer: jnp.mean(jnp.abs(r.apply({"params": p}, lr, kernel) - 0.5))
    step = jax.jit(jax.grad(loss)).lower(params).compile()
    grads[mode] = step(params)
    temp[mode] = step.memory_analysis().temp_size_in_bytes
    convs[mode] = step.as_text().count(" convolution(")
  # The compiled step really keeps less (nn.remat's barriers did not survive XLA:CPU).
  assert temp["groups"] < temp["none"] and temp["blocks"] < temp["none"], temp
  # One scan body per level: the 2 x 2 blocks compile to one block's convolutions.
  assert max(convs[m] for m in modes) < convs["unrolled"] - 30, convs
  ref = jax.tree_util.tree_leaves_with_path(grads["unrolled"])
  assert sum(float(np.abs(g).max()) > 0 for _, g in ref) > len(ref) // 2
  top = max(float(np.abs(g).max()) for _, g in ref)
  for mode in modes:
    got = jax.tree_util.tree_leaves(grads[mode])
    assert len(got) == len(ref)
    for (path, want), g in zip(ref, got):
      # Relative to the leaf's size, with a floor at the gradient's overall size: a bias
      # gradient near 5e-4 differed by 9e-9 on an AVX2 EPYC (summation order only).
      scale = float(np.abs(want).max()) + 0.1 * top
      err = float(np.abs(np.asarray(g) - want).max())
      assert err <= 1e-5 * scale, (mode, path, err, scale, top)


@pytest.mark.slow  # compiles train steps (~10 s): out of the fast lane
def test_convert_cli_reads_the_architecture_off_dcls_weights(tmp_path):
  data = np.load(FIXTURES / "parity_dcls_x2_setting1.npz")
  official = tmp_path / "DCLS_x2.npz"
  np.savez(official, **{"module." + k: v for k, v in _state_dict(data).items()})
  pca = np.random.default_rng(0).normal(size=(21 * 21, 10)).astype(np.float32)
  np.save(tmp_path / "pca.npy", pca)
  out = tmp_path / "converted"
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "dan_jax.convert",
      f"--official={official}",
      f"--out={out}",
      f"--pca={tmp_path / 'pca.npy'}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 0, res.stderr
  assert "DCLS x2" in res.stdout
  model_config, variables, _ = checkpoint.load_model(str(out))
  assert model_config.version == "DCLS" and model_config.scale == 2
  assert model_config.kernel_size == 21 and model_config.estimator_nb == 3
  out_ = jax.jit(models.create_model(model_config).apply)(variables, data["lr"])
  assert _rel_err(out_.sr[0], data["sr"]) < 1e-4
  np.testing.assert_allclose(
    out_.code[0], data["kernel"].reshape(2, -1) @ pca, rtol=1e-4, atol=1e-5
  )
  # A missing PCA file fails with one clear line.
  bad = subprocess.run(
    [
      sys.executable,
      "-m",
      "dan_jax.convert",
      f"--official={official}",
      f"--out={tmp_path / 'x'}",
      f"--pca={tmp_path / 'missing.npy'}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 2 and bad.stderr.startswith("error: no such PCA file")
  assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("kernel_size", (21, 31, 11))
def test_reformulated_kernel_matches_official_correction_loss(kernel_size):
  # Official CorrectionLoss(eps=1e-20) on random smooth HR, blurred by an anisotropic
  # Gaussian and bicubic-downsampled (torch F.interpolate; any resize gives a valid pair).
  data = np.load(FIXTURES / "dcls_kernel_loss.npz")
  tag = f"k{kernel_size}"
  target = dcls.reformulated_kernel(data[f"{tag}/lr_blurred"], data[f"{tag}/lr_clean"], kernel_size)
  assert _rel_err(target, data[f"{tag}/target"]) < 1e-4
  loss = np.mean(np.abs(data[f"{tag}/k_pred"] - np.asarray(target)))
  np.testing.assert_allclose(loss, data[f"{tag}/loss"], rtol=1e-4)


# ----------------------------------------------------------------------------- training

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.parametrize(
  "name,scale,kernel,sig_max",
  [
    ("x2", 2, 21, 2.0),
    ("x3", 3, 21, 3.0),
    ("x4", 4, 21, 4.0),
    ("x2_setting2", 2, 11, 5.0),
    ("x4_setting2", 4, 31, 5.0),
  ],
)
def test_dcls_configs_follow_the_official_yamls(name, scale, kernel, sig_max):
  from dan_jax import train_config

  c = config_lib.load(str(ROOT / "configs" / f"{name}.py:dcls"))
  spec = train_config.validate_config(c)
  assert spec.version == "DCLS" and spec.scale == scale and spec.loops == 1
  assert (spec.nf, spec.nb, spec.ng, spec.input_para, spec.estimator_nb) == (64, 10, 5, 256, 3)
  assert spec.kernel_size == c.degradation.kernel_size == kernel
  assert c.degradation.sig_max == sig_max
  assert c.batch_size == 64 and c.data.hr_crop == 64 * scale
  assert (c.learning_rate, c.adam_b1, c.adam_b2, c.lr_gamma) == (4e-4, 0.9, 0.99, 0.5)
  assert (c.num_train_steps, tuple(c.lr_milestones)) == (500_000, (200_000, 400_000))


@pytest.mark.slow  # ~75 s on 2 cores: compiles the DCLS train and eval steps
def test_dcls_trains_with_the_reformulated_kernel_loss(tmp_path):
  from dan_jax import input_pipeline
  from dan_jax import train

  c = config_lib.load(str(ROOT / "configs" / "test.py:dcls"))
  pca = np.zeros((11 * 11, c.model.code_len), np.float32)
  batch = next(iter(input_pipeline.create_train_iterator(c, pca)))
  b, h = c.batch_size, c.data.hr_crop // c.model.scale
  assert batch["lr_blurred"].shape == batch["lr_clean"].shape == (b, h, h, 3)
  # The noise-free blurred LR is the 8-bit LR before rounding.
  assert np.abs(batch["lr_blurred"] - batch["lr"]).max() <= 0.5 / 255 + 1e-6
  result = train.train_and_evaluate(c, str(tmp_path))
  assert result["step"] == c.num_train_steps and np.isfinite(result["train_loss"])
  model_config, variables, step = checkpoint.load_model(str(tmp_path))
  assert model_config.version == "DCLS" and step == c.num_train_steps
  out = models.create_model(model_config).apply(variables, batch["lr"][:2])
  assert out.sr.shape == (1, 2, 2 * h, 2 * h, 3) and out.kernel.shape == (1, 2, 11, 11)


def test_init_follows_the_official_constructors():
  model = models.create_model(dict(version="DCLS", nf=16, nb=1, ng=1, input_para=8))
  params = models.init_variables(model, 0, np.zeros((441, 10), np.float32))["params"]
  dec = params["estimator"]["dec1"]["kernel"]  # Kaiming normal, fan_in = input_para
  assert dec.any() and not params["estimator"]["dec1"]["bias"].any()
  assert 0.8 < dec.std() * np.sqrt(8 / 2) < 1.2
  feat = params["restorer"]["feature0"]["conv1"]["kernel"]  # Kaiming x 0.1
  assert 0.08 < feat.std() * np.sqrt(16 * 9 / 2) < 0.12
  head = params["restorer"]["head1"]["kernel"]  # PyTorch default U(+-1/sqrt(fan_in))
  assert np.abs(head).max() <= 1 / np.sqrt(16 * 9) and params["restorer"]["head1"]["bias"].any()


def test_predictor_runs_dcls_whole_images_and_refuses_tiles():
  from dan_jax import predict

  data = np.load(FIXTURES / "parity_dcls_x4_setting1.npz")
  config = convert.model_config_from_state_dict(_state_dict(data))
  variables = convert.params_from_torch(_state_dict(data), config)
  predictor = predict.Predictor(config, variables)
  pred = predictor.predict(data["lr"][0])
  assert predictor.has_kernel and not predictor.tiled_is_exact
  assert _rel_err(pred.sr, data["sr"][0]) < 1e-4
  assert _rel_err(pred.kernel, data["kernel"][0]) < 1e-4
  with pytest.raises(errors.InferenceError, match="tiled inference is not available for DCLS"):
    predict.Predictor(config, variables, tile=8)


@pytest.mark.slow  # ~25 s on 2 cores
def test_dcls_resumed_run_matches_uninterrupted_run(tmp_path):
  from dan_jax import train

  def config(steps):
    c = config_lib.load(str(ROOT / "configs" / "test.py:dcls"))
    c.num_train_steps, c.data.val_source, c.checkpoint_every_steps = steps, "none", 0
    return c

  straight = train.train_and_evaluate(config(4), str(tmp_path / "straight"))
  train.train_and_evaluate(config(2), str(tmp_path / "resumed"))
  resumed = train.train_and_evaluate(config(4), str(tmp_path / "resumed"))
  assert resumed["train_loss"] == straight["train_loss"]
  a = checkpoint.load_model(str(tmp_path / "straight"))[1]["params"]
  b = checkpoint.load_model(str(tmp_path / "resumed"))[1]["params"]
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------ every tool takes DCLS

# The smallest DCLS of configs/test.py:dcls (x2, 11x11 kernels: the smallest filter stack).
TINY_DCLS = dict(
  version="DCLS",
  scale=2,
  nf=16,
  nb=1,
  ng=1,
  loops=1,
  kernel_size=11,
  code_len=10,
  estimator_nf=8,
  estimator_nb=1,
  input_para=8,
)


@pytest.fixture(scope="module")
def ckpt_dcls(tmp_path_factory) -> str:
  """A checkpoint of TINY_DCLS (official init, seed 0) with an orthonormal PCA."""
  d = tmp_path_factory.mktemp("ckpt_dcls")
  pca = np.linalg.qr(np.random.default_rng(0).normal(size=(121, 10)))[0]
  model = models.create_model(TINY_DCLS)
  checkpoint.save_model(str(d), models.init_variables(model, 0, pca), TINY_DCLS)
  return str(d)


@pytest.mark.slow  # ~30 s on 2 cores: compiles the tiny DCLS for 4 image sizes
def test_evaluate_scores_dcls_kernels_like_danv2(tmp_path, ckpt_dcls, capsys):
  from dan_jax import evaluate
  from dan_jax import metrics

  import test_evaluate  # its Gaussian8/DIV2KRK makers

  test_evaluate._make_hr(tmp_path / "hr")
  kernels = test_evaluate._make_div2krk(tmp_path / "krk")
  work = tmp_path / "work"
  rc = evaluate.main(
    [
      "--checkpoint",
      ckpt_dcls,
      "--dataset",
      f"Tiny={tmp_path / 'hr'}",
      "--div2krk",
      str(tmp_path / "krk"),
      "--out",
      str(work),
      "--save_images",
      "--batch_size",
      "4",
    ]
  )
  out, err = capsys.readouterr()
  assert rc == 0, err
  (run_dir,) = [p for p in work.iterdir() if p.name.startswith("eval-")]
  rows = test_evaluate._read_csv(run_dir / "metrics.csv")
  assert len(rows) == 8 * 2 + 2 and rows[16]["dataset"] == "DIV2KRK"
  # Every row has kernel errors (Gaussian8: the isotropic kernel; DIV2KRK: the .mat one),
  # computed from the saved estimate, which is what the model gives for that LR image.
  assert all(r["kernel_mse"] and r["kernel_psnr"] for r in rows)
  model_config, variables, _ = checkpoint.load_model(ckpt_dcls)
  model = models.create_model(model_config)
  for n, row in ((1, rows[16]), (2, rows[17])):
    est = np.load(run_dir / "images" / "DIV2KRK" / f"im_{n}_x2_kernel.npy")
    assert float(row["kernel_mse"]) == pytest.approx(
      metrics.kernel_error(est, kernels[n])["mse"], rel=1e-9
    )
    lr = np.asarray(Image.open(tmp_path / "krk" / "lr_x2" / f"im_{n}.png"), np.float32) / 255
    direct = np.asarray(jax.jit(model.apply)(variables, lr[None]).kernel[0, 0])
    np.testing.assert_allclose(est, direct, atol=1e-5)
    assert est.shape == (11, 11) and est.sum() == pytest.approx(1.0, abs=1e-4)
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["model"]["version"] == "DCLS"
  assert summary["datasets"]["DIV2KRK"]["all"]["kernel_mse"] == pytest.approx(
    np.mean([float(r["kernel_mse"]) for r in rows[16:]]), rel=1e-9
  )
  assert any(l.startswith("DIV2KRK") for l in out.splitlines())


# Runs in a fresh process with N fake CPU devices; prints one JSON line.
_SHARDED = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    from dan_jax import checkpoint, models, parallel, steps, validation
    ckpt, out, n, part = sys.argv[1:5]
    assert jax.device_count() == int(n), jax.devices()
    model_config, variables, _ = checkpoint.load_model(ckpt)
    model = models.create_model(model_config)
    mesh = parallel.create_mesh()
    rng = np.random.default_rng(0)
    if part == "eval":  # the eval step sharded over the mesh (3 images of one size, 1 other)
      lrs = [rng.uniform(size=s).astype(np.float32) for s in [(12, 10, 3)] * 3 + [(9, 14, 3)]]
      val = {"lr": lrs, "hr": [np.kron(x, np.ones((2, 2, 1), np.float32)) for x in lrs]}
      scores, outputs = validation.evaluate(
          steps.make_eval_step(model, mesh),
          parallel.to_global(variables, parallel.replicated(mesh)), val, 2,
          parallel.data_sharded(mesh))
      np.savez(out, *[o[0] for o in outputs])
      print("RESULT " + json.dumps({"val": scores}))
      sys.exit(0)
    # Training: 2 steps of the official optimizer on a global batch of 4 (the reformulated
    # kernel loss needs the noise-free blurred and clean LR).
    lr = rng.uniform(size=(4, 12, 12, 3)).astype(np.float32)
    batch = {"lr": lr, "hr": rng.uniform(size=(4, 24, 24, 3)).astype(np.float32),
             "kernel": np.full((4, 11, 11), 1 / 121, np.float32),
             "code": np.zeros((4, 10), np.float32), "lr_clean": lr,
             "lr_blurred": np.clip(lr + 0.02 * rng.uniform(size=lr.shape), 0, 1
                                   ).astype(np.float32)}
    step, state, batch = steps.benchmark_step(model, variables, batch)
    losses = []
    for _ in range(2):
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
    params = jax.tree_util.tree_leaves(jax.device_get(state.params))
    np.savez(out, *params)
    print("RESULT " + json.dumps({"loss": losses,
                                  "devices": len(state.params["restorer"]["head1"]["kernel"]
                                                 .sharding.device_set)}))
""")


def _run_sharded(tmp_path, ckpt: str, part: str) -> dict:
  """{n: RESULT} of `_SHARDED` (part 'eval' or 'train') on 1 and 4 fake CPU devices."""
  results = {}
  for n in (1, 4):
    env = dict(
      os.environ,
      XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
      JAX_PLATFORMS="cpu",
      PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
      [sys.executable, "-c", _SHARDED, ckpt, str(tmp_path / f"{part}{n}.npz"), str(n), part],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    results[n] = json.loads(line[len("RESULT ") :])
  return results


@pytest.mark.slow  # ~40 s on 2 cores: two processes compile the tiny DCLS eval step
def test_dcls_validation_sharded_over_four_devices_equals_one(tmp_path, ckpt_dcls):
  # Estimator._compose builds each image's kernel from patches and a per-image dot: the
  # vmapped per-image convolution it replaced became a grouped convolution that XLA's SPMD
  # partitioner split into an invalid one on 4 devices.
  results = _run_sharded(tmp_path, ckpt_dcls, "eval")
  # The scores come from the uint8 SR images, where summation order may flip a level in
  # under 1% of pixels (checked below): SSIM moved by 3.5e-4 relative on an AVX2 EPYC.
  assert results[4]["val"] == pytest.approx(results[1]["val"], rel=1e-3)
  a, b = np.load(tmp_path / "eval1.npz"), np.load(tmp_path / "eval4.npz")
  assert a.files == b.files and len(a.files) == 4
  for k in a.files:  # the validation SR images, uint8: float rounding may flip a level
    diff = np.abs(a[k].astype(int) - b[k].astype(int))
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.01, (k, diff.max(), np.mean(diff > 0))


@pytest.mark.slow  # ~45 s on 2 cores: two processes compile the tiny DCLS train/eval steps
def test_dcls_training_sharded_over_four_devices_equals_one(tmp_path, ckpt_dcls):
  # The Fourier transforms are DFT matrix products (models/dft.py): an FFT in the sharded
  # step was gathered onto every device and then refused by XLA:CPU's FFT runtime.
  results = _run_sharded(tmp_path, ckpt_dcls, "train")  # validation: the test above
  assert results[1]["devices"] == 1 and results[4]["devices"] == 4
  # The tiny Estimator's kernel sums to nearly 0 at initialisation (first kernel loss ~6,
  # gradient norm ~7e4), so the summation order of 1 vs 4 devices shows at 1e-4 there.
  assert results[4]["loss"] == pytest.approx(results[1]["loss"], rel=1e-4)
  a, b = np.load(tmp_path / "train1.npz"), np.load(tmp_path / "train4.npz")
  assert a.files == b.files and len(a.files) > 4
  # Every parameter after 2 updates. Adam's first steps are lr * m / sqrt(v), about
  # +-lr even for a gradient near 0, whose sign the summation order can flip: such rare
  # elements may differ by up to 2 steps x 2 lr (4e-4), the rest must agree.
  for k in a.files:
    diff = np.abs(a[k] - b[k])
    off = diff > 1e-5 + 1e-4 * np.abs(b[k])
    assert np.mean(off) < 1e-3 and diff.max() <= 4 * 4e-4, (k, np.mean(off), diff.max())


@pytest.mark.slow  # ~20-25 s on 2 cores: a Jupyter kernel, the tiny DCLS compiled twice
def test_inference_notebook_takes_a_dcls_checkpoint(tmp_path, ckpt_dcls, kernel_env):  # noqa: F811
  # CPU_TEST makes its own DANv2, so the notebook runs as a user would: CHECKPOINT set.
  del kernel_env  # a Jupyter kernel of this interpreter (test_notebooks' fixture)
  nb = test_notebooks._execute(
    "inference.ipynb",
    {
      "CPU_TEST": False,
      "CHECKPOINT": ckpt_dcls,
      "IMAGE_PATH": "sample",
      "HR_CROP": 48,
      "WORKDIR": str(tmp_path / "work"),
      "REPO_DIR": str(ROOT),
    },
  )
  text = test_notebooks._text
  assert "DCLS x2, 1 alternating iterations" in text(test_notebooks._cell(nb, "checkpoint"))
  assert "Y-PSNR: bicubic" in text(test_notebooks._cell(nb, "run"))
  strip = text(test_notebooks._cell(nb, "strip"))
  lines = [l for l in strip.splitlines() if l.startswith("iteration ")]
  assert len(lines) == 1 and "kernel PSNR" in lines[0], strip
  (kernel,) = (tmp_path / "work" / "results").glob("*_kernel.npy")
  assert np.load(kernel).shape == (11, 11)


@pytest.mark.slow  # ~60 s on 2 cores: four formats converted and run, infer twice
def test_dcls_exports_at_one_size_and_infer_runs_it(tmp_path, ckpt_dcls, capsys):
  from dan_jax import export
  from dan_jax import infer

  out = tmp_path / "export"
  # Without --size: one error line, nothing written.
  assert export.main(["--checkpoint", ckpt_dcls, "--out", str(out), "--format", "stablehlo"]) == 2
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(err) == 1 and "DCLS artifacts take one LR size" in err[0] and not out.exists()
  # Every format, at 20x24 with a symbolic batch where the format has one.
  assert (
    export.main(
      [
        "--checkpoint",
        ckpt_dcls,
        "--out",
        str(out),
        "--size",
        "20x24",
        "--format",
        "stablehlo,savedmodel,tflite,onnx",
      ]
    )
    == 0
  ), capsys.readouterr().err
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["input"]["shape"] == ["b", 20, 24, 3]
  assert manifest["outputs"]["sr"]["shape"] == ["b", 40, 48, 3]
  for fmt in ("stablehlo", "savedmodel", "tflite", "onnx"):
    a = manifest["artifacts"][fmt]
    assert a["input_shape"][1:] == [20, 24, 3] and max(a["max_rel_diff"].values()) < 1e-3
    shapes = a["checked_input_shapes"]
    assert [s[1:3] for s in shapes] == [[20, 24]] * 2
    if fmt != "tflite":  # the batch stays symbolic: checked at 1 and 2
      assert a["input_shape"][0] == "b" and sorted(s[0] for s in shapes) == [1, 2]
  # infer --exported equals infer --checkpoint at that size, and refuses another size.
  rng = np.random.default_rng(0)
  src = tmp_path / "in"
  src.mkdir()
  Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(src / "fits.png")
  capsys.readouterr()
  assert (
    infer.main(
      ["--exported", str(out), "--input", str(src / "fits.png"), "--output", str(tmp_path / "a")]
    )
    == 0
  ), capsys.readouterr().err
  assert (
    infer.main(
      ["--checkpoint", ckpt_dcls, "--input", str(src / "fits.png"), "--output", str(tmp_path / "b")]
    )
    == 0
  ), capsys.readouterr().err
  a, b = (np.asarray(Image.open(tmp_path / d / "fits_x2.png")).astype(int) for d in "ab")
  assert a.shape == (40, 48, 3) and np.abs(a - b).max() <= 1
  Image.fromarray(rng.integers(0, 256, (24, 20, 3), np.uint8)).save(src / "other.png")
  capsys.readouterr()
  assert (
    infer.main(
      ["--exported", str(out), "--input", str(src / "other.png"), "--output", str(tmp_path / "c")]
    )
    == 1
  )
  err = capsys.readouterr().err
  assert (
    f"error: {src / 'other.png'}: this DCLS artifact takes 20x24 LR images only, got 24x20"
  ) in err, err
