"""Paths stay URL-capable: dan_jax.storage, and no local-only file call on user paths.

The end-to-end check against an object-store emulator is tests/test_gcs.py; this file is
the fast part: the helpers, and a static scan of the package (and launch/) for local-only
file system calls (`open`, `os.path.abspath`, `os.path.isdir`, `os.makedirs`, ...). Each
remaining one is listed below with the reason it never sees a workdir, checkpoint or
output path.
"""

import ast
import os
import pathlib

import pytest

from dan_jax import storage

ROOT = pathlib.Path(__file__).parents[1]
# Calls that only work on local paths.
LOCAL_ONLY = {
  "open",
  "os.path.abspath",
  "os.path.realpath",
  "os.path.isdir",
  "os.path.isfile",
  "os.path.exists",
  "os.path.getsize",
  "os.makedirs",
  "os.mkdir",
  "os.listdir",
  "os.remove",
  "os.replace",
  "os.rename",
  "os.access",
  "os.walk",
  "os.scandir",
  "shutil.rmtree",
  "shutil.copy",
  "shutil.copyfile",
  "shutil.move",
}
# (file, enclosing function, call): why it is not applied to a workdir/checkpoint/output.
ALLOWED = {
  (
    "dan_jax/config.py",
    "resolve_path",
    "os.path.isfile",
  ): "a config .py file, imported with importlib (local code)",
  (
    "dan_jax/convert.py",
    "_load_pca",
    "os.path.isfile",
  ): "--pca: a local PCA .npy/.npz/.pth input, read by numpy/torch like --official",
  (
    "dan_jax/convert.py",
    "load_torch_checkpoint",
    "os.path.isfile",
  ): "--official: the official .npz/.pth input file, read by numpy/torch",
  (
    "dan_jax/train.py",
    "_prepare_workdir",
    "os.access",
  ): "local workdirs only: URLs return before it",
  ("launch/_common.py", "<module>", "os.path.abspath"): "__file__: the repository",
  ("launch/gpu.py", "<module>", "os.path.abspath"): "__file__: the repository",
  ("launch/slurm.py", "<module>", "os.path.abspath"): "__file__: the repository",
  ("launch/slurm.py", "main", "os.path.abspath"): "__file__: the repository",
  (
    "launch/slurm.py",
    "main",
    "os.makedirs",
  ): "the sbatch script: SLURM reads it (and writes logs) on a shared file system",
  ("launch/slurm.py", "main", "open"): "the sbatch script (see above)",
  ("launch/sweep.py", "<module>", "os.path.abspath"): "__file__: the repository",
  ("launch/sweep.py", "collect_script", "os.path.abspath"): "slurm mode: URLs refused before",
  (
    "launch/sweep.py",
    "_absolute_test_sets",
    "os.path.abspath",
  ): "--test_sets folders for the SLURM collect job: only local paths, URLs pass unchanged",
  ("launch/sweep.py", "submit_slurm", "os.path.abspath"): "slurm mode: URLs refused before",
  (
    "launch/sweep.py",
    "submit_slurm",
    "os.makedirs",
  ): "the sbatch scripts: SLURM reads them (and writes logs) on a shared file system",
  ("launch/sweep.py", "submit_slurm", "open"): "the sbatch scripts (see above)",
  ("launch/tpu_pod.py", "<module>", "os.path.abspath"): "__file__: the repository",
}


def _dotted(node: ast.AST) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return f"{_dotted(node.value)}.{node.attr}"
  return "?"


def _local_calls(path: pathlib.Path) -> list[tuple[str, str, int]]:
  """(enclosing function, call, line) of every local-only call in a file."""
  found = []

  def visit(node: ast.AST, func: str) -> None:
    for child in ast.iter_child_nodes(node):
      name = func
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        name = child.name if func == "<module>" else func
      if isinstance(child, ast.Call) and _dotted(child.func) in LOCAL_ONLY:
        found.append((func, _dotted(child.func), child.lineno))
      visit(child, name)

  visit(ast.parse(path.read_text()), "<module>")
  return found


def test_no_local_only_file_calls_on_user_paths():
  files = sorted(ROOT.glob("dan_jax/*.py")) + sorted(ROOT.glob("launch/*.py"))
  assert len(files) > 10
  used, bad = set(), []
  for f in files:
    rel = f.relative_to(ROOT).as_posix()
    if rel == "dan_jax/storage.py":  # the one place that branches on local vs URL
      continue
    for func, call, line in _local_calls(f):
      key = (rel, func, call)
      if key in ALLOWED:
        used.add(key)
      else:
        bad.append(f"{rel}:{line} {call}() in {func}")
  assert not bad, (
    "local-only file calls (use dan_jax.storage / etils.epath so gs:// "
    "works, or add a reason to ALLOWED):\n" + "\n".join(bad)
  )
  assert used == set(ALLOWED), f"stale ALLOWED entries: {set(ALLOWED) - used}"


def test_the_scan_finds_what_it_forbids(tmp_path):
  src = tmp_path / "m.py"
  src.write_text(
    "import os\ndef f(w):\n  os.makedirs(os.path.abspath(w))\n  with open(w) as g:\n    pass\n"
  )
  assert sorted(c for _, c, _ in _local_calls(src)) == ["open", "os.makedirs", "os.path.abspath"]


@pytest.mark.parametrize("url", ["gs://bucket/run", "gs://bucket/run/", "s3://b/x/y"])
def test_urls_are_never_turned_into_local_paths(url):
  assert storage.is_url(url)
  assert os.fspath(storage.path(url)) == url.rstrip("/")
  assert storage.join(url, "checkpoints", "3") == url.rstrip("/") + "/checkpoints/3"
  assert storage.canonical(url) == url.rstrip("/")


def test_local_paths_are_expanded_and_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert not storage.is_url("runs/a")
  assert os.fspath(storage.path("runs/a")) == str(tmp_path / "runs" / "a")
  assert os.fspath(storage.path("~/a")) == str(tmp_path / "home" / "a")
  assert storage.join("runs", "a") == os.path.join("runs", "a")  # kept as given
  (tmp_path / "real").mkdir()
  (tmp_path / "link").symlink_to(tmp_path / "real")
  assert storage.canonical("link") == storage.canonical(tmp_path / "real")


def test_write_bytes_refuses_to_overwrite_unless_asked(tmp_path):
  target = tmp_path / "f.bin"
  storage.write_bytes(target, b"one")
  with pytest.raises(FileExistsError):
    storage.write_bytes(target, b"two")
  assert storage.read_bytes(target) == b"one"
  storage.write_bytes(target, b"three", overwrite=True)
  assert storage.read_bytes(target) == b"three"
  assert sorted(os.listdir(tmp_path)) == ["f.bin"]  # no temporary file left
