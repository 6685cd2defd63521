"""benchmarks/accelerator_check.py runs on the CPU (--small, 2 fake devices) and writes
its report; on a GPU/TPU host the same command checks the accelerator."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "benchmarks" / "accelerator_check.py")


def _run(args, env, timeout=900):
  return subprocess.run(
    [sys.executable, SCRIPT, *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def _without_tensorflow(tmp_path, env):
  """`env` on a host where `import tensorflow` fails (the lent GPU machines' images)."""
  blocker = tmp_path / "no_tf" / "tensorflow"
  blocker.mkdir(parents=True)
  (blocker / "__init__.py").write_text("raise ImportError('no TensorFlow on this host')\n")
  return dict(env, PYTHONPATH=f"{blocker.parent}{os.pathsep}{env['PYTHONPATH']}")


def test_unknown_section_is_one_error(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = _run(["--small", "--only", "parity,speed", "--out", str(tmp_path / "r.md")], env, 120)
  assert proc.returncode == 2 and "unknown section(s) ['speed']" in proc.stderr
  assert not (tmp_path / "r.md").exists()


@pytest.mark.slow
def test_accelerator_check_small_on_two_cpu_devices_without_tensorflow(tmp_path):
  """The whole check on 2 fake CPU devices, on a host without TensorFlow: the training
  batches of sections 3-4 are written first where TensorFlow is (`--save_data`)."""
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(ROOT),
  )
  data = tmp_path / "batches.npz"
  saved = _run(["--small", "--save_data", str(data), "--devices", "2"], env)
  assert saved.returncode == 0, saved.stderr[-3000:]
  with np.load(data) as f:
    assert f["b8/lr"].shape[:2] == (10, 8) and f["b8/pca"].ndim == 2
  out = tmp_path / "report.md"
  no_tf = _without_tensorflow(tmp_path, env)
  proc = _run(["--small", "--data", str(data), "--out", str(out)], no_tf)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = out.read_text()
  assert "backend cpu: 2 x cpu" in report
  for heading in (
    "## 1. Parity",
    "## 2. One training step's gradient",
    "## 3. Loss curves",
    "## 4. One device vs all devices",
    "## 5. Benchmarks",
  ):
    assert heading in report, heading
  assert "| danv2_x2 | highest |" in report and "| dcls_x2_setting1 | highest |" in report
  for precision in ("highest", "default", "bfloat16"):
    assert any(
      l.startswith(f"| {precision} |") and l.endswith("PASS |") for l in report.splitlines()
    ), precision
  rows = [l for l in report.splitlines() if l.startswith("| 10 |")]  # step 10 of 10
  assert len(rows) == 1 and "nan" not in rows[0]
  assert "| float32 (default) |" in report and "| bfloat16 |" in report
  assert "FAIL" not in report and "| nan" not in report
  assert report.rstrip().splitlines()[-1].startswith("**all checks passed**")
