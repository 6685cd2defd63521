"""benchmarks/accelerator_check.py runs on the CPU (--small, 2 fake devices) and writes
its report; on a GPU/TPU host the same command checks the accelerator."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_accelerator_check_small_on_two_cpu_devices(tmp_path):
  out = tmp_path / "report.md"
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(ROOT),
  )
  proc = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / "accelerator_check.py"),
      "--small",
      "--out",
      str(out),
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
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
  assert "FAIL" not in report and report.rstrip().splitlines()[-1].startswith(
    "**all checks passed**"
  )
