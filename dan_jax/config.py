"""Configs: load a config file, apply `FIELD=VALUE` overrides, serialise.

The one place where a config spec (`configs/x4.py:v1`) becomes a ConfigDict and a
`FIELD=VALUE` string becomes a field's value, so a value means the same in `main`, the
launchers, the notebooks and the tests. `configs/NAME.py` also resolves to the shipped
config where no such file is beside the working directory. A leaf of the package: what a
training config's values must be is checked by `train_config.validate_config`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import pathlib
from typing import Any, Iterable, Mapping, Union

import ml_collections

from dan_jax.errors import ConfigError

# `configs/` of a source checkout (beside the package), else the copy a wheel installs.
_CHECKOUT_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
_PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


def configs_dir() -> pathlib.Path:
  """The directory of the shipped configs (a checkout's `configs/` or the installed copy)."""
  if (_CHECKOUT_CONFIGS / "default.py").is_file():
    return _CHECKOUT_CONFIGS
  return _PACKAGED_CONFIGS


def default_spec() -> str:
  """The config `python -m dan_jax.main` runs without --config: the demo."""
  return str(configs_dir() / "demo.py")


def resolve_path(path: str) -> str:
  """A config file path; `configs/NAME.py` falls back to the shipped config of that name."""
  if os.path.isfile(path):
    return path
  parts = pathlib.PurePath(path).parts
  if len(parts) == 2 and parts[0] == "configs":
    shipped = configs_dir() / parts[1]
    if shipped.is_file():
      return str(shipped)
  raise ConfigError(f"no such config file: {path}")


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]`: the file's `get_config(arg)` (as absl config_flags).

  Raises:
    ConfigError: no such file, or `get_config` rejected its argument.
  """
  path, _, arg = spec.partition(":")
  path = resolve_path(path)
  module_spec = importlib.util.spec_from_file_location("_dan_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # a broken config file: one line naming it, not a traceback
    raise ConfigError(f"{path}: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path}: a config file must define get_config()")
  try:
    return module.get_config(arg) if arg else module.get_config()
  except (ValueError, TypeError, KeyError, AttributeError) as e:  # e.g. a bad `:arg`
    raise ConfigError(f"{spec}: {e}") from e


def parse_value(old: Any, text: str, key: str = "value") -> Any:
  """A command-line string as a value of the type of the field's current value `old`.

  The one conversion rule: bools take true/false/1/0 (any case); ints and floats their
  Python spelling; strings are taken as written; tuples, lists and fields that are None
  take a Python literal (a None field keeps the text as a string if it is not one).
  """
  try:
    if isinstance(old, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
      return text.lower() in ("true", "1")
    if isinstance(old, (tuple, list)):
      value = ast.literal_eval(text)
      return type(old)(value if isinstance(value, (tuple, list)) else (value,))
    if old is None:
      try:
        return ast.literal_eval(text)
      except (ValueError, SyntaxError):
        return text
    if isinstance(old, str):
      return text
    if isinstance(old, int):
      return int(text)
    if isinstance(old, float):
      return float(text)
    return type(old)(text)
  except (ValueError, SyntaxError, TypeError) as e:
    raise ConfigError(f"{key}={text}: not a valid {type(old).__name__}") from e


def _unknown(key: str, name: str, node: ml_collections.ConfigDict) -> ConfigError:
  guess = difflib.get_close_matches(name, list(node.keys()), n=1)
  hint = f" (did you mean {guess[0]!r}?)" if guess else ""
  return ConfigError(f"{key}: no such config field{hint}")


def set_field(config: ml_collections.ConfigDict, key: str, value: Any, parse: bool = False) -> None:
  """config.a.b = value for key "a.b", refusing fields the config does not have.

  Args:
    config: the config, changed in place.
    key: dotted field name (a leading `--config.` or `config.` is dropped).
    value: the new value, or its command-line text with `parse`.
    parse: convert `value` with `parse_value` to the type of the current value.
  """
  *parents, leaf = key.lstrip("-").removeprefix("config.").split(".")
  node = config
  for name in parents:
    child = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(child, ml_collections.ConfigDict):
      raise _unknown(key, name, node)
    node = child
  if leaf not in node:
    raise _unknown(key, leaf, node)
  node[leaf] = parse_value(node[leaf], value, key) if parse else value


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: Union[Iterable[str], Mapping[str, Any]]
) -> ml_collections.ConfigDict:
  """Applies `FIELD=VALUE` strings (`--config.` prefix optional) or a {field: value} dict.

  Strings are converted with `parse_value`; dict values are set as given. Returns `config`.
  """
  if isinstance(overrides, Mapping):
    for key, value in overrides.items():
      set_field(config, key, value)
    return config
  for item in overrides:
    key, eq, text = item.partition("=")
    if not eq:
      raise ConfigError(f"{item}: expected FIELD=VALUE")
    set_field(config, key, text, parse=True)
  return config


def load_with_overrides(
  spec: str, overrides: Union[Iterable[str], Mapping[str, Any]] = ()
) -> ml_collections.ConfigDict:
  """`load(spec)` then `apply_overrides`."""
  return apply_overrides(load(spec), overrides)


def to_json(config: ml_collections.ConfigDict) -> str:
  """The config as JSON text (for the checkpoint's `meta` item and logs)."""
  return json.dumps(config.to_dict(), default=str, sort_keys=True)


def split_override_args(
  argv: Iterable[str], prefix: str = "--config."
) -> tuple[list[str], list[str]]:
  """Splits command-line `--config.FIELD=VALUE` arguments off the others.

  Also accepts `--config.FIELD VALUE`, `--config.FIELD` (true) and `--noconfig.FIELD`
  (false), as absl's config_flags does. Returns (other args, ["--config.FIELD=VALUE", ...]).
  """
  argv = list(argv)
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    negated = arg.startswith("--no" + prefix[2:])
    if arg.startswith(prefix) or negated:
      body = prefix + arg[len(prefix) + (2 if negated else 0) :]
      if "=" in body:
        overrides.append(body)
      elif negated:
        overrides.append(f"{body}=false")
      elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        overrides.append(f"{body}={argv[i + 1]}")
        i += 1
      else:
        overrides.append(f"{body}=true")
    else:
      rest.append(arg)
    i += 1
  return rest, overrides
