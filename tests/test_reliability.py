"""Reliability of the command lines: kills, preemption, several processes, bad input.

Everything here runs the real CLIs as subprocesses on the tiny configs/test.py (a ~7k-
parameter DANv2 x2 on 16x16 crops), as a user or a cluster scheduler would:

* kills: a run is SIGKILLed at random moments (fixed seed), once while orbax is writing
  a checkpoint, then restarted with the same command; the final weights equal, bit for
  bit, those of an uninterrupted run;
* preemption: SIGTERM saves a checkpoint of the step reached and exits 0; the same
  command resumes from it (the same kill sequence, so the final comparison covers it);
* several processes: two processes joined by `jax.distributed` on this machine (CPU,
  gloo collectives), each feeding its half of every batch, reach the weights of one
  process; checkpoints and TensorBoard events are written once, logs by process 0 only;
* bad input: a table of mistakes across `main`, `evaluate`, `infer` and `convert`, each
  answered by one `error:` line naming the problem, a non-zero exit and no traceback,
  with nothing that existed before deleted or changed.

All subprocesses share one persistent XLA compilation cache (in the test's temporary
folder): a restart then costs its imports, not a recompilation.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np
import pytest

from dan_jax import checkpoint
from dan_jax import preemption

ROOT = pathlib.Path(__file__).parents[1]
TEST_CONFIG = str(ROOT / "configs" / "test.py")
FIXTURES = ROOT / "tests" / "fixtures"
TMP_MARK = "orbax-checkpoint-tmp"
STEPS = 16  # the interrupted and the reference runs
KILL_SEED = 8  # the random kill moments (reproducible)
# Fast and without validation: what is tested is the state that is saved and resumed.
TRAIN_FLAGS = (
  f"--config.num_train_steps={STEPS}",
  "--config.checkpoint_every_steps=1",
  "--config.log_every_steps=1",
  "--config.data.val_source=none",
)


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
  """The subprocesses' environment: CPU, one device, a shared compilation cache."""
  cache = tmp_path_factory.mktemp("xla_cache")
  out = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out.update(
    JAX_PLATFORMS="cpu",
    TF_CPP_MIN_LOG_LEVEL="1",
    PYTHONUNBUFFERED="1",
    JAX_COMPILATION_CACHE_DIR=str(cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  return out


def _train_argv(workdir, *flags: str, config: str = TEST_CONFIG) -> list[str]:
  return [
    sys.executable,
    "-m",
    "dan_jax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    *flags,
  ]


def _start(argv: list[str], env: dict, log_prefix: pathlib.Path) -> subprocess.Popen:
  """Starts a CLI with stdout/stderr in files (LOG.out, LOG.err): no pipe can fill up."""
  out = open(f"{log_prefix}.out", "w")
  err = open(f"{log_prefix}.err", "w")
  proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err)
  out.close()
  err.close()
  proc.log_prefix = log_prefix
  return proc


def _logs(proc: subprocess.Popen) -> tuple[str, str]:
  return (
    pathlib.Path(f"{proc.log_prefix}.out").read_text(),
    pathlib.Path(f"{proc.log_prefix}.err").read_text(),
  )


def _steps(ckpt_dir) -> list[int]:
  """Complete checkpoints (orbax renames a step's folder into place when done)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def _tmp_dirs(ckpt_dir) -> list[str]:
  """Checkpoints being written (or left half-written by a kill)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(n for n in os.listdir(ckpt_dir) if TMP_MARK in n)


def _wait_for(
  what: str, predicate: Callable[[], object], *procs: subprocess.Popen, timeout: float = 180.0
) -> object:
  """Polls `predicate` every 2 ms until truthy; fails if a process ends first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    found = predicate()
    if found:
      return found
    for proc in procs:
      if proc.poll() is not None:
        out, err = _logs(proc)
        raise AssertionError(
          f"a run ended (status {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-4000:]}"
        )
    time.sleep(0.002)
  raise AssertionError(f"timed out waiting for {what}")


def _params(path, use_ema: bool = False):
  _, variables, step = checkpoint.load_model(str(path), use_ema=use_ema)
  return variables["params"], step


def _leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _start_step(stderr: str) -> Optional[int]:
  """The first step a run trained ("... global batch 8, steps S..N"), if it got there."""
  m = re.search(r"steps (\d+)\.\.(\d+)", stderr)
  return int(m.group(1)) if m else None


@dataclasses.dataclass
class Reference:
  """The uninterrupted run (started in the background by the fixture; shared)."""

  proc: subprocess.Popen
  workdir: pathlib.Path
  _done: bool = False

  def result(self) -> pathlib.Path:
    if not self._done:
      self.proc.wait(timeout=300)
      out, err = _logs(self.proc)
      assert self.proc.returncode == 0, f"{out[-2000:]}\n{err[-4000:]}"
      self._done = True
    return self.workdir


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env) -> Reference:
  """STEPS uninterrupted steps, every checkpoint kept (other tests compare with them)."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  proc = _start(
    _train_argv(workdir, *TRAIN_FLAGS, "--config.keep_checkpoints=100"), env, workdir.parent / "log"
  )
  ref = Reference(proc, workdir)
  yield ref
  if proc.poll() is None:
    proc.kill()


# ----------------------------------------------------------------------------- kills


@dataclasses.dataclass
class RunRecord:
  """One launch of the interrupted run and what was found on disk around it."""

  how: str
  returncode: int
  stdout: str
  stderr: str
  steps_before: list[int]
  steps_after: list[int]
  tmp_at_signal: list[str] = dataclasses.field(default_factory=list)
  tmp_after: list[str] = dataclasses.field(default_factory=list)
  seconds_to_exit: float = 0.0


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, env, reference):
  """The same command launched until it completes, stopped on the way by:

  1. SIGKILL at a random moment of training (a random delay after a random step),
  2. SIGKILL as soon as orbax has started writing a checkpoint (its tmp folder exists),
  3. SIGKILL at a random moment of start-up (imports, restore, compilation),
  4. SIGTERM (preemption) once training has gone on,
  then a last launch runs to the end. Returns (workdir, [RunRecord]).
  """
  rng = random.Random(KILL_SEED)
  reference.result()  # first: then every launch here finds its compilation cached
  workdir = tmp_path_factory.mktemp("interrupted") / "run"
  ckpt = workdir / checkpoint.CHECKPOINTS_SUBDIR
  argv = _train_argv(workdir, *TRAIN_FLAGS)
  plan = [
    ("kill-training", rng.randint(1, 3), rng.uniform(0.0, 0.3)),
    ("kill-saving", None, None),
    ("kill-startup", None, rng.uniform(1.0, 10.0)),
    ("sigterm", None, None),
    ("complete", None, None),
  ]
  records = []
  for how, steps_ahead, delay in plan:
    for _ in range(3):  # a kill meant to hit a save may come just after it finished
      records.append(
        _launch(argv, env, ckpt, how, steps_ahead, delay, workdir.parent / f"launch{len(records)}")
      )
      if how != "kill-saving" or records[-1].tmp_at_signal:
        break
  return workdir, records


def _launch(argv, env, ckpt, how, steps_ahead, delay, log_prefix) -> RunRecord:
  before, stale = _steps(ckpt), set(_tmp_dirs(ckpt))
  last = before[-1] if before else 0
  new_step = lambda: (_steps(ckpt) or [0])[-1] > last
  proc = _start(argv, env, log_prefix)
  tmp_at_signal, signalled = [], None
  try:
    if how == "kill-training":  # a random moment after a random number of steps
      _wait_for(
        f"step {last + steps_ahead}", lambda: (_steps(ckpt) or [0])[-1] >= last + steps_ahead, proc
      )
      time.sleep(delay)
      proc.send_signal(signal.SIGKILL)
    elif how == "kill-saving":  # as soon as orbax has created this launch's tmp folder
      _wait_for(
        "a checkpoint being written", lambda: [n for n in _tmp_dirs(ckpt) if n not in stale], proc
      )
      proc.send_signal(signal.SIGKILL)
    elif how == "kill-startup":  # imports, restore, input pipeline, compilation
      deadline = time.monotonic() + delay
      while time.monotonic() < deadline and not new_step() and proc.poll() is None:
        time.sleep(0.002)
      proc.send_signal(signal.SIGKILL)
    elif how == "sigterm":  # once this launch has trained
      _wait_for(f"a step after {last}", new_step, proc)
      proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    proc.wait(timeout=120 if how != "complete" else 300)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  if how == "kill-saving":
    tmp_at_signal = [n for n in _tmp_dirs(ckpt) if n not in stale]  # what the kill left
  out, err = _logs(proc)
  return RunRecord(
    how,
    proc.returncode,
    out,
    err,
    before,
    _steps(ckpt),
    tmp_at_signal,
    _tmp_dirs(ckpt),
    time.monotonic() - signalled if signalled else 0.0,
  )


def _record(records, how) -> RunRecord:
  return [r for r in records if r.how == how][-1]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_equals_uninterrupted_run(interrupted, reference):
  workdir, records = interrupted
  for r in records:
    if r.how.startswith("kill"):
      assert r.returncode == -signal.SIGKILL, (r.how, r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    # Every launch that got to train started from the latest complete checkpoint: no
    # restart failed on, or skipped, what the previous kill left.
    start = _start_step(r.stderr)
    if start is not None:
      assert start == (r.steps_before[-1] if r.steps_before else 0), (r.how, start)
  killed = _record(records, "kill-training")
  assert 0 < killed.steps_after[-1] < STEPS
  last = records[-1]
  assert last.how == "complete" and last.returncode == 0, last.stderr[-4000:]
  assert f"trained to step {STEPS}" in last.stdout
  assert last.steps_after[-1] == STEPS and last.tmp_after == []
  # Bit for bit the uninterrupted run: XLA:CPU is deterministic across processes, and a
  # resumed run restores the whole state and the input pipeline's position.
  got, step = _params(workdir)
  want, ref_step = _params(reference.result())
  assert step == ref_step == STEPS
  for a, b in zip(_leaves(got), _leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_kill_while_saving_leaves_a_tmp_folder_that_is_never_restored(interrupted):
  _, records = interrupted
  saving = _record(records, "kill-saving")
  assert saving.returncode == -signal.SIGKILL
  assert saving.tmp_at_signal, "no kill landed inside a checkpoint save in 3 attempts"
  # The half-written checkpoint carries no step number: it is not a checkpoint.
  written = {int(n.split(".")[0]) for n in saving.tmp_at_signal}
  assert not written & set(saving.steps_after), (written, saving.steps_after)
  # The next launch that trained resumed from the last complete step, and the tmp
  # folder was removed by the next launch's checkpoint manager.
  nxt = next(r for r in records[records.index(saving) + 1 :] if _start_step(r.stderr) is not None)
  assert _start_step(nxt.stderr) == saving.steps_after[-1]
  assert not set(saving.tmp_at_signal) & set(nxt.tmp_after)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_zero(interrupted):
  _, records = interrupted
  term = _record(records, "sigterm")
  assert term.returncode == 0, term.stderr[-4000:]
  assert term.seconds_to_exit < 60
  reached = term.steps_after[-1]
  assert (term.steps_before[-1] if term.steps_before else 0) < reached < STEPS
  assert term.tmp_after == []
  assert f"preempted (SIGTERM) at step {reached}: checkpoint saved" in term.stdout
  assert f"preempted at step {reached}; checkpoint saved" in term.stderr
  # The same command, launched again, continues from that very step to the end.
  after = records[records.index(term) + 1]
  assert _start_step(after.stderr) == reached
  assert after.returncode == 0 and after.steps_after[-1] == STEPS


def test_preemption_watch_flags_sigterm_and_restores_the_handler():
  calls = []
  handler = lambda *a: calls.append(a)
  previous = signal.signal(signal.SIGTERM, handler)
  try:
    watch = preemption.PreemptionWatch(every=10)
    assert not watch.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread before kill returns
    assert watch.requested and watch.should_stop(7)  # one process: every step
    assert calls == []  # the run's handler took it, not the previous one
    watch.close()
    os.kill(os.getpid(), signal.SIGTERM)
    assert len(calls) == 1 and signal.getsignal(signal.SIGTERM) is handler  # back
    # Outside the main thread (e.g. a notebook's worker) nothing is installed.
    import threading

    other = []
    thread = threading.Thread(target=lambda: other.append(preemption.PreemptionWatch()))
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) is handler
    other[0].close()
    assert signal.getsignal(signal.SIGTERM) is handler
  finally:
    signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- rollbacks


# Batches 5-8 give NaN: steps 5, 6 are skipped -> rollback 1 to step 4 (data 2 batches on);
# steps 5, 6 (batches 7, 8) again -> rollback 2; then steps 5..12 train on batches 9...
ROLLBACK_FLAGS = (
  "--config.num_train_steps=12",
  "--config.checkpoint_every_steps=2",
  "--config.log_every_steps=1",
  "--config.data.val_source=none",
  "--config.debug.nan_at_steps=(5,6,7,8)",
  "--config.max_consecutive_nonfinite=2",
)


@pytest.mark.slow
def test_sigkill_during_a_rollback_resumes_to_the_same_parameters(tmp_path, env):
  ref_dir, run_dir = tmp_path / "reference" / "run", tmp_path / "killed" / "run"
  ref = _start(_train_argv(ref_dir, *ROLLBACK_FLAGS), env, tmp_path / "reference_log")
  killed = _start(_train_argv(run_dir, *ROLLBACK_FLAGS), env, tmp_path / "killed_log")
  try:
    _wait_for("the first rollback", lambda: "; rollback 1 (" in _logs(killed)[1], killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    at_kill = _steps(run_dir / "checkpoints")
    resumed = _start(_train_argv(run_dir, *ROLLBACK_FLAGS), env, tmp_path / "resumed_log")
    resumed.wait(timeout=300)
    ref.wait(timeout=300)
  finally:
    for p in (ref, killed):
      if p.poll() is None:
        p.kill()
        p.wait()
  assert killed.returncode == -signal.SIGKILL
  assert at_kill[-1] == 4, at_kill  # killed before anything past the rollback was saved
  for proc in (ref, resumed):
    out, err = _logs(proc)
    assert proc.returncode == 0, err[-4000:]
    assert "Traceback" not in err
    assert "; 4 non-finite step(s) skipped, 2 rollback(s)" in out, out
  # The resumed run started from step 4 and repeated both rollbacks.
  err = _logs(resumed)[1]
  assert _start_step(err) == 4
  assert "restored" in err and "(data offset now 2)" in err and "(data offset now 4)" in err
  got, step = _params(run_dir)
  want, ref_step = _params(ref_dir)
  assert step == ref_step == 12
  for a, b in zip(_leaves(got), _leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)
  meta = lambda d: (d / "checkpoints" / "12" / "meta" / "metadata").read_text()
  assert '"data_offset": 4' in meta(run_dir) and meta(run_dir) == meta(ref_dir).replace(
    str(ref_dir), str(run_dir)
  )


# ----------------------------------------------------------------------------- processes


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_and_stop_together(tmp_path, env, reference):
  """Two processes (as on two TPU hosts) against one, then SIGTERM to one of them."""
  workdir, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints"
  port = _free_port()
  procs = []
  try:
    for i in range(2):
      procs.append(
        _start(
          _train_argv(
            workdir,
            "--config.num_train_steps=200",
            "--config.checkpoint_every_steps=2",
            "--config.eval_every_steps=2",
            "--config.keep_checkpoints=100",
            "--config.preemption_check_every_steps=2",
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
          ),
          env,
          tmp_path / f"process{i}",
        )
      )
    _wait_for("the checkpoint of step 4", lambda: 4 in _steps(ckpt), *procs, timeout=300)
    procs[1].send_signal(signal.SIGTERM)  # only one host is told: both must stop
    for p in procs:
      p.wait(timeout=120)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  (out0, err0), (out1, err1) = _logs(procs[0]), _logs(procs[1])
  assert [p.returncode for p in procs] == [0, 0], f"{err0[-3000:]}\n{err1[-3000:]}"
  # Both stopped at the same step, with its checkpoint. With jax.distributed the SIGTERM
  # reaches JAX's preemption service (its own handler, which the run leaves in place),
  # which picks the step for all processes.
  reached = _steps(ckpt)[-1]
  assert 4 <= reached < 200
  assert f"preempted (JAX preemption notice) at step {reached}" in out0
  assert f"preempted at step {reached}; checkpoint saved" in err0
  assert "(stopped by JAX preemption notice)" in err0
  assert _tmp_dirs(ckpt) == []
  # Process 0 logs the run; process 1 logs no training line and prints no summary
  # (gloo may print its connection notice on stdout).
  assert "2 device(s) on 2 host(s), global batch 8" in err0
  assert "step 4/200: loss" in err0 and "step 4: validation Y-PSNR" in err0
  noise = [
    l
    for l in (out1 + err1).splitlines()
    if re.search(r"train\.py|step \d+|train/|trained|preempted", l)
  ]
  assert noise == [], noise[:5]
  # One set of checkpoints and one TensorBoard log, written together by both processes.
  assert _steps(ckpt) == sorted(set(range(2, reached + 1, 2)) | {reached})
  events = [n for n in os.listdir(workdir) if n.startswith("events.out.tfevents")]
  assert len(events) == 1, events
  # Each process fed its half of every global batch: step 4 is the one-process step 4.
  got, step = _params(ckpt / "4")
  want, ref_step = _params(reference.result() / "checkpoints" / "4")
  assert step == ref_step == 4
  for a, b in zip(_leaves(got), _leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- bad input


@dataclasses.dataclass
class Case:
  """A command that must fail with one clear message and change nothing that existed."""

  argv: list[str]
  keyword: str | tuple[str, ...]  # one `error:` line must contain it (all of them)
  guarded: list[pathlib.Path]  # folders/files whose contents must survive unchanged
  status: Optional[int] = None  # the exact exit status (else any non-zero one)
  env: Optional[dict] = None  # added to the environment
  error_lines: int = 1  # infer/evaluate add a count line after per-image errors
  check: Optional[Callable[[], None]] = None  # more assertions after the run


def _png(path: pathlib.Path, size: int, seed: int = 0) -> pathlib.Path:
  from PIL import Image

  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return path


def _corrupt_png(path: pathlib.Path, size: int = 48) -> pathlib.Path:
  """A PNG with a valid header and truncated pixel data (an interrupted download)."""
  data = _png(path, size, seed=1).read_bytes()
  path.write_bytes(data[: len(data) // 2])
  return path


def _state_dict_npz(path: pathlib.Path) -> pathlib.Path:
  """The official DANv2 x2 test weights as a .npz state_dict (what convert reads)."""
  with np.load(FIXTURES / "parity_danv2_x2.npz") as f:
    sd = {k[len("sd/") :]: f[k] for k in f.files if k.startswith("sd/")}
  np.savez(path, **sd)
  return path


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.copytree(src, dst)  # copy2: times kept
  return dst


def _py(module: str, *args) -> list[str]:
  return [sys.executable, "-m", module, *map(str, args)]


_FAST = ("--config.data.val_source=none",)


def _train_on_folder_argv(workdir, train_dir, *flags: str) -> list[str]:
  """A fast training run (workdir `workdir`) on the HR images of the folder `train_dir`."""
  return _train_argv(
    workdir, "--config.data.source=folder", f"--config.data.train_dir={train_dir}", *flags, *_FAST
  )


CASES: dict[str, Callable[[pathlib.Path, pathlib.Path], Case]] = {}


def _case(fn):
  CASES[fn.__name__] = fn
  return fn


# -- main (training)


@_case
def train_dir_missing(tmp, ref):
  return Case(_train_on_folder_argv(tmp / "w", tmp / "nope"), "does not exist", [])


@_case
def train_dir_empty(tmp, ref):
  (tmp / "empty").mkdir()
  return Case(_train_on_folder_argv(tmp / "w", tmp / "empty"), "no .png", [tmp / "empty"])


@_case
def train_image_corrupt(tmp, ref):
  _png(tmp / "hr" / "good.png", 48)
  _corrupt_png(tmp / "hr" / "broken.png")
  return Case(_train_on_folder_argv(tmp / "w", tmp / "hr"), "corrupt training image", [tmp / "hr"])


@_case
def train_file_not_an_image(tmp, ref):
  (tmp / "hr").mkdir()
  (tmp / "hr" / "notes.png").write_text("these are not pixels")
  return Case(_train_on_folder_argv(tmp / "w", tmp / "hr"), "readable PNG/JPEG/BMP", [tmp / "hr"])


@_case
def train_images_smaller_than_crop(tmp, ref):
  _png(tmp / "hr" / "tiny.png", 8)
  return Case(
    _train_on_folder_argv(tmp / "w", tmp / "hr", "--config.data.hr_crop=16"),
    "config.data.hr_crop = 16: no image",
    [tmp / "hr"],
  )


@_case
def config_file_missing(tmp, ref):
  return Case(
    _train_argv(tmp / "w", config=str(tmp / "nope.py")), "no such config file", [], status=2
  )


@_case
def config_field_unknown(tmp, ref):
  return Case(_train_argv(tmp / "w", "--config.model.scal=4"), "no such config field", [], status=2)


@_case
def config_scale_5(tmp, ref):
  return Case(_train_argv(tmp / "w", "--config.model.scale=5"), "model.scale", [])


@_case
def config_negative_learning_rate(tmp, ref):
  return Case(
    _train_argv(tmp / "w", "--config.learning_rate=-0.001"),
    "config.learning_rate must be a positive number",
    [],
  )


@_case
def config_batch_not_divisible_by_devices(tmp, ref):
  return Case(
    _train_argv(tmp / "w", "--config.batch_size=8", *_FAST),
    "does not divide over the 3 devices",
    [],
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=3"},
  )


@_case
def workdir_holds_another_scale(tmp, ref):
  work = _copy(ref, tmp / "w")
  return Case(_train_argv(work, "--config.model.scale=4", *_FAST), "refusing to resume", [work])


@_case
def workdir_holds_another_version(tmp, ref):
  work = _copy(ref, tmp / "w")
  return Case(
    _train_argv(work, *_FAST, config=TEST_CONFIG + ":v1"),
    "DANv2 x2 model but the config trains DANv1 x2",
    [work],
  )


@_case
def workdir_under_a_file(tmp, ref):
  (tmp / "file").write_text("a file, not a folder")  # also stops root, unlike chmod
  return Case(_train_argv(tmp / "file" / "w", *_FAST), "cannot create workdir", [tmp / "file"])


@_case
def loss_stays_nan_through_rollbacks(tmp, ref):
  # Every update after step 16 blows up: skipped steps, one rollback, then a stop.
  work = _copy(ref, tmp / "w")
  return Case(
    _train_argv(
      work,
      f"--config.num_train_steps={STEPS + 8}",
      "--config.learning_rate=1e30",
      "--config.checkpoint_every_steps=0",
      "--config.log_every_steps=1",
      "--config.max_consecutive_nonfinite=2",
      "--config.max_rollbacks=1",
      *_FAST,
    ),
    (
      "training stopped at step",
      "is not finite",
      "config.max_rollbacks = 1",
      f"the last good checkpoint is step {STEPS}",
      "config.clip_grad_norm",
    ),
    [work],
  )


# -- evaluate


@_case
def evaluate_checkpoint_missing(tmp, ref):
  _png(tmp / "set" / "a.png", 32)
  return Case(
    _py(
      "dan_jax.evaluate",
      "--checkpoint",
      tmp / "nope",
      "--out",
      tmp / "out",
      "--dataset",
      f"S={tmp / 'set'}",
    ),
    "no checkpoint at",
    [tmp / "set"],
    status=2,
  )


@_case
def evaluate_dataset_empty(tmp, ref):
  (tmp / "set").mkdir()
  return Case(
    _py(
      "dan_jax.evaluate", "--checkpoint", ref, "--out", tmp / "out", "--dataset", f"S={tmp / 'set'}"
    ),
    "no .png/.jpg/.bmp images in",
    [ref],
    status=2,
  )


@_case
def evaluate_scale_mismatch(tmp, ref):
  _png(tmp / "set" / "a.png", 32)
  return Case(
    _py(
      "dan_jax.evaluate",
      "--checkpoint",
      ref,
      "--out",
      tmp / "out",
      "--dataset",
      f"S={tmp / 'set'}",
      "--scale",
      4,
    ),
    "--scale 4 does not match the checkpoint",
    [ref, tmp / "set"],
    status=2,
  )


# -- infer


@_case
def infer_output_is_input(tmp, ref):
  _png(tmp / "in" / "a.png", 16)
  return Case(
    _py("dan_jax.infer", "--checkpoint", ref, "--input", tmp / "in", "--output", tmp / "in"),
    "is the input folder",
    [ref, tmp / "in"],
    status=2,
    check=lambda: _assert_names(tmp / "in", ["a.png"]),
  )


@_case
def infer_image_corrupt(tmp, ref):
  _png(tmp / "in" / "good.png", 16)
  _corrupt_png(tmp / "in" / "broken.png", 16)
  return Case(
    _py("dan_jax.infer", "--checkpoint", ref, "--input", tmp / "in", "--output", tmp / "out"),
    "broken.png",
    [ref, tmp / "in"],
    status=1,
    error_lines=2,
    check=lambda: _assert_names(
      tmp / "out", ["good_x2.png", "good_x2_kernel.npy", "good_x2_kernel.png"]
    ),
  )


@_case
def infer_output_exists(tmp, ref):
  _png(tmp / "in" / "a.png", 16)
  (tmp / "out").mkdir()
  (tmp / "out" / "a_x2.png").write_bytes(b"an earlier result")
  return Case(
    _py("dan_jax.infer", "--checkpoint", ref, "--input", tmp / "in", "--output", tmp / "out"),
    "exists (pass --overwrite",
    [ref, tmp / "in", tmp / "out"],
    status=1,
    error_lines=2,
  )


@_case
def infer_checkpoint_half_written(tmp, ref):
  # What a run killed during its first save leaves behind.
  part = tmp / "w" / "checkpoints" / f"1.{TMP_MARK}-1795650000"
  (part / "state").mkdir(parents=True)
  (part / "state" / "partial").write_bytes(b"\0" * 100)
  _png(tmp / "in" / "a.png", 16)
  return Case(
    _py("dan_jax.infer", "--checkpoint", tmp / "w", "--input", tmp / "in", "--output", tmp / "out"),
    "no checkpoint under",
    [tmp / "w", tmp / "in"],
    status=2,
  )


# -- convert


@_case
def convert_weights_of_another_version(tmp, ref):
  npz = _state_dict_npz(tmp / "danv2_x2.npz")
  return Case(
    _py(
      "dan_jax.convert", "--official", npz, "--out", tmp / "out", "--config", TEST_CONFIG + ":v1"
    ),
    "these weights are DANv2, but the model config is DANv1",
    [npz],
    status=2,
    check=lambda: _assert_names(tmp / "out", None),
  )


@_case
def convert_out_holds_a_checkpoint(tmp, ref):
  from dan_jax import convert

  npz = _state_dict_npz(tmp / "danv2_x2.npz")
  convert.convert_file(str(npz), str(tmp / "out"))  # an earlier conversion
  return Case(
    _py("dan_jax.convert", "--official", npz, "--out", tmp / "out"),
    "already holds a checkpoint at step 0",
    [npz, tmp / "out"],
    status=2,
  )


@_case
def convert_file_is_not_a_state_dict(tmp, ref):
  (tmp / "weights.npz").write_text("not a zip archive")
  return Case(
    _py("dan_jax.convert", "--official", tmp / "weights.npz", "--out", tmp / "out"),
    "is not a readable .npz state_dict",
    [tmp / "weights.npz"],
    status=2,
  )


def _assert_names(folder: pathlib.Path, names: Optional[list[str]]) -> None:
  """The folder holds exactly these files (None: the folder does not exist)."""
  if names is None:
    assert not folder.exists(), sorted(os.listdir(folder))
  else:
    assert sorted(os.listdir(folder)) == sorted(names)


def _snapshot(paths: list[pathlib.Path]) -> dict[str, tuple[int, int, int]]:
  """{file: (size, mtime, content hash)} of every file below `paths`."""
  out = {}
  for root in paths:
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    for p in files:
      st = p.stat()
      out[str(p)] = (st.st_size, st.st_mtime_ns, hash(p.read_bytes()))
  return out


@dataclasses.dataclass
class Outcome:
  case: Case
  returncode: int
  stdout: str
  stderr: str
  before: dict
  after: dict


@pytest.fixture(scope="module")
def bad_input(tmp_path_factory, env, reference):
  """Runs every case (three at a time: most of their time is imports)."""
  ref = reference.result()
  cases = {}
  for name, build in CASES.items():
    tmp = tmp_path_factory.mktemp(name)
    cases[name] = build(tmp, ref)

  def run(name):
    case = cases[name]
    before = _snapshot(case.guarded)
    proc = subprocess.run(
      case.argv,
      cwd=ROOT,
      env=dict(env, **(case.env or {})),
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
    )
    return name, Outcome(
      case, proc.returncode, proc.stdout, proc.stderr, before, _snapshot(case.guarded)
    )

  with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
    return dict(pool.map(run, cases))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_error_and_nothing_is_lost(bad_input, name):
  o = bad_input[name]
  where = f"status {o.returncode}\nstdout: {o.stdout[-1500:]}\nstderr: {o.stderr[-3000:]}"
  assert o.returncode != 0, where
  if o.case.status is not None:
    assert o.returncode == o.case.status, where
  assert "Traceback" not in o.stderr + o.stdout, where
  errors = [l for l in o.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == o.case.error_lines, where
  keywords = (o.case.keyword,) if isinstance(o.case.keyword, str) else o.case.keyword
  assert any(all(k in l for k in keywords) for l in errors), where
  # Nothing that existed before was deleted, replaced or changed.
  lost = {f for f in o.before if f not in o.after}
  changed = {f for f in o.before if f in o.after and o.after[f] != o.before[f]}
  assert not lost and not changed, (sorted(lost)[:5], sorted(changed)[:5])
  if o.case.check is not None:
    o.case.check()


@pytest.mark.slow
def test_bad_input_table_covers_every_command_line(bad_input):
  assert len(bad_input) >= 15
  modules = sorted({o.case.argv[2] for o in bad_input.values()})
  assert modules == ["dan_jax.convert", "dan_jax.evaluate", "dan_jax.infer", "dan_jax.main"]
