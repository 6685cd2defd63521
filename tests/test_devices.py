"""Every device works: evaluate, infer and in-training validation on 4 fake CPU devices
give the numbers of 1 device, and say how many devices they use."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
from PIL import Image
import pytest
from skimage import data

from dan_jax import checkpoint
from dan_jax import models
from dan_jax import parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
V2 = dict(
  version="DANv2",
  scale=2,
  nf=8,
  nb=1,
  ng=1,
  loops=2,
  kernel_size=11,
  code_len=10,
  estimator_nf=8,
  estimator_nb=1,
)

# Runs in a fresh process with N devices; prints one JSON line of everything compared.
_RUN = textwrap.dedent("""
    import contextlib, io, json, sys
    import jax
    import numpy as np
    from dan_jax import checkpoint, evaluate, infer, models, parallel, steps, validation
    ckpt, hr, images, out, n = sys.argv[1:6]
    assert jax.device_count() == int(n), jax.devices()
    rc_eval = evaluate.main(["--checkpoint", ckpt, "--dataset", f"Tiny={hr}", "--out",
                             out + "/eval", "--batch_size", "3"])
    rc_infer = infer.main(["--checkpoint", ckpt, "--input", images, "--output",
                           out + "/infer"])
    rc_tiled = infer.main(["--checkpoint", ckpt, "--input", images, "--output",
                           out + "/tiled", "--tile", "24", "--batch_size", "2"])
    # In-training validation: the eval step sharded over the training mesh.
    model_config, variables, _ = checkpoint.load_model(ckpt)
    model = models.create_model(model_config)
    mesh = parallel.create_mesh()
    rng = np.random.default_rng(0)
    lrs = [rng.uniform(size=s).astype(np.float32) for s in
           [(12, 10, 3)] * 3 + [(9, 14, 3)]]
    val = {"lr": lrs, "hr": [np.kron(x, np.ones((2, 2, 1), np.float32)) for x in lrs]}
    variables = parallel.to_global(variables, parallel.replicated(mesh))
    scores, outputs = validation.evaluate(steps.make_eval_step(model, mesh), variables, val,
                                          2, parallel.data_sharded(mesh))
    np.savez(out + "/val.npz", *[o[0] for o in outputs], *[o[1] for o in outputs])
    print("RESULT " + json.dumps({"rc": [rc_eval, rc_infer, rc_tiled], "val": scores}))
""")


def _run(n: int, ckpt: str, hr, images, out) -> dict:
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(ROOT),
  )
  proc = subprocess.run(
    [sys.executable, "-c", _RUN, ckpt, str(hr), str(images), str(out), str(n)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return dict(json.loads(line[len("RESULT ") :]), stderr=proc.stderr)


@pytest.mark.slow
def test_four_devices_give_the_numbers_of_one(tmp_path):
  pca = np.linalg.qr(np.random.default_rng(0).normal(size=(121, 10)))[0]
  ckpt = tmp_path / "ckpt"
  checkpoint.save_model(str(ckpt), models.init_variables(models.create_model(V2), 0, pca), V2)
  photo = data.astronaut()
  (tmp_path / "hr").mkdir()
  Image.fromarray(photo[:40, :36]).save(tmp_path / "hr" / "a.png")
  Image.fromarray(photo[100:140, 200:236]).save(tmp_path / "hr" / "b.png")
  (tmp_path / "images").mkdir()
  for i, (h, w) in enumerate([(30, 40), (30, 40), (30, 40), (26, 50), (40, 36)]):
    Image.fromarray(photo[50 + 7 * i : 50 + 7 * i + h, 60 : 60 + w]).save(
      tmp_path / "images" / f"im{i}.png"
    )

  runs = {
    n: _run(n, str(ckpt), tmp_path / "hr", tmp_path / "images", tmp_path / f"d{n}") for n in (1, 4)
  }
  for n, r in runs.items():
    assert r["rc"] == [0, 0, 0], r["stderr"][-2000:]
    word = "device" if n == 1 else "devices"
    assert f"with {n} {word} (cpu)" in r["stderr"]  # evaluate
    assert f"; {n} {word} (cpu), precision highest" in r["stderr"]  # infer
  # evaluate: every image's metrics (the CSV rows) agree.
  rows = {}
  for n in (1, 4):
    (run_dir,) = (tmp_path / f"d{n}" / "eval").glob("eval-*")
    rows[n] = json.loads((run_dir / "summary.json").read_text())
    assert rows[n]["devices"] == n
    rows[n] = (run_dir / "metrics.csv").read_text().splitlines()
  assert len(rows[1]) == len(rows[4]) == 8 * 2 + 1
  for a, b in zip(rows[1][1:], rows[4][1:]):
    fa, fb = a.split(","), b.split(",")
    assert fa[:5] == fb[:5]
    np.testing.assert_allclose(
      [float(x) for x in fa[5:] if x], [float(x) for x in fb[5:] if x], rtol=1e-5
    )
  # infer (whole images and tiles): the written images and kernels agree.
  for sub in ("infer", "tiled"):
    names = sorted(os.listdir(tmp_path / "d1" / sub))
    assert names == sorted(os.listdir(tmp_path / "d4" / sub)) and len(names) == 15
    for name in names:
      a, b = (tmp_path / "d1" / sub / name), (tmp_path / "d4" / sub / name)
      load = np.load if name.endswith(".npy") else lambda p: np.asarray(Image.open(p))
      np.testing.assert_allclose(
        load(a).astype(np.float64),
        load(b).astype(np.float64),
        atol=1.0 if name.endswith(".png") else 1e-6,
      )
  # validation during training, sharded over the mesh (3 images of one size, 1 of another).
  assert runs[4]["val"] == pytest.approx(runs[1]["val"], rel=1e-6)
  v1, v4 = np.load(tmp_path / "d1" / "val.npz"), np.load(tmp_path / "d4" / "val.npz")
  for k in v1.files:
    np.testing.assert_allclose(v1[k].astype(np.float64), v4[k].astype(np.float64), atol=1.0)


def test_batch_padding_helpers():
  x = np.arange(6).reshape(3, 2)
  assert parallel.round_up(3, 4) == 4 and parallel.round_up(8, 4) == 8
  assert parallel.round_up(0, 4) == 4
  np.testing.assert_array_equal(parallel.pad_batch(x, 5)[3:], [[4, 5], [4, 5]])
  mesh = parallel.create_mesh()
  assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count()
  assert parallel.describe(mesh) == "1 device (cpu)"
