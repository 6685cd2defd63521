"""The conversion command: official weights -> a checkpoint the rest of the project loads."""

import ast
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from dan_jax import checkpoint
from dan_jax import convert
from dan_jax import errors
from dan_jax import models

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.mark.slow  # ~6-18 s on 2 cores: out of the fast lane
def test_convert_cli_writes_a_loadable_checkpoint_with_the_official_outputs(tmp_path):
  data = np.load(FIXTURES / "parity_danv2_x4.npz")
  meta = ast.literal_eval(str(data["meta"]))
  state_dict = {"module." + k[3:]: data[k] for k in data.files if k.startswith("sd/")}
  official = tmp_path / "official.npz"
  np.savez(official, **state_dict)
  out = tmp_path / "converted"
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "dan_jax.convert",
      f"--official={official}",
      f"--out={out}",
      "--loops=3",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 0, res.stderr
  assert "DANv2 x4" in res.stdout
  model_config, variables, step = checkpoint.load_model(str(out))
  assert step == 0
  # The architecture was read off the weights.
  for ours, official_name in (
    ("nf", "nf"),
    ("nb", "nb"),
    ("ng", "ng"),
    ("scale", "upscale"),
    ("kernel_size", "kernel_size"),
  ):
    assert model_config[ours] == meta[official_name]
  assert model_config.estimator_nf == 64 and model_config.loops == 3
  model = models.create_model(model_config)
  out_ = jax.jit(model.apply)(variables, data["lr"].transpose(0, 2, 3, 1))
  want = data["sr"].transpose(0, 1, 3, 4, 2)
  np.testing.assert_allclose(out_.sr, want, rtol=0, atol=1e-4 * np.abs(want).max())
  # Converting again into the same place refuses and keeps the first checkpoint.
  again = subprocess.run(
    [sys.executable, "-m", "dan_jax.convert", f"--official={official}", f"--out={out}"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert again.returncode == 2 and again.stderr.startswith("error:")
  assert "Traceback" not in again.stderr
  assert checkpoint.load_model(str(out))[2] == 0


def test_infer_official_options_round_trip():
  data = np.load(FIXTURES / "parity_danv1_x2.npz")
  sd = {k[3:]: data[k] for k in data.files if k.startswith("sd/")}
  version, opts = convert.infer_official_options(sd)
  config = convert.model_config_from_official(version, **opts)
  variables = convert.params_from_torch(sd, config)
  assert models.count_params(variables["params"]) == int(data["nparams"])


def test_model_config_from_official_applies_each_familys_defaults():
  # DCLS: its own constructor defaults (one pass, nb 16, input_para 128, reduction 4, an
  # Estimator as wide as the Restorer with 3 blocks), not DAN's (loops 8).
  dcls = convert.model_config_from_official("DCLS")
  assert (dcls.loops, dcls.nb, dcls.ng, dcls.input_para, dcls.reduction) == (1, 16, 5, 128, 4)
  assert (dcls.estimator_nf, dcls.estimator_nb, dcls.kernel_size) == (64, 3, 21)
  small = convert.model_config_from_official(
    "DCLS", nf=32, nb=2, ng=1, reduction=2, upscale=2, input_para=64, kernel_size=11
  )
  assert (small.nf, small.reduction, small.scale, small.input_para) == (32, 2, 2, 64)
  assert small.estimator_nf == 32 and small.kernel_size == 11
  with pytest.raises(ValueError, match="unknown official DCLS option"):
    convert.model_config_from_official("DCLS", loop=4)
  dan = convert.model_config_from_official("DANv2")
  assert (dan.loops, dan.nb, dan.code_len) == (8, 16, 10)
  with pytest.raises(ValueError, match="unknown official"):
    convert.model_config_from_official("DANv2", reduction=4)
  with pytest.raises(ValueError, match="no official weights"):
    convert.model_config_from_official("baseline")


def test_params_from_torch_maps_every_family():
  data = np.load(FIXTURES / "parity_dcls_x2_setting1.npz")
  sd = {k[2:]: data[k] for k in data.files if k.startswith("w/")}
  version, opts = convert.infer_official_options(sd)
  assert version == "DCLS" and opts["reduction"] == 4
  config = convert.model_config_from_official(version, **opts)
  assert config == convert.model_config_from_state_dict(sd)
  pca = np.ones((config.kernel_size**2, config.code_len), np.float32)
  variables = convert.params_from_torch(sd, config, pca)  # the generic call, no KeyError
  np.testing.assert_array_equal(variables["pca"]["matrix"], pca)
  shapes = jax.eval_shape(
    lambda: models.create_model(config).init(jax.random.key(0), np.zeros((1, 8, 8, 3)))
  )
  assert jax.tree_util.tree_structure(variables["params"]) == jax.tree_util.tree_structure(
    shapes["params"]
  )
  with pytest.raises(errors.ConversionError, match="known family"):
    convert.infer_official_options({"foo.weight": np.zeros(3)})
