"""The Colab notebooks: stored without outputs, and they run end to end in CPU_TEST mode.

Each notebook is executed as CI would run it on Colab's behalf: `CPU_TEST = True` (and a
temporary WORKDIR) injected in a cell after the "parameters" cell (as papermill does), in
a Jupyter kernel of this very interpreter, with nbclient.
"""

import ast
import base64
import io
import json
import os
import pathlib
import sys
import time

from nbclient import NotebookClient
import nbformat
from PIL import Image
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB = REPO / "colab"
NOTEBOOKS = ("inference.ipynb", "train_tpu.ipynb")
KERNEL_NAME = "dan-jax-test-python"


def _load(name: str) -> nbformat.NotebookNode:
  return nbformat.read(COLAB / name, as_version=4)


def _parameters_index(nb: nbformat.NotebookNode) -> int:
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
  return tagged[0]


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """A kernelspec running *this* interpreter, found first through JUPYTER_PATH.

  pip's ipykernel installs a "python3" spec under sys.prefix, but a user-level spec of the
  same name (pointing at another Python) could shadow it; a spec of our own cannot.
  """
  root = tmp_path_factory.mktemp("jupyter")
  spec_dir = root / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(
    json.dumps(
      {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dan_jax tests",
        "language": "python",
      }
    )
  )
  old = os.environ.get("JUPYTER_PATH")
  os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root)] + ([old] if old else []))
  yield
  if old is None:
    del os.environ["JUPYTER_PATH"]
  else:
    os.environ["JUPYTER_PATH"] = old


def _execute(name: str, overrides: dict, timeout: int = 600) -> nbformat.NotebookNode:
  nb = _load(name)
  cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in overrides.items()))
  cell.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(_parameters_index(nb) + 1, cell)
  client = NotebookClient(
    nb, timeout=timeout, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(COLAB)}}
  )
  start = time.perf_counter()
  client.execute()  # raises CellExecutionError (with the cell's traceback) on any error
  print(f"{name}: executed in {time.perf_counter() - start:.1f} s")
  return nb


def _cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
  cells = [c for c in nb.cells if c.get("id") == cell_id]
  assert cells, f"no cell {cell_id!r}"
  return cells[0]


def _text(cell: nbformat.NotebookNode, stream: str = "") -> str:
  """The cell's printed text (only `stream`, "stdout" or "stderr", when given)."""
  return "".join(
    o.get("text", "")
    for o in cell.outputs
    if o.output_type == "stream" and (not stream or o.get("name") == stream)
  )


def _pngs(cell: nbformat.NotebookNode) -> list:
  return [
    Image.open(io.BytesIO(base64.b64decode(o.data["image/png"])))
    for o in cell.outputs
    if o.output_type == "display_data" and "image/png" in o.data
  ]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean_with_plain_parameters(name):
  nb = _load(name)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (
        f"{name}: cell {cell.get('id')} has outputs; strip them before committing"
      )
  params = nb.cells[_parameters_index(nb)]
  tree = ast.parse(params.source)
  names = []
  for stmt in tree.body:  # papermill-style: plain `NAME = literal` lines only
    assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1, ast.dump(stmt)
    names.append(stmt.targets[0].id)
    ast.literal_eval(stmt.value)
  assert "CPU_TEST" in names and "REPO_URL" in names and "WORKDIR" in names
  assert ast.literal_eval(tree.body[names.index("CPU_TEST")].value) is False


@pytest.mark.slow
def test_inference_notebook_runs_on_cpu(tmp_path, kernel_env):
  nb = _execute(
    "inference.ipynb", {"CPU_TEST": True, "WORKDIR": str(tmp_path), "REPO_DIR": str(REPO)}
  )
  # The tiny checkpoint was saved and loaded; results written.
  assert (tmp_path / "random_init" / "checkpoints").is_dir()
  assert "step 0" in _text(_cell(nb, "checkpoint"))
  written = sorted(p.name for p in (tmp_path / "results").iterdir())
  assert any(n.endswith(".png") and "kernel" not in n for n in written), written
  assert any(n.endswith("_kernel.npy") for n in written), written

  run = _cell(nb, "run")
  assert "Y-PSNR: bicubic" in _text(run) and len(_pngs(run)) == 1
  assert _pngs(run)[0].width > 3 * 256  # LR, bicubic, DAN and ground truth side by side
  assert len(_pngs(_cell(nb, "kernel"))) == 1

  strip = _cell(nb, "strip")
  lines = [l for l in _text(strip).splitlines() if l.startswith("iteration ")]
  loops = len(lines)
  assert loops >= 2, _text(strip)
  for i, line in enumerate(lines):
    assert line.startswith(f"iteration {i + 1}: Y-PSNR ") and "kernel PSNR" in line, line
  (picture,) = _pngs(strip)
  # Two rows (SR images, kernels) of loops + 1 panels (the last: ground truth / true kernel).
  assert picture.width >= (loops + 1) * 192 and picture.height >= 2 * 192


@pytest.mark.slow
def test_training_notebook_runs_on_cpu(tmp_path, kernel_env):
  workdir = tmp_path / "workdir"
  nb = _execute(
    "train_tpu.ipynb",
    {"CPU_TEST": True, "WORKDIR": str(workdir), "REPO_DIR": str(REPO), "SHOW_IMAGES": 2},
  )
  assert "configs/test.py" in _text(_cell(nb, "config"))
  # The TPU code paths on a fake 4-device mesh; TensorFlow kept off the accelerators.
  devices = _text(_cell(nb, "devices"))
  assert "backend cpu: 4 device(s)" in devices and "TensorFlow sees: ['CPU']" in devices
  assert "skipping TensorBoard" in _text(_cell(nb, "tensorboard"))
  # train_and_evaluate ran to the end of the tiny config and checkpointed its last step.
  summary = dict(
    l.split(": ", 1) for l in _text(_cell(nb, "train"), "stdout").splitlines() if ": " in l
  )
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and int(summary["step"]) == steps[-1] > 0, (summary, steps)
  assert float(summary["val_psnr_y"]) > 0 and float(summary["bicubic_psnr_y"]) > 20

  results = _cell(nb, "results")
  assert f"checkpoint step {steps[-1]}" in _text(results)
  psnr_lines = [l for l in _text(results).splitlines() if "Y-PSNR bicubic" in l]
  pictures = _pngs(results)
  assert len(psnr_lines) == len(pictures) == 2  # SHOW_IMAGES demo validation photos
  for picture in pictures:  # LR, bicubic, DAN, ground truth, estimated and true kernel
    assert picture.width > 6 * 192 and picture.height >= 192
