"""The requirements accept an image that already has TensorFlow (Colab) without a second one.

Colab ships full `tensorflow` (plus a recent jax). `tensorflow-cpu` installed beside it
would write into the same `tensorflow/` package folder, so TensorFlow is the `tf` extra of
setup.py, not a requirement: `pip install -e .` (or the notebooks' install cell, which
installs requirements.txt and then the package with --no-deps) keeps the TensorFlow that is
there, and `pip install -e ".[tf]"` (`.[test]` too) brings one where there is none.
"""

import ast
import json
import pathlib
import subprocess
import sys

from packaging.requirements import Requirement
import pytest

ROOT = pathlib.Path(__file__).parents[1]
# What a Colab image has installed already (the resolver treats an installed distribution
# like a pinned requirement, so pinning them here stands for "preinstalled").
PREINSTALLED = ("tensorflow==2.20.0", "jax==0.10.2")


def _tensorflow_extra() -> list[str]:
  """setup.py's _TENSORFLOW list (read without running setup())."""
  for node in ast.parse((ROOT / "setup.py").read_text()).body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_TENSORFLOW":
      return ast.literal_eval(node.value)
  raise AssertionError("setup.py has no _TENSORFLOW")


def _requirements() -> list[Requirement]:
  lines = (ROOT / "requirements.txt").read_text().splitlines()
  return [Requirement(l.split("#")[0]) for l in lines if l.split("#")[0].strip()]


def test_requirements_name_no_tensorflow_and_the_extra_names_exactly_one():
  names = {r.name for r in _requirements()}
  assert not names & {"tensorflow", "tensorflow-cpu"}
  assert "google-cloud-storage" in names  # orbax's gs:// checkpoints need it
  here = [Requirement(r) for r in _tensorflow_extra()]
  here = [r.name for r in here if r.marker is None or r.marker.evaluate()]
  assert len(here) == 1 and here[0] in ("tensorflow", "tensorflow-cpu")


@pytest.mark.slow
def test_an_image_with_full_tensorflow_gets_no_second_tensorflow(tmp_path):
  """pip's resolution (from PyPI, nothing installed) of requirements.txt on a Colab image."""
  report = tmp_path / "report.json"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "install",
      "--dry-run",
      "--quiet",
      "--ignore-installed",
      "--disable-pip-version-check",
      "--report",
      str(report),
      "-r",
      str(ROOT / "requirements.txt"),
      *PREINSTALLED,
    ],
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  install = {
    i["metadata"]["name"].lower(): i["metadata"]["version"]
    for i in json.loads(report.read_text())["install"]
  }
  assert install["tensorflow"] == "2.20.0"
  assert "tensorflow-cpu" not in install and "tf-nightly" not in install
  assert install["jax"] == "0.10.2"
  assert "google-cloud-storage" in install
