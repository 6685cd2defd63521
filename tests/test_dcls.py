"""DCLS-SR: parity with the official forward, parameter counts, weight conversion.

The fixtures hold numbers from running the official DCLS code (megvii-research/DCLS-SR,
`dcls_arch.py`) on CPU with torch 2.13 (a shim mapping the removed `torch.rfft`/`irfft` to
`torch.fft` and `.cuda()` to a no-op, outside the repo): reduced-width models (nf=16, nb=2,
ng=2, input_para=4) with random weights (stored as float16 values, loaded as float32 on both
sides), their inputs, the estimated kernel, the CLS branch output, the pre-clamp
upsampler output and the SR image.
"""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dan_jax import checkpoint
from dan_jax import convert
from dan_jax import models
from dan_jax.models import dcls

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CASES = ("x4_setting1", "x4_setting2", "x2_setting1")
# Official DCLS(nf=64, nb=10, ng=5, input_para=256) parameter counts, counted by the official
# code (sum of numel); x4 setting 1 is the paper's 13.63M.
OFFICIAL_COUNTS = {(21, 4): 13626187, (31, 4): 19054027, (21, 2): 13478475,
                   (21, 3): 13663115, (11, 2): 8905931}


def _state_dict(data) -> dict:
  return {k[2:]: data[k].astype(np.float32) for k in data.files if k.startswith("w/")}


def _rel_err(got, want) -> float:
  """Max abs error relative to the largest magnitude of the reference."""
  return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("kernel_size,scale", sorted(OFFICIAL_COUNTS))
def test_parameter_count_equals_official(kernel_size, scale):
  model = models.create_model(dict(version="DCLS", kernel_size=kernel_size, scale=scale,
                                   nf=64, nb=10, ng=5, input_para=256))
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  assert models.count_params(shapes["params"]) == OFFICIAL_COUNTS[(kernel_size, scale)]


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_official(case):
  data = np.load(FIXTURES / f"parity_dcls_{case}.npz")
  config = convert.infer_dcls_config(_state_dict(data))
  assert (config.nf, config.nb, config.ng, config.input_para) == (16, 2, 2, 4)
  variables = convert.dcls_params_from_torch(_state_dict(data), config)
  model = models.create_model(config)
  out, inter = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True))(
      variables, data["lr"])
  inter = inter["intermediates"]["restorer"]
  checks = {"kernel": (out.kernel[0], data["kernel"]),
            "cls": (inter["cls"]["__call__"][0], data["cls"]),
            "upscale": (inter["upsample"]["__call__"][0], data["upscale"]),
            "sr": (out.sr[0], data["sr"])}
  for name, (got, want) in checks.items():
    assert got.shape == want.shape, name
    assert _rel_err(got, want) < 1e-4, (name, _rel_err(got, want))
  assert out.code.shape == (1, 2, 10)


def test_adaptive_pool_bins_overlap_like_pytorch():
  # AdaptiveAvgPool2d(3) over 4 pixels: bins [0,2), [1,3), [2,4).
  m = dcls.adaptive_avg_pool_matrix(4, 3)
  np.testing.assert_allclose(m, [[.5, .5, 0, 0], [0, .5, .5, 0], [0, 0, .5, .5]])
  np.testing.assert_allclose(dcls.adaptive_avg_pool_matrix(6, 3).sum(1), 1.0)


def test_cls_deconvolution_undoes_a_shift_kernel():
  # A kernel with its one tap right of the centre blurs y[:, j] = x[:, j-1] (psf2otf puts
  # tap (c+i, c+j) at offset (i, j)); with |K| = 1 and no smoothness term the
  # deconvolution is exact away from the replicate-padded border.
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (2, 12, 16, 3)).astype(np.float32)
  k = np.zeros((2, 5, 5), np.float32)
  k[:, 2, 3] = 1.0
  got = np.asarray(dcls.cls_deconvolution(jnp.asarray(np.roll(x, 1, axis=2)), jnp.asarray(k),
                                          jnp.zeros((2, 3, 3, 3))))
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
  assert models.create_model(dict(version="DCLS")).spec.estimator_nb == 3


@pytest.mark.slow  # compiles train steps (~10 s): out of the fast lane
def test_convert_cli_reads_the_architecture_off_dcls_weights(tmp_path):
  data = np.load(FIXTURES / "parity_dcls_x2_setting1.npz")
  official = tmp_path / "DCLS_x2.npz"
  np.savez(official, **{"module." + k: v for k, v in _state_dict(data).items()})
  pca = np.random.default_rng(0).normal(size=(21 * 21, 10)).astype(np.float32)
  np.save(tmp_path / "pca.npy", pca)
  out = tmp_path / "converted"
  res = subprocess.run([sys.executable, "-m", "dan_jax.convert", f"--official={official}",
                        f"--out={out}", f"--pca={tmp_path / 'pca.npy'}"],
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  assert "DCLS x2" in res.stdout
  model_config, variables, _ = checkpoint.load_model(str(out))
  assert model_config.version == "DCLS" and model_config.scale == 2
  assert model_config.kernel_size == 21 and model_config.estimator_nb == 3
  out_ = jax.jit(models.create_model(model_config).apply)(variables, data["lr"])
  assert _rel_err(out_.sr[0], data["sr"]) < 1e-4
  np.testing.assert_allclose(out_.code[0], data["kernel"].reshape(2, -1) @ pca,
                             rtol=1e-4, atol=1e-5)
  # A missing PCA file fails with one clear line.
  bad = subprocess.run([sys.executable, "-m", "dan_jax.convert", f"--official={official}",
                        f"--out={tmp_path / 'x'}", f"--pca={tmp_path / 'missing.npy'}"],
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.startswith("error: no such PCA file")
  assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("kernel_size", (21, 31, 11))
def test_reformulated_kernel_matches_official_correction_loss(kernel_size):
  # Official CorrectionLoss(eps=1e-20) on random smooth HR, blurred by an anisotropic
  # Gaussian and bicubic-downsampled (torch F.interpolate; any resize gives a valid pair).
  data = np.load(FIXTURES / "dcls_kernel_loss.npz")
  tag = f"k{kernel_size}"
  target = dcls.reformulated_kernel(data[f"{tag}/lr_blurred"], data[f"{tag}/lr_clean"],
                                    kernel_size)
  assert _rel_err(target, data[f"{tag}/target"]) < 1e-4
  loss = np.mean(np.abs(data[f"{tag}/k_pred"] - np.asarray(target)))
  np.testing.assert_allclose(loss, data[f"{tag}/loss"], rtol=1e-4)


# ----------------------------------------------------------------------------- training

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.parametrize("name,scale,kernel,sig_max", [
    ("x2", 2, 21, 2.0), ("x3", 3, 21, 3.0), ("x4", 4, 21, 4.0),
    ("x2_setting2", 2, 11, 5.0), ("x4_setting2", 4, 31, 5.0)])
def test_dcls_configs_follow_the_official_yamls(name, scale, kernel, sig_max):
  from dan_jax import train  # pylint: disable=g-import-not-at-top
  c = checkpoint.load_config_file(str(ROOT / "configs" / f"{name}.py:dcls"))
  spec = train.validate_config(c)
  assert spec.version == "DCLS" and spec.scale == scale and spec.loops == 1
  assert (spec.nf, spec.nb, spec.ng, spec.input_para, spec.estimator_nb) == (64, 10, 5, 256, 3)
  assert spec.kernel_size == c.degradation.kernel_size == kernel
  assert c.degradation.sig_max == sig_max
  assert c.batch_size == 64 and c.data.hr_crop == 64 * scale
  assert (c.learning_rate, c.adam_b1, c.adam_b2, c.lr_gamma) == (4e-4, 0.9, 0.99, 0.5)
  assert (c.num_train_steps, tuple(c.lr_milestones)) == (500_000, (200_000, 400_000))


@pytest.mark.slow  # ~75 s on 2 cores: compiles the DCLS train and eval steps
def test_dcls_trains_with_the_reformulated_kernel_loss(tmp_path):
  from dan_jax import input_pipeline, train  # pylint: disable=g-import-not-at-top
  c = checkpoint.load_config_file(str(ROOT / "configs" / "test.py:dcls"))
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
  from dan_jax import predict  # pylint: disable=g-import-not-at-top
  data = np.load(FIXTURES / "parity_dcls_x4_setting1.npz")
  config = convert.infer_dcls_config(_state_dict(data))
  variables = convert.dcls_params_from_torch(_state_dict(data), config)
  predictor = predict.Predictor(config, variables)
  pred = predictor.predict(data["lr"][0])
  assert predictor.has_kernel and not predictor.tiled_is_exact
  assert _rel_err(pred.sr, data["sr"][0]) < 1e-4
  assert _rel_err(pred.kernel, data["kernel"][0]) < 1e-4
  with pytest.raises(predict.InferenceError, match="tiled inference is not available for DCLS"):
    predict.Predictor(config, variables, tile=8)


@pytest.mark.slow  # ~25 s on 2 cores
def test_dcls_resumed_run_matches_uninterrupted_run(tmp_path):
  from dan_jax import train  # pylint: disable=g-import-not-at-top

  def config(steps):
    c = checkpoint.load_config_file(str(ROOT / "configs" / "test.py:dcls"))
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
