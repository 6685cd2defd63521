"""Training-loop throughput with and without a host read of the device every step.

  python benchmarks/host_sync.py                      # configs/test.py, 3 repeats
  python benchmarks/host_sync.py --steps 400 --window 100 --repeats 5

Both loops do what `train.train_and_evaluate` does between steps (next batch from the
input pipeline, `to_global`, dispatch the jitted train step of the config) and differ only
in when they read device values:

* per-step: read step s-1's `finite` flag after dispatching step s (the loop before issue
  12 did this to stop on a NaN): the host can never get more than one step ahead;
* per-window: keep the metrics on the device and read them once every --window steps (the
  loop now: non-finite steps are skipped on the device, counters live in the state).

Prints steps/s (median of --repeats, after a warm-up) for each. Never run as a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from dan_jax import config as config_lib
from dan_jax import errors
from dan_jax import input_pipeline
from dan_jax import models
from dan_jax import parallel
from dan_jax import steps
from dan_jax import train_config
from dan_jax import train_state


def _loop(step_fn, state, batches, data_sharding, steps: int, window: int, per_step: bool):
  """Runs `steps` steps; returns (state, seconds, seconds the host waited in reads)."""
  start = time.perf_counter()
  pending, kept, waited = None, [], 0.0
  for i in range(1, steps + 1):
    state, metrics = step_fn(state, parallel.to_global(next(batches), data_sharding))
    t = time.perf_counter()
    if per_step:
      if pending is not None:
        bool(parallel.to_host(pending["finite"]))  # the one-step-late read
      pending = metrics
    kept.append(metrics)
    if i % window == 0 or i == steps:
      [{k: float(parallel.to_host(v)) for k, v in m.items()} for m in kept]
      kept = []
    waited += time.perf_counter() - t
  jax.block_until_ready(state)
  return state, time.perf_counter() - start, waited


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "test.py")
  )
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument(
    "--window", type=int, default=100, help="steps per logging window (configs/default.py: 100)"
  )
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  config = config_lib.load(args.config)
  config.log_every_steps = args.window
  spec = train_config.validate_config(config)
  mesh = parallel.create_mesh(jax.devices()[:1])
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  model, _, tx, step_fn, _ = steps.step_functions(
    spec,
    tuple(
      tuple(config[f]) if f == "lr_milestones" else config.get(f, 0.0)
      for f in steps.OPTIMIZER_FIELDS
    ),
    mesh,
    float(config.kernel_loss_weight),
    bool(config.supervise_all_iterations),
    float(config.ema_decay),
  )
  pca = np.linalg.qr(np.random.default_rng(0).normal(size=(spec.kernel_size**2, spec.code_len)))[
    0
  ].astype(np.float32)
  state = parallel.to_global(
    train_state.create_train_state(models.init_variables(model, 0, pca), tx, config.ema_decay > 0),
    replicated,
  )
  batches = input_pipeline.create_train_iterator(config, pca)
  state, *_ = _loop(step_fn, state, batches, data, 20, args.window, True)  # compile, warm

  times = {"per-step": [], "per-window": []}
  waits = {name: [] for name in times}
  for _ in range(args.repeats):  # alternate, so drifts hit both alike
    for name in times:
      state, seconds, waited = _loop(
        step_fn, state, batches, data, args.steps, args.window, name == "per-step"
      )
      times[name].append(args.steps / seconds)
      waits[name].append(1e3 * waited / args.steps)
  print(
    f"# host reads, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
    f"{os.cpu_count()} cores, devices {[d.platform for d in jax.devices()]}, "
    f"jax {jax.__version__}, config {os.path.basename(args.config)} "
    f"(batch {config.batch_size}), {args.steps} steps x {args.repeats}, window "
    f"{args.window}"
  )
  print("| loop | steps/s (median) | all runs | host blocked in reads, ms/step (median) |")
  print("|---|---|---|---|")
  for name, values in times.items():
    print(
      f"| read {name} | {statistics.median(values):.1f} | "
      f"{', '.join(f'{v:.1f}' for v in values)} | "
      f"{statistics.median(waits[name]):.2f} |"
    )
  ratio = statistics.median(times["per-window"]) / statistics.median(times["per-step"])
  print(f"per-window / per-step: {ratio:.2f}x")


if __name__ == "__main__":
  try:
    main()
  except errors.Error as e:  # a bad config, checkpoint or argument: one line, not a traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
