"""dan_jax benchmark suite: prints a table (and optionally the official PyTorch figures).

  python benchmarks/run.py                       # ours, on whatever jax.devices() gives
  python benchmarks/run.py --official_checkout ~/src/DAN --official_python ~/torch/bin/python
  python benchmarks/run.py --models DANv2 --skip pipeline --dtype bfloat16   # e.g. on a GPU
  python benchmarks/run.py --models DCLS --skip pipeline \
      --official_dcls_checkout ~/src/DCLS-SR --official_python ~/torch/bin/python

Figures (DANv1 x4 nf 64 nb 40 and DANv2 x4 nf 64 nb 10 ng 5, 4 iterations, fp32 unless
--dtype): train-step throughput at batch 4 of 64x64 LR crops (the cheap gradient of the
training loop), inference on a 180x320 LR image and time per output megapixel at 3 sizes,
compile times, input-pipeline throughput (x4, 256x256 HR, settings 1 and 2, 1 and 2
threads), and achieved GFLOP/s (XLA cost analysis) against the measured float32 GEMM rate.
DCLS (x4 setting 1: nf 64 nb 10 ng 5, 21x21 kernels, one pass, 13.6M parameters) adds the
train step's peak memory (resident-set high-water mark during one step minus the resident
set before it, both sides measured the same way; Linux only) and the CLS Fourier
deconvolution alone (forward, and forward + gradient), against the official code run by
`official_dcls_side.py` from the user's checkout.
Medians of --repeats timed runs after a warm-up. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable

from dan_jax import runtime

# Before JAX starts: XLA:CPU flag on CPU-only hosts (what RESULTS.md measured), TensorFlow
# (input-pipeline benchmark) off the accelerators.
runtime.setup_entry_point()

import jax
import jax.numpy as jnp
import numpy as np

from dan_jax import errors
from dan_jax import models
from dan_jax import steps
from dan_jax.models import spec as spec_lib

import timing  # beside this script

MODELS = {
  "DANv1": dict(version="DANv1", scale=4, nf=64, nb=40, loops=4),
  "DANv2": dict(version="DANv2", scale=4, nf=64, nb=10, ng=5, loops=4),
  "DCLS": dict(
    version="DCLS", scale=4, nf=64, nb=10, ng=5, input_para=256, kernel_size=21, loops=1
  ),
}
# What else a model's row measures: "remat" takes --remat, "memory" the peak resident set
# of a train step (a child process), "cls_fft" DCLS's Fourier deconvolution alone.
EXTRAS = {"DCLS": ("remat", "memory", "cls_fft")}
# The script that runs the official PyTorch side of a model, and its checkout flag.
OFFICIAL_SIDE = {
  "DANv1": ("official_side.py", "official_checkout"),
  "DANv2": ("official_side.py", "official_checkout"),
  "DCLS": ("official_dcls_side.py", "official_dcls_checkout"),
}


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
  """The machine's float32 matmul rate through XLA."""
  a = jnp.asarray(np.random.default_rng(0).uniform(size=(n, n)), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))
  return 2 * n**3 / timing.median_seconds(lambda: f(a), repeats) / 1e9


def _kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"no {field} in /proc/self/status")


def step_peak_bytes(step: Callable[[], Any]) -> int:
  """Peak resident memory one call of `step` adds over the resident set before it.

  The same measure as official_dcls_side.py: writing 5 to /proc/self/clear_refs resets the
  high-water mark (VmHWM) to the current resident set (Linux >= 4.0). Meaningful only in a
  process started with MALLOC_ENV (see `_memory_child`).
  """
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  before = _kib("VmRSS")
  jax.block_until_ready(step())
  return (_kib("VmHWM") - before) * 1024


# glibc keeps freed blocks for reuse (its mmap threshold grows as large blocks are freed),
# so after a warm-up step the next one allocates little that is new and the resident set
# barely moves. A fixed threshold (setting it disables the growth) maps every block over
# 128 KiB on its own and unmaps it when freed: the resident set then follows the live
# buffers, for XLA (aligned malloc) and PyTorch (malloc) alike.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _memory_child(args: argparse.Namespace, name: str) -> int:
  """Train-step peak memory of `name`, measured in a fresh process with MALLOC_ENV."""
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    "--memory_child",
    name,
    "--batch",
    str(args.batch),
    "--lr_size",
    str(args.lr_size),
    "--dtype",
    args.dtype,
    "--remat",
    args.remat or "",
  ]
  res = subprocess.run(
    cmd, capture_output=True, text=True, check=False, env=dict(os.environ, **MALLOC_ENV)
  )
  if res.returncode:
    raise SystemExit(f"error: the memory benchmark failed:\n{res.stderr[-2000:]}")
  return int(json.loads(res.stdout.strip().splitlines()[-1])["train_step_peak_bytes"])


def bench_cls_fft(args: argparse.Namespace, channels: int, kernel_size: int) -> dict:
  """DCLS's CLS Fourier deconvolution alone at the train-step feature shape."""
  from dan_jax.models import dcls

  rng = np.random.default_rng(2)
  b, s = args.batch, args.lr_size
  x = jnp.asarray(rng.uniform(size=(b, s, s, channels)), jnp.float32)
  k = rng.uniform(size=(b, kernel_size, kernel_size))
  k = jnp.asarray(k / k.sum((1, 2), keepdims=True), jnp.float32)
  smooth = jnp.asarray(rng.uniform(-0.5, 0.5, size=(b, 3, 3, channels)), jnp.float32)
  fwd = jax.jit(dcls.cls_deconvolution)
  grad = jax.jit(jax.grad(lambda x, sm: jnp.sum(dcls.cls_deconvolution(x, k, sm)), argnums=(0, 1)))
  jax.block_until_ready(fwd(x, k, smooth))
  jax.block_until_ready(grad(x, smooth))
  return {
    "fft_forward_s": timing.median_seconds(lambda: fwd(x, k, smooth), args.repeats),
    "fft_grad_s": timing.median_seconds(lambda: grad(x, smooth), args.repeats),
  }


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def bench_model(name: str, args: argparse.Namespace) -> dict:
  """Train step, inference and compile times of one model."""
  cfg = dict(MODELS[name], dtype=args.dtype, scan_unroll=args.scan_unroll)
  if "remat" in EXTRAS.get(name, ()) and args.remat:
    cfg["remat"] = args.remat
  model = models.create_model(cfg)
  k = model.spec.kernel_size
  pca = np.random.default_rng(0).normal(size=(k * k, 10)).astype(np.float32) * 0.05
  variables = models.init_variables(model, 0, pca)
  rng = np.random.default_rng(1)
  b, s = args.batch, args.lr_size
  batch = {
    "lr": rng.uniform(size=(b, s, s, 3)).astype(np.float32),
    "hr": rng.uniform(size=(b, 4 * s, 4 * s, 3)).astype(np.float32),
    "kernel": rng.dirichlet(np.ones(k * k), size=b).reshape(b, k, k).astype(np.float32),
    "code": rng.normal(size=(b, 10)).astype(np.float32),
  }
  if models.family(model.spec).needs_clean_lr(model.spec):  # e.g. DCLS's kernel loss
    batch["lr_clean"] = batch["lr"]
    batch["lr_blurred"] = np.clip(
      batch["lr"] + 0.01 * rng.uniform(size=batch["lr"].shape), 0, 1
    ).astype(np.float32)
  out: dict = {"model": name, "params": models.count_params(variables["params"])}

  # Model FLOPs from XLA's cost analysis of ONE iteration (the cost analysis counts the
  # body of the scan over iterations once): a forward pass is `loops` iterations; the train
  # step runs loops-1 iterations forward and differentiates the last (backward = 2x its
  # forward, the usual convention); inference scales with the pixel count.
  if not args.memory_child:
    lr_batch = jnp.asarray(batch["lr"])
    one = jax.jit(lambda v, x: model.apply(v, x, iterations=1)).lower(variables, lr_batch)
    iter_flops = _flops(one.compile())
    loops = model.spec.loops
    out["forward_flops"] = loops * iter_flops
    out["train_flops"] = (loops + 2) * iter_flops
    apply = jax.jit(model.apply)
    fwd = apply.lower(variables, lr_batch).compile()
    jax.block_until_ready(fwd(variables, lr_batch))
    out["forward_s"] = timing.median_seconds(lambda: fwd(variables, lr_batch), args.repeats)
    out["forward_gflops"] = out["forward_flops"] / out["forward_s"] / 1e9

  step_fn, state, batch = steps.benchmark_step(model, variables, batch)
  t = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  out["train_compile_s"] = time.perf_counter() - t
  state, _ = compiled(state, batch)  # warm-up
  holder = [state]

  def one_step():
    holder[0], metrics = compiled(holder[0], batch)
    return metrics

  if args.memory_child:  # right after the warm-up step, as official_dcls_side.py
    return {"train_step_peak_bytes": step_peak_bytes(one_step)}
  step_s = timing.median_seconds(one_step, args.repeats)
  out["train_step_s"] = step_s
  out["train_samples_per_s"] = b / step_s
  out["train_gflops"] = out["train_flops"] / step_s / 1e9
  mem = compiled.memory_analysis()
  if mem is not None:  # XLA's own figure: temporaries of one step (buffers it allocates)
    out["train_step_xla_temp_bytes"] = int(mem.temp_size_in_bytes)
  if "memory" in EXTRAS.get(name, ()):
    out["train_step_peak_bytes"] = _memory_child(args, name)
  if "cls_fft" in EXTRAS.get(name, ()):
    out.update(bench_cls_fft(args, model.spec.nf // 4, k))

  infer = {}
  for size in args.infer_sizes.split(","):
    h, w = (int(v) for v in size.split("x"))
    lr = jnp.asarray(rng.uniform(size=(1, h, w, 3)), jnp.float32)
    t = time.perf_counter()
    c = apply.lower(variables, lr).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(c(variables, lr))
    sec = timing.median_seconds(lambda: c(variables, lr), args.repeats)
    flops = out["forward_flops"] * (h * w) / (b * s * s)
    infer[size] = {
      "s": sec,
      "s_per_output_mpix": sec / (h * w * 16 / 1e6),
      "compile_s": compile_s,
      "gflops": flops / sec / 1e9,
    }
  out["infer"] = infer
  return out


def bench_pipeline(setting: int, threads: int, batches: int) -> float:
  """Samples/s of the training input pipeline (demo images, x4, 256x256 HR)."""
  import tensorflow as tf

  from dan_jax import degradation
  from dan_jax import input_pipeline

  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
  from configs import default

  config = default.get_config()
  config.data.source = "demo"
  config.batch_size = 16
  config.data.num_parallel_calls = threads
  if setting == 2:
    config.degradation.sig_min, config.degradation.sig_max = 0.6, 5.0
    config.degradation.rate_iso, config.degradation.random_disturb = 0.0, True
  pca = np.zeros((21 * 21, 10), np.float32)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  ds = input_pipeline.create_train_dataset(config, pca).with_options(options)
  it = iter(ds)
  next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  del degradation
  return batches * config.batch_size / (time.perf_counter() - t)


def official(args: argparse.Namespace, name: str) -> dict:
  cfg = MODELS[name]
  script = OFFICIAL_SIDE[name][0]
  if script == "official_dcls_side.py":
    cmd = [
      args.official_python,
      os.path.join(os.path.dirname(__file__), script),
      "--checkout",
      args.official_dcls_checkout,
      "--nf",
      str(cfg["nf"]),
      "--nb",
      str(cfg["nb"]),
      "--ng",
      str(cfg["ng"]),
      "--input_para",
      str(cfg["input_para"]),
      "--kernel_size",
      str(cfg["kernel_size"]),
      "--scale",
      str(cfg["scale"]),
      "--batch",
      str(args.batch),
      "--lr_size",
      str(args.lr_size),
      "--infer_sizes",
      args.infer_sizes,
      "--repeats",
      str(args.repeats),
      "--threads",
      str(args.official_threads),
    ]
    res = subprocess.run(
      cmd + ["--only", "train,forward,infer,fft"], capture_output=True, text=True, check=False
    )
    mem = subprocess.run(
      cmd + ["--only", "memory"],
      capture_output=True,
      text=True,
      check=False,
      env=dict(os.environ, **MALLOC_ENV),
    )
    for r in (res, mem):
      if r.returncode:
        raise SystemExit(f"error: the official DCLS benchmark failed:\n{r.stderr[-2000:]}")
    return dict(
      json.loads(res.stdout.strip().splitlines()[-1]),
      **json.loads(mem.stdout.strip().splitlines()[-1]),
    )
  cmd = [
    args.official_python,
    os.path.join(os.path.dirname(__file__), "official_side.py"),
    "--checkout",
    args.official_checkout,
    "--version",
    name,
    "--nf",
    str(cfg["nf"]),
    "--nb",
    str(cfg["nb"]),
    "--ng",
    str(cfg.get("ng", 5)),
    "--batch",
    str(args.batch),
    "--lr_size",
    str(args.lr_size),
    "--infer_sizes",
    args.infer_sizes,
    "--repeats",
    str(args.repeats),
  ]
  res = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if res.returncode:
    raise SystemExit(f"error: the official benchmark failed:\n{res.stderr[-2000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
  """The processor's name (/proc/cpuinfo), with its widest AVX: runs differ by machine."""
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
  except OSError:
    return platform.processor() or platform.machine()
  name = next(
    (x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")), ""
  )
  avx = "AVX-512" if "avx512f" in info else "AVX2" if "avx2" in info else "no AVX2"
  return f"{name or platform.machine()} ({avx})"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", default="DANv1,DANv2")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--lr_size", type=int, default=64)
  ap.add_argument("--infer_sizes", default="180x320,90x160,360x640")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--scan_unroll", type=int, default=1)
  ap.add_argument(
    "--remat",
    default="",
    choices=("",) + spec_lib.REMAT_MODES,
    help="DCLS model.remat: what its backward pass recomputes (default: the "
    "model's, 'auto': 'groups' on the CPU; see RESULTS.md)",
  )
  ap.add_argument("--skip", default="", help="comma list of: model,pipeline,gemm")
  ap.add_argument("--pipeline_batches", type=int, default=8)
  ap.add_argument("--official_checkout", default="", help="checkout of greatlog/DAN")
  ap.add_argument(
    "--official_dcls_checkout",
    default="",
    help="checkout of megvii-research/DCLS-SR (official side of the DCLS rows)",
  )
  ap.add_argument(
    "--official_threads",
    type=int,
    default=0,
    help="torch threads of the official DCLS side (0: one per core; on a busy "
    "CPU 1 can be much faster, see RESULTS.md)",
  )
  ap.add_argument(
    "--official_python", default=sys.executable, help="a Python with torch for the official side"
  )
  ap.add_argument("--json", default="", help="also write all figures to this file")
  ap.add_argument("--memory_child", default="", help=argparse.SUPPRESS)  # see _memory_child
  args = ap.parse_args()
  if args.memory_child:
    print(json.dumps(bench_model(args.memory_child, args)))
    return
  skip = set(filter(None, args.skip.split(",")))

  load = lambda: "/".join(f"{x:.2f}" for x in os.getloadavg())  # 1/5/15-minute averages
  print(
    f"# dan_jax benchmarks, {time.strftime('%Y-%m-%d')}, {_cpu_model()}, "
    f"{os.cpu_count()} cores, devices {[d.device_kind for d in jax.devices()]}, "
    f"jax {jax.__version__}, dtype {args.dtype}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
    f"load average {load()} at the start"
  )
  results: dict = {"models": []}
  if "gemm" not in skip:
    results["gemm_gflops"] = gemm_gflops()
    print(f"float32 GEMM (2048^3): {results['gemm_gflops']:.0f} GFLOP/s")
  if "model" not in skip:
    print(
      "| model | params | forward (s) | train step (s) | samples/s | train GFLOP/s "
      "| train compile (s) | 180x320 infer (s) | infer GFLOP/s | infer compile (s) "
      "| s/out-MPix by size |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
      r = bench_model(name, args)
      if getattr(args, OFFICIAL_SIDE[name][1]):
        r["official"] = official(args, name)
      results["models"].append(r)
      first = args.infer_sizes.split(",")[0]
      per = ", ".join(f"{k}: {v['s_per_output_mpix']:.2f}" for k, v in r["infer"].items())
      print(
        f"| {name} | {r['params']:,} | {r['forward_s']:.2f} | {r['train_step_s']:.2f} | "
        f"{r['train_samples_per_s']:.2f} | {r['train_gflops']:.0f} | "
        f"{r['train_compile_s']:.1f} | {r['infer'][first]['s']:.2f} | "
        f"{r['infer'][first]['gflops']:.0f} | {r['infer'][first]['compile_s']:.1f} | "
        f"{per} |"
      )
      if "official" in r:
        o = r["official"]
        print(
          f"| {name} official (torch {o['torch']}) | | {o['forward_s']:.2f} | "
          f"{o['train_step_s']:.2f} | {o['train_samples_per_s']:.2f} | | | "
          f"{o['infer_s'][first]:.2f} | | | |"
        )
        print(
          f"| ratio ours/official (speed) | | {o['forward_s'] / r['forward_s']:.2f} | | "
          f"{r['train_samples_per_s'] / o['train_samples_per_s']:.2f} | | | "
          f"{o['infer_s'][first] / r['infer'][first]['s']:.2f} | | | |"
        )
  for r in results["models"]:
    if "fft_forward_s" not in r:
      continue
    o = r.get("official", {})
    mib = lambda v: f"{v / 2**20:.0f} MiB"
    print(f"| {r['model']} | ours | official | ratio |")
    print("|---|---|---|---|")
    print(
      f"| train-step peak memory | {mib(r['train_step_peak_bytes'])} (XLA temporaries "
      f"{mib(r.get('train_step_xla_temp_bytes', float('nan')))}) | "
      + (
        f"{mib(o['train_step_peak_bytes'])} | official/ours "
        f"{o['train_step_peak_bytes'] / r['train_step_peak_bytes']:.2f} |"
        if o
        else "| |"
      )
    )
    for key, label in (
      ("fft_forward_s", "CLS FFT deconvolution, forward (s)"),
      ("fft_grad_s", "CLS FFT deconvolution, forward + gradient (s)"),
    ):
      print(
        f"| {label} | {r[key]:.4f} | "
        + (f"{o[key]:.4f} | speed {o[key] / r[key]:.2f} |" if o else "| |")
      )
  if "pipeline" not in skip:
    print("| input pipeline (x4, 256 HR crops) | 1 thread | 2 threads |")
    print("|---|---|---|")
    for setting in (1, 2):
      rates = [bench_pipeline(setting, t, args.pipeline_batches) for t in (1, 2)]
      results[f"pipeline_setting{setting}"] = rates
      print(f"| setting {setting} | {rates[0]:.0f} samples/s | {rates[1]:.0f} samples/s |")
  if "gemm_gflops" in results:
    for r in results["models"]:
      first = args.infer_sizes.split(",")[0]
      print(
        f"{r['model']}: forward pass ({r['forward_flops'] / 1e12:.2f} TFLOP) at "
        f"{r['forward_gflops'] / results['gemm_gflops']:.0%} of the GEMM floor, inference "
        f"at {r['infer'][first]['gflops'] / results['gemm_gflops']:.0%}, train step "
        f"({r['train_flops'] / 1e12:.2f} TFLOP) at "
        f"{r['train_gflops'] / results['gemm_gflops']:.0%}"
      )
  print(f"# load average {load()} at the end")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
  try:
    main()
  except errors.Error as e:  # a bad config, checkpoint or argument: one line, not a traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
