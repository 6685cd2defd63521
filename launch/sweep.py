"""Kernel-space ablation sweep: methods x train kernel spaces x seeds, tested on every
(test set, test kernel space).

  python launch/sweep.py --config=configs/demo.py --workdir=/tmp/sweep \
      --methods=v2,dcls,baseline --train_spaces=iso,aniso --seeds=0,1,2 [--mode=local]

Modes (local, slurm, tpu, plan, collect), resuming, test sets and the result files are
described in `--help` and the README's sweep section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,I001  (puts this checkout on sys.path)
import sweep_eval  # noqa: E402
import sweep_report  # noqa: E402
from dan_jax import storage  # noqa: E402
from dan_jax.errors import Error  # noqa: E402
from dan_jax.errors import UsageError  # noqa: E402
from sweep_eval import SweepError  # noqa: E402

MODES = ("local", "plan", "collect", "slurm", "tpu")


@dataclasses.dataclass
class Run:
  """One training run of the sweep."""

  method: str  # the config argument ("" when --methods is not given)
  version: str  # the model version it trains (DANv2, DCLS, ...)
  space: str
  seed: int
  spec: str  # config file[:method]
  name: str  # its folder under the workdir
  run_dir: str
  config: Any = None

  @property
  def label(self) -> str:
    """Its table row: method/train space (seeds are averaged)."""
    return f"{self.version}/{self.space}" if self.method else self.space


_MANUAL = """\
  python launch/sweep.py --config=configs/demo.py --workdir=/tmp/sweep \
      --methods=v2,dcls --train_spaces=iso,aniso,motion --test_spaces=iso,aniso,motion \
      --seeds=0,1,2 --test_sets=Set14=/data/Set14,B100=/data/B100 [--mode=local]
  python launch/sweep.py ... --mode=slurm --partition=gpu --nodes=1 --gpus_per_node=8
  python launch/sweep.py ... --mode=tpu --tpus=slice-a,slice-b --zone=us-central2-b
  python launch/sweep.py ... --mode=plan      # print one training command per run
  python launch/sweep.py ... --mode=collect   # score what has finished, list the rest

Modes: local (default) trains the runs one after another here, then collects; slurm
submits one job array (one task per run, launch/slurm.py's conventions: jax.distributed,
--requeue, SIGTERM 120 s before the time limit) and one collect job that runs after it
(--dependency=afterany), printing their ids (--dry_run prints the scripts); tpu trains each
run through launch/tpu_pod.py (one after another on --tpu, or one run per slice at a time
with --tpus=a,b), then collects; plan prints the commands; collect scores finished runs
and lists the others as pending or failed, with the reason.

Every mode skips runs that are done (final checkpoint at num_train_steps and a scores file
for the current test sets), so a sweep run again continues where it stopped and never
retrains a finished run; slurm mode also skips runs whose array task is still queued.
Runs live in WORKDIR/train_[METHOD_]SPACE_seedN (config overrides `seed=N` and the train
space's degradation.* fields). Test sets (`--test_sets=NAME=PATH,...`, folders or gs://
prefixes of HR images; default: the 2 held-out demo photos) are synthesized once per test
space under WORKDIR/test_sets (launch/sweep_eval.py). Results: WORKDIR/results.csv (one
row per run, test set and test space), results.md (mean ± std over seeds per cell: Y-PSNR,
SSIM, and kernel MSE where the method estimates kernels of the test kernels' size),
heatmap_<test set>.png and TensorBoard HParams (--tensorboard_dir, default
WORKDIR/tensorboard). Extra arguments are config overrides (`num_train_steps=200`).
"""


# ---------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------


def known_methods() -> list[str]:
  """The model versions the package accepts (a new family shows up here by itself)."""
  from dan_jax import models

  return list(models.FAMILIES)


def space_overrides(space: str, kernel_size: int) -> dict:
  from dan_jax import degradation

  if space not in degradation.KERNEL_SPACES:
    raise UsageError(
      f"unknown kernel space {space!r}; known: {', '.join(degradation.KERNEL_SPACES)}"
    )
  return degradation.kernel_space_overrides(space, kernel_size)


def train_config(config_spec: str, space: str, overrides: Sequence[str], seed: int = 0):
  """The config of one training run: the base config, the overrides, the kernel space."""
  from dan_jax import config as config_lib

  config = config_lib.load_with_overrides(config_spec, list(overrides) + [f"seed={seed}"])
  config.degradation.update(space_overrides(space, config.model.kernel_size))
  return config


def parse_seeds(value: str) -> list[int]:
  try:
    seeds = [int(s) for s in value.split(",") if s.strip()]
  except ValueError:
    raise UsageError(f"--seeds must be comma-separated integers (0,1,2), got {value!r}") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise UsageError(f"--seeds must list distinct integers, got {value!r}")
  return seeds


def _split(value: str, flag: str) -> list[str]:
  items = [s.strip() for s in value.split(",") if s.strip()]
  if not items or len(set(items)) != len(items):
    raise UsageError(f"{flag} must list distinct names, got {value!r}")
  return items


def plan_runs(args, overrides: Sequence[str]) -> list[Run]:
  """Every training run: methods x train spaces x seeds."""
  base = args.config.partition(":")[0]
  methods = _split(args.methods, "--methods") if args.methods else [""]
  seeds = parse_seeds(args.seeds)
  spaces = _split(args.train_spaces, "--train_spaces")
  for space in spaces + _split(args.test_spaces, "--test_spaces"):
    space_overrides(space, 21)
  runs = []
  for method in methods:
    spec = f"{base}:{method}" if method else args.config
    for space in spaces:
      for seed in seeds:
        try:
          config = train_config(spec, space, overrides, seed)
        except Error as e:
          if not method:
            raise
          raise UsageError(
            f"unknown method {method!r} ({e}); methods: {', '.join(known_methods())}"
          ) from e
        version = config.model.version
        if method and version not in known_methods():
          raise UsageError(f"unknown method {method!r}; methods: {', '.join(known_methods())}")
        name = f"train_{method + '_' if method else ''}{space}_seed{seed}"
        runs.append(
          Run(method, version, space, seed, spec, name, _join(args.workdir, name), config)
        )
  return runs


def train_argv(run: Run, overrides: Sequence[str], python: str, distributed: bool) -> list[str]:
  """The `python -m dan_jax.main` of one run (seed and kernel space as overrides)."""
  extra = [f"seed={run.seed}"] + [
    f"degradation.{k}={v}"
    for k, v in space_overrides(run.space, run.config.model.kernel_size).items()
  ]
  return _common.train_command(
    run.spec, run.run_dir, list(overrides) + extra, python=python, distributed=distributed
  )


def _join(workdir: str, name: str) -> str:
  return storage.join(workdir, name)


# ---------------------------------------------------------------------------------------
# Status and collection
# ---------------------------------------------------------------------------------------


def is_trained(run: Run) -> bool:
  steps = sweep_eval.checkpoint_steps(run.run_dir)
  return bool(steps) and steps[-1] >= run.config.num_train_steps


class Sweep:
  """The runs, the test sets and the scorer of one sweep invocation."""

  def __init__(self, args, overrides: Sequence[str], log=print):
    self.args, self.overrides, self.log = args, list(overrides), log
    self.runs = plan_runs(args, overrides)
    self.base = self.runs[0].config
    self.test_sets = sweep_eval.parse_test_sets(args.test_sets)
    for name, path in self.test_sets.items():
      sweep_eval.hr_listing(name, path)  # a missing or empty folder fails before training
    self.test_spaces = _split(args.test_spaces, "--test_spaces")
    self._tests: Optional[dict] = None
    self._digests: Optional[dict] = None
    self.scorer = sweep_eval.Scorer(tile=args.tile, batch_size=args.batch_size)

  @property
  def test_keys(self) -> list[str]:
    return [f"{n}/{s}" for n in self.test_sets for s in self.test_spaces]

  def _set_options(self) -> dict:
    from dan_jax import degradation

    model = self.base.model
    return dict(
      scale=model.scale,
      kernel_size=model.kernel_size,
      noise=dataclasses.asdict(degradation.noise_spec_from_config(self.base.degradation)),
      crop=self.args.test_crop,
      max_images=self.args.test_images,
    )

  def digests(self) -> dict[str, str]:
    """{"set/space": manifest digest}: what a run's scores must have been computed on."""
    if self._digests is None:
      opts = self._set_options()
      self._digests = {
        f"{n}/{s}": sweep_eval.manifest(n, p, s, **opts)[1]
        for n, p in self.test_sets.items()
        for s in self.test_spaces
      }
    return self._digests

  def tests(self) -> dict:
    """{"set/space": TestSet}, synthesized or read from the workdir's cache."""
    if self._tests is None:
      opts = self._set_options()
      self._tests = {}
      for name, path in self.test_sets.items():
        for space in self.test_spaces:
          t = sweep_eval.prepare_test_set(
            name, path, space, self.args.workdir, log=self.log, **opts
          )
          self._tests[t.key] = t
    return self._tests

  def status(self, run: Run) -> dict:
    """{'status': done|pending|failed|unscored, 'reason', 'step', 'scores'} of a run."""
    steps = sweep_eval.checkpoint_steps(run.run_dir)
    want = run.config.num_train_steps
    if not steps or steps[-1] < want:
      reason = "no checkpoint" if not steps else f"last step {steps[-1]} below {want}"
      err = sweep_eval.error_line(run.run_dir)
      if err:
        return {"status": "failed", "reason": f"{reason}; {err}"}
      return {"status": "pending", "reason": reason}
    scores = sweep_eval.read_json(_join(run.run_dir, sweep_eval.SCORES_FILE)) or {}
    current = scores.get("step") == steps[-1]
    return {
      "status": "unscored",
      "reason": "",
      "step": steps[-1],
      "scores": scores.get("scores", {}) if current else {},
      "model": scores.get("model") if current else None,
    }

  def _check_model(self, run: Run, model: dict) -> None:
    for field in ("scale", "kernel_size"):
      have, want = model.get(field), run.config.model.get(field)
      if have != want:
        raise SweepError(
          f"run {run.run_dir} is a finished run with model.{field}={have}, but this sweep "
          f"trains model.{field}={want}; move the run away or give the sweep its config"
        )

  def score(self, run: Run, st: dict) -> dict:
    """Scores a trained run on the test sets it has no current scores for."""
    if st.get("model"):
      self._check_model(run, st["model"])
    digests = self.digests()
    todo = [k for k in self.test_keys if st["scores"].get(k, {}).get("digest") != digests[k]]
    if todo:
      from dan_jax import checkpoint

      model_config, variables, step = checkpoint.load_model(run.run_dir)
      self._check_model(run, model_config)  # before any test set is (re)built
      st["model"] = {f: model_config.get(f) for f in ("version", "scale", "kernel_size")}
      tests = self.tests()
      predictor = self.scorer.predictor(model_config, variables)
      self.log(f"scoring {run.name} (step {step}) on {', '.join(todo)}")
      for k in todo:
        st["scores"][k] = self.scorer.score(predictor, tests[k])
      sweep_eval.write_text(
        _join(run.run_dir, sweep_eval.SCORES_FILE),
        json.dumps({"step": st["step"], "model": st["model"], "scores": st["scores"]}, indent=1),
      )
    st["scores"] = {k: st["scores"][k] for k in self.test_keys}
    st["status"] = "done"
    return st

  def needs_training(self) -> list[Run]:
    return [r for r in self.runs if not is_trained(r)]

  def collect(self) -> int:
    """Scores every trained run, writes the results, lists what is missing."""
    results = {}
    for run in self.runs:
      st = self.status(run)
      if st["status"] == "unscored":
        st = self.score(run, st)
      results[run.name] = dict(st, run=run)
    return self.report(results)

  def report(self, results: dict) -> int:
    w, args = self.args.workdir, self.args
    if not storage.is_url(w):
      storage.path(w).mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(r.label for r in self.runs))
    sweep_report.write_csv(_join(w, "results.csv"), results, self.test_keys)
    md = sweep_report.markdown(results, labels, list(self.test_sets), self.test_spaces)
    sweep_eval.write_text(_join(w, "results.md"), md)
    files = ["results.csv", "results.md"]
    for ts in self.test_sets:
      sweep_report.heatmap(_join(w, f"heatmap_{ts}.png"), results, labels, ts, self.test_spaces)
      files.append(f"heatmap_{ts}.png")
    tb = args.tensorboard_dir or _join(w, "tensorboard")
    if sweep_report.write_hparams(tb, results):
      files.append(f"TensorBoard HParams: tensorboard --logdir {tb}")
    print(md)
    missing = [r for r in results.values() if r["status"] != "done"]
    for r in missing:
      print(f"{r['status']}: {r['run'].name}: {r['reason']}")
    done = len(results) - len(missing)
    print(f"{done} of {len(results)} run(s) done; wrote {w}/{', '.join(files)}")
    return 0 if not missing else 1


# ---------------------------------------------------------------------------------------
# Local and TPU training
# ---------------------------------------------------------------------------------------


def train_local(sweep: Sweep) -> None:
  """Trains the unfinished runs one after another here; a failure is recorded, not fatal."""
  from dan_jax import train

  for run in sweep.needs_training():
    print(f"== training {run.name}: {run.label}, seed {run.seed} -> {run.run_dir}", flush=True)
    err = storage.path(_join(run.run_dir, sweep_eval.ERROR_FILE))
    if err.exists():
      err.unlink()
    try:
      train.train_and_evaluate(run.config, run.run_dir)
    except Exception as e:  # noqa: BLE001  (recorded; the sweep goes on)
      line = f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
      print(f"{run.name}: {line}", file=sys.stderr, flush=True)
      if not storage.is_url(run.run_dir):
        storage.path(run.run_dir).mkdir(parents=True, exist_ok=True)
      sweep_eval.write_text(err.as_posix() if storage.is_url(err) else str(err), line + "\n")


def tpu_commands(args, sweep: Sweep) -> dict[str, list[list[str]]]:
  """{slice: its gcloud commands}: setup once per slice, then its runs one after another."""
  import tempfile

  import tpu_pod

  slices = _split(args.tpus or args.tpu, "--tpus") if (args.tpus or args.tpu) else []
  if not slices or not args.zone:
    raise UsageError("--mode=tpu needs --tpu=NAME (or --tpus=a,b) and --zone")
  out: dict[str, list[list[str]]] = {s: [] for s in slices}
  for i, run in enumerate(sweep.needs_training()):
    tpu = slices[i % len(slices)]
    extra = train_argv(run, sweep.overrides, "python3", True)[5:]  # the overrides
    ns = argparse.Namespace(
      tpu=tpu, zone=args.zone, project=args.project, config=run.spec, workdir=run.run_dir
    )
    archive = os.path.join(tempfile.gettempdir(), f"dan_jax_{tpu}.tar.gz")
    cmds = tpu_pod.commands(ns, [e for e in extra if e != "--distributed"], archive)
    out[tpu] += cmds[-1:] if out[tpu] else cmds
  return {k: v for k, v in out.items() if v}


def train_tpu(args, sweep: Sweep) -> int:
  per_slice = tpu_commands(args, sweep)
  if args.dry_run:
    for tpu, cmds in per_slice.items():
      print(f"# slice {tpu}")
      _common.run_all(cmds, dry_run=True)
    return 0
  status = {}

  def work(tpu, cmds):
    status[tpu] = _common.run_all(cmds, dry_run=False)

  threads = [threading.Thread(target=work, args=kv) for kv in per_slice.items()]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return max(status.values(), default=0)


# ---------------------------------------------------------------------------------------
# SLURM
# ---------------------------------------------------------------------------------------


def array_script(args, sweep: Sweep, runs: Sequence[Run], slurm_dir: str) -> str:
  """One array task per run: `srun python -m dan_jax.main --distributed` on its nodes."""
  lines = _common.sbatch_header(
    args, args.job_name, f"{slurm_dir}/%A_%a.out", args.nodes, args.gpus_per_node
  ) + [
    f"#SBATCH --array=0-{len(runs) - 1}",
    "#SBATCH --requeue",
    "#SBATCH --signal=TERM@120",
    "",
    "set -euo pipefail",
    f"cd {_common.quote([args.repo])}",
    'case "$SLURM_ARRAY_TASK_ID" in',
  ]
  for i, run in enumerate(runs):
    cmd = train_argv(run, sweep.overrides, args.python, distributed=True)
    lines += [
      f"  {i}) RUN={_common.quote([run.run_dir])}",
      f"     CMD=({_common.quote(cmd)}) ;;",
    ]
  lines += [
    '  *) echo "no run for task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;',
    "esac",
    'mkdir -p "$RUN"',
    'echo "== sweep run $RUN: job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}'
    ' on $(hostname)" >> "$RUN/train.log"',
    'srun "${CMD[@]}" >> "$RUN/train.log" 2>&1',
    "",
  ]
  return "\n".join(lines)


def _absolute_test_sets(value: str) -> str:
  """--test_sets with local folders made absolute (the jobs run in the repository)."""
  items = []
  for name, path in sweep_eval.parse_test_sets(value).items():
    local = path != sweep_eval.DEMO and "://" not in path
    items.append(path if name == path else f"{name}={os.path.abspath(path) if local else path}")
  return ",".join(items)


def collect_script(args, slurm_dir: str) -> str:
  """The job that scores the finished runs and writes the tables once the array ends."""
  argv, skip = [], False
  for a in args.argv:
    if skip:
      skip = False
    elif a in ("--workdir", "--test_sets", "--mode"):
      skip = True  # its value is the next word
    elif not a.startswith(("--mode=", "--dry_run", "--workdir=", "--test_sets=")):
      argv.append(a)
  argv.append(f"--workdir={os.path.abspath(args.workdir)}")
  argv.append(f"--test_sets={_absolute_test_sets(args.test_sets)}")
  cmd = [args.python, os.path.join(args.repo, "launch", "sweep.py"), *argv, "--mode=collect"]
  lines = _common.sbatch_header(
    args, f"{args.job_name}-collect", f"{slurm_dir}/collect-%j.out", 1, min(args.gpus_per_node, 1)
  ) + _common.srun_body(args.repo, cmd)
  return "\n".join(lines)


def _sbatch(argv: list[str]) -> str:
  """Submits; returns the job id. A missing sbatch or a refused job is one error."""
  try:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
  except FileNotFoundError:
    raise SweepError(
      "sbatch is not on PATH: run --mode=slurm on a SLURM login node (or --dry_run to see "
      "the scripts)"
    ) from None
  if out.returncode != 0:
    msg = (out.stderr or out.stdout).strip().replace("\n", " ")
    raise SweepError(f"sbatch refused the job (exit status {out.returncode}): {msg}")
  return out.stdout.strip().split(";")[0]


def _active_runs(slurm_dir: str) -> set[str]:
  """Runs whose array task is still queued or running (from earlier submissions)."""
  record = sweep_eval.read_json(os.path.join(slurm_dir, "jobs.json")) or {"submissions": []}
  tasks = {}
  for sub in record["submissions"]:
    for idx, name in sub["tasks"].items():
      tasks[f"{sub['array']}_{idx}"] = name
  if not tasks:
    return set()
  ids = ",".join(sorted({t.split("_")[0] for t in tasks}))
  try:
    out = subprocess.run(
      ["squeue", "-h", "-r", "-o", "%i", "-j", ids], capture_output=True, text=True, timeout=60
    )
  except (FileNotFoundError, subprocess.TimeoutExpired):
    return set()
  return {tasks[t] for t in out.stdout.split() if t in tasks}


def submit_slurm(args, sweep: Sweep) -> int:
  if storage.is_url(args.workdir):
    raise UsageError("--mode=slurm needs a workdir on the cluster's shared filesystem")
  slurm_dir = os.path.join(os.path.abspath(args.workdir), "slurm")
  active = set() if args.dry_run else _active_runs(slurm_dir)
  runs = [r for r in sweep.needs_training() if r.name not in active]
  for name in sorted(active):
    print(f"{name}: still queued or running; not resubmitted")
  previous = sweep_eval.read_json(os.path.join(slurm_dir, "jobs.json")) or {"submissions": []}
  n = len(previous["submissions"])
  tag = f"{n:03d}" if not args.dry_run else "NNN"
  array_path = os.path.join(slurm_dir, f"sweep-{tag}.sbatch")
  collect_path = os.path.join(slurm_dir, f"collect-{tag}.sbatch")
  scripts = [(collect_path, collect_script(args, slurm_dir))]
  if runs:
    scripts.insert(0, (array_path, array_script(args, sweep, runs, slurm_dir)))
  if args.dry_run:
    for path, text in scripts:
      print(f"# {path}\n{text}")
    if runs:
      print(_common.quote(["sbatch", "--parsable", array_path]))
    dep = ["--dependency=afterany:<array job id>"] if runs else []
    print(_common.quote(["sbatch", "--parsable", *dep, collect_path]))
    return 0
  os.makedirs(slurm_dir, exist_ok=True)
  for path, text in scripts:
    with open(path, "w") as f:
      f.write(text)
  record_path = os.path.join(slurm_dir, "jobs.json")
  record = sweep_eval.read_json(record_path) or {"submissions": []}
  entry = {"array": "", "collect": "", "tasks": {str(i): r.name for i, r in enumerate(runs)}}
  if runs:
    entry["array"] = _sbatch(["sbatch", "--parsable", array_path])
    record["submissions"].append(entry)  # recorded at once: a rerun sees its tasks queued
    sweep_eval.write_text(record_path, json.dumps(record, indent=1))
  array_id = entry["array"]
  dep = [f"--dependency=afterany:{array_id}"] if array_id else []
  # A collect job that cannot run (array refused) must not be left behind: submit it last.
  entry["collect"] = collect_id = _sbatch(["sbatch", "--parsable", *dep, collect_path])
  if not runs:
    record["submissions"].append(entry)
  sweep_eval.write_text(record_path, json.dumps(record, indent=1))
  if runs:
    print(f"submitted job array {array_id}: {len(runs)} run(s): {', '.join(r.name for r in runs)}")
  print(f"submitted collect job {collect_id}" + (f" (after {array_id})" if array_id else ""))
  return 0


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog=_MANUAL,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--config", default="configs/demo.py", help="base config file[:arg]")
  p.add_argument("--workdir", required=True, help="sweep directory (local or gs://)")
  p.add_argument("--train_spaces", default="iso,aniso,motion", help="train kernel spaces")
  p.add_argument("--test_spaces", default="iso,aniso,motion", help="test kernel spaces")
  p.add_argument("--methods", default="", help="config arguments to compare, e.g. v2,dcls")
  p.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2")
  p.add_argument(
    "--test_sets", default=sweep_eval.DEMO, help="NAME=PATH,... folders of HR images (or demo)"
  )
  p.add_argument("--test_images", type=int, default=0, help="at most this many images per set")
  p.add_argument("--test_crop", type=int, default=0, help="HR centre crop (0: full images)")
  p.add_argument("--tile", type=int, default=256, help="LR tile for large images (DANv2)")
  p.add_argument("--batch_size", type=int, default=8, help="images or tiles per call")
  p.add_argument("--tensorboard_dir", default="", help="HParams logs (default WORKDIR/tensorboard)")
  p.add_argument("--mode", default="local", choices=MODES)
  p.add_argument("--dry_run", action="store_true", help="slurm/tpu: print, submit nothing")
  g = p.add_argument_group("slurm (as launch/slurm.py, per run)")
  g.add_argument("--nodes", type=int, default=1, help="nodes per run (one process each)")
  g.add_argument("--gpus_per_node", type=int, default=8, help="GPUs per node (0: none)")
  g.add_argument("--cpus_per_task", type=int, default=16, help="CPU cores per node")
  g.add_argument("--time", default="72:00:00", help="wall-time limit per run")
  g.add_argument("--partition", default="", help="SLURM partition")
  g.add_argument("--job_name", default="dan_sweep", help="job name")
  g.add_argument("--repo", default=_common.REPO, help="dan_jax checkout on the shared filesystem")
  g.add_argument("--python", default=sys.executable or "python3", help="interpreter on the nodes")
  g = p.add_argument_group("tpu (launch/tpu_pod.py)")
  g.add_argument("--tpu", default="", help="one TPU VM slice: runs one after another")
  g.add_argument("--tpus", default="", help="slices a,b,...: one run per slice at a time")
  g.add_argument("--zone", default="", help="the slices' zone")
  g.add_argument("--project", default="", help="GCP project (default: gcloud's)")
  return p


def main(argv: Optional[list[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args, overrides = build_parser().parse_known_args(argv)
  args.argv = argv
  from dan_jax import runtime

  runtime.setup_entry_point()  # before JAX starts; TensorFlow synthesizes the test sets
  try:
    if args.nodes < 1 or args.gpus_per_node < 0 or args.cpus_per_task < 1:
      raise UsageError("--nodes and --cpus_per_task must be positive, --gpus_per_node >= 0")
    if args.mode == "plan":
      runs = plan_runs(args, overrides)
      cmds = [train_argv(r, overrides, "python3", False) for r in runs if not is_trained(r)]
      return _common.run_all(cmds, dry_run=True)
    sweep = Sweep(args, overrides)
    if args.mode == "slurm":
      return submit_slurm(args, sweep)
    if args.mode == "tpu":
      status = train_tpu(args, sweep)
      if args.dry_run or status:
        return status
    if args.mode == "local":
      train_local(sweep)
    return sweep.collect()
  except (Error, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
