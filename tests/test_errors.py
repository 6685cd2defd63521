"""One error family: every CLI error derives from errors.Error; a missing TensorFlow is one."""

import inspect
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from dan_jax import errors

ROOT = pathlib.Path(__file__).parents[1]

# Hides TensorFlow from the import system, as where it is not installed: `import
# tensorflow` raises ModuleNotFoundError and importlib.util.find_spec returns None.
_NO_TENSORFLOW = textwrap.dedent("""
    import importlib.machinery

    _find_spec = importlib.machinery.PathFinder.find_spec

    def _find_spec_without_tensorflow(cls, fullname, path=None, target=None):
      if fullname == "tensorflow" or fullname.startswith("tensorflow."):
        return None
      return _find_spec(fullname, path, target)

    importlib.machinery.PathFinder.find_spec = classmethod(_find_spec_without_tensorflow)
""")


def test_every_error_is_an_error_and_keeps_its_builtin():
  classes = [
    c
    for _, c in inspect.getmembers(errors, inspect.isclass)
    if c.__module__ == errors.__name__ and c is not errors.Error
  ]
  assert len(classes) >= 15
  for cls in classes:
    assert issubclass(cls, errors.Error), cls
    # Callers that caught the builtin before the family existed still catch it.
    assert issubclass(cls, (ValueError, FloatingPointError, ImportError)), cls


def _without_tensorflow(tmp_path, *argv):
  (tmp_path / "blocker").mkdir(exist_ok=True)
  (tmp_path / "blocker" / "sitecustomize.py").write_text(_NO_TENSORFLOW)
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join([str(tmp_path / "blocker"), str(ROOT)]),
  )
  return subprocess.run(
    [sys.executable, *argv],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


def _one_error_line(proc) -> str:
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


def test_training_without_tensorflow_says_how_to_install_it(tmp_path):
  proc = _without_tensorflow(tmp_path, "-c", "import importlib.util, tensorflow")
  assert "ModuleNotFoundError: No module named 'tensorflow'" in proc.stderr  # hidden

  proc = _without_tensorflow(
    tmp_path,
    "-m",
    "dan_jax.main",
    f"--config={ROOT}/configs/test.py",
    f"--workdir={tmp_path / 'run'}",
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = _one_error_line(proc)
  assert "needs TensorFlow" in line and 'pip install "dan_jax[tf]"' in line, line
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_evaluate_and_export_without_tensorflow_say_how_to_install_it(tmp_path):
  # Both refuse before they load the (here missing) checkpoint.
  evaluate = _without_tensorflow(
    tmp_path,
    "-m",
    "dan_jax.evaluate",
    "--checkpoint",
    str(tmp_path / "none"),
    "--dataset",
    f"Set={tmp_path}",
    "--out",
    str(tmp_path / "eval"),
  )
  export = _without_tensorflow(
    tmp_path,
    "-m",
    "dan_jax.export",
    "--checkpoint",
    str(tmp_path / "none"),
    "--out",
    str(tmp_path / "export"),
    "--format",
    "savedmodel",
  )
  for proc in (evaluate, export):
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc)
    assert 'pip install "dan_jax[tf]"' in line, line
  assert not (tmp_path / "export").exists()
