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
