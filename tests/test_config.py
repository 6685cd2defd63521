"""Tests of dan_jax.config: loading config specs, the one override rule, shipped configs."""

import json
import pathlib

import pytest

from dan_jax import config as config_lib
from dan_jax import errors

ROOT = pathlib.Path(__file__).parents[1]


def test_load_spec_with_argument_and_shipped_fallback(tmp_path, monkeypatch):
  v1 = config_lib.load(str(ROOT / "configs" / "x4.py:v1"))
  assert v1.model.version == "DANv1" and v1.model.scale == 4
  monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped copy is used
  assert config_lib.load("configs/x4.py").model.version == "DANv2"
  with pytest.raises(errors.ConfigError, match="no such config file: configs/nope.py"):
    config_lib.load("configs/nope.py")
  with pytest.raises(errors.ConfigError, match="config argument must be v1, v2, dcls or baseline"):
    config_lib.load("configs/x4.py:v3")


def test_overrides_convert_to_the_field_type():
  c = config_lib.load(str(ROOT / "configs" / "test.py"))
  config_lib.apply_overrides(
    c,
    [
      "model.scale=3",
      "--config.learning_rate=1e-3",
      "data.cache_decoded=True",
      "data.train_dir=/a,/b",
      "config.lr_milestones=(10, 20)",
    ],
  )
  assert (c.model.scale, c.learning_rate, c.data.cache_decoded) == (3, 1e-3, True)
  assert c.data.train_dir == "/a,/b" and tuple(c.lr_milestones) == (10, 20)
  assert isinstance(c.model.scale, int) and isinstance(c.learning_rate, float)
  # A tied field (degradation.kernel_size follows model.kernel_size) stays tied.
  config_lib.apply_overrides(c, {"model.kernel_size": 11})
  assert c.degradation.kernel_size == 11
  for bad, message in [
    ("model.scal=3", "no such config field (did you mean 'scale'?)"),
    ("nodel.scale=3", "no such config field (did you mean 'model'?)"),
    ("model.scale=five", "model.scale=five: not a valid int"),
    ("data.cache_decoded=maybe", "not a valid bool"),
    ("batch_size", "expected FIELD=VALUE"),
  ]:
    with pytest.raises(
      errors.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
    ):
      config_lib.apply_overrides(c, [bad])
  assert json.loads(config_lib.to_json(c))["model"]["scale"] == 3


def test_split_override_args_accepts_absl_spellings():
  rest, overrides = config_lib.split_override_args(
    [
      "--workdir=w",
      "--config=c.py",
      "--config.a=1",
      "--config.b",
      "2",
      "--config.c",
      "--noconfig.d",
      "--distributed",
    ]
  )
  assert rest == ["--workdir=w", "--config=c.py", "--distributed"]
  assert overrides == ["--config.a=1", "--config.b=2", "--config.c=true", "--config.d=false"]


def test_broken_config_files_are_one_config_error(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("import nonexistent_module_xyz\n")
  with pytest.raises(errors.ConfigError, match="broken.py: ModuleNotFoundError"):
    config_lib.load(str(broken))
  empty = tmp_path / "empty.py"
  empty.write_text("X = 1\n")
  with pytest.raises(errors.ConfigError, match="must define get_config"):
    config_lib.load(str(empty))
