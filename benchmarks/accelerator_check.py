"""One command that checks dan_jax on a GPU or TPU host and writes a markdown report.

  python benchmarks/accelerator_check.py --out benchmarks/accelerator_report.md   # GPU/TPU
  python benchmarks/accelerator_check.py --small --out /tmp/check.md               # CPU, CI

Sections (each with its verdict; exit status 1 when any check is outside its tolerance):
1. Parity: the official-forward fixtures (tests/fixtures/parity_*.npz, DAN and DCLS) at 'highest'
   precision (must stay < 1e-4 relative, as on the CPU), and at 'default' for information.
2. Gradients: one training step's gradient (conv_backward 'xla', the accelerator path) at
   precision highest, default and bfloat16 activations, against a float32 reference
   computed on this host's CPU in the same process (jax.devices('cpu')).
3. Loss curves: N steps (100; --small: 10) of configs/test.py in float32 (config default
   precision) and bfloat16, side by side.
4. One device vs all devices: the same training steps and the same inference on a mesh of
   one device and of every device.
5. Benchmarks in float32 and bfloat16: train step (batch 8 per device of 64x64 LR) and
   180x320 inference of DANv2 x4 (official size), with MFU against the device's peak
   dense bf16 rate (`PEAK_TFLOPS`; n/a for unknown devices and the CPU).
Sized to finish in well under 8 minutes on one accelerator host; `--small` shrinks every
shape (tiny models, 10 steps) so the CPU run in the tests takes about a minute.
`--only` runs some sections; a section that raises is reported and the rest still run.

Hosts without TensorFlow (the input pipeline's engine): write the training batches of
sections 3-4 where it is installed, `--save_data FILE --devices N` (N: the accelerator
host's device count), and pass `--data FILE` there; nothing else needs TensorFlow.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import platform
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dan_jax import runtime

runtime.setup_entry_point()  # before JAX starts: TF off the accelerators, CPU flag on CPU

import jax
import jax.numpy as jnp
import numpy as np

from dan_jax import config as config_lib
from dan_jax import convert
from dan_jax import errors
from dan_jax import models
from dan_jax import parallel
from dan_jax import precision as precision_lib
from dan_jax import predict
from dan_jax import steps
from dan_jax import train_state

import timing  # benchmarks/timing.py, beside this script

# Peak dense bfloat16 TFLOP/s of one JAX device (a TPU v2/v3 device is one core, half a
# chip; v4 and later, one chip), from the vendors' data sheets. Matched by prefix of
# `device_kind`, longest first.
PEAK_TFLOPS = {
  "TPU v2": 22.5,
  "TPU v3": 61.5,
  "TPU v4": 275.0,
  "TPU v5 lite": 197.0,
  "TPU v5e": 197.0,
  "TPU v5p": 459.0,
  "TPU v5": 459.0,
  "TPU v6 lite": 918.0,
  "TPU v6e": 918.0,
  "TPU7x": 2307.0,
  "NVIDIA H200": 989.0,
  "NVIDIA H100": 989.0,
  "NVIDIA GH200": 989.0,
  "NVIDIA B200": 2250.0,
  "NVIDIA A100": 312.0,
  "NVIDIA A10G": 125.0,
  "NVIDIA L4": 121.0,
  "NVIDIA L40S": 362.0,
  "Tesla V100": 125.0,
  "Tesla T4": 65.0,
}
# Relative L2 gradient error allowed against the CPU float32 reference.
# highest: of the whole gradient; float32 rounding (GPU/TPU convolutions sum in another
#   order: ~1e-6 per op, amplified by depth).
# default, bfloat16: of the convolution weights' gradient. One bf16 pass (TPU: 2^-9
#   relative rounding of each product) or TF32 (GPU: 2^-11), summed in float32; bfloat16
#   activations: 2^-9 at every layer. Biases are left out of the verdict: the L1 loss
#   makes a bias gradient a sum of sign(sr - hr) over all pixels, which cancels to a small
#   number whose relative error is large whenever rounding flips a few signs (measured on
#   the CPU in bfloat16: 0.6 for the output bias, < 5e-2 for every weight). These bounds
#   came from the rounding units; the first device run (H200, 2026-12-04, official DANv2
#   x4, batch 2 of 48x48) measured 2.2e-5 (highest), 1.8e-3 (default) and 7.2e-2
#   (bfloat16: 4 iterations of ~60 layers, each rounding activations to 8 bits), so the
#   bfloat16 bound is 0.1.
GRAD_TOL = {"highest": 1e-4, "default": 3e-2, "bfloat16": 0.1}
PARITY_TOL = 1e-4  # the CPU tests' bound (tests/test_models.py)
FIXTURES = ROOT / "tests" / "fixtures"
SECTIONS = "parity, gradients, loss curves, devices, benchmarks"
OFFICIAL_V2_X4 = dict(version="DANv2", scale=4, nf=64, nb=10, ng=5, loops=4)


def peak_tflops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
    if kind.startswith(name):
      return PEAK_TFLOPS[name]
  return None


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _verdict(ok: bool) -> str:
  return "PASS" if ok else "**FAIL**"


class Report:
  """Markdown lines plus the failures seen."""

  def __init__(self):
    self.lines: list[str] = []
    self.failures: list[str] = []

  def add(self, *lines: str) -> None:
    self.lines.extend(lines)
    print("\n".join(lines), flush=True)

  def check(self, ok: bool, what: str) -> str:
    if not ok:
      self.failures.append(what)
    return _verdict(ok)


# ---------------------------------------------------------------------------------------
# 1. Parity with the official forward pass
# ---------------------------------------------------------------------------------------


def _parity_errors(name: str, data, precision: str) -> tuple[float, float]:
  """Max relative errors (SR, code or kernel) of one fixture's outputs at `precision`."""
  if name.startswith("dcls_"):  # NHWC fixtures with the kernel estimate (tests/test_dcls.py)
    state_dict = {k[2:]: data[k].astype(np.float32) for k in data.files if k.startswith("w/")}
    config = convert.model_config_from_state_dict(state_dict)
    variables = convert.params_from_torch(state_dict, config)
    with precision_lib.precision_scope(precision):
      out = jax.jit(models.create_model(config).apply)(variables, jnp.asarray(data["lr"]))
    return _rel(out.sr[0], data["sr"]), _rel(out.kernel[0], data["kernel"])
  meta = ast.literal_eval(str(data["meta"]))
  version = meta.pop("version")
  config = convert.model_config_from_official(version, **meta)
  state_dict = {k[3:]: data[k] for k in data.files if k.startswith("sd/")}
  variables = convert.params_from_torch(state_dict, config)
  model = models.create_model(config)
  lr = jnp.asarray(data["lr"].transpose(0, 2, 3, 1))
  with precision_lib.precision_scope(precision):
    out = jax.jit(model.apply)(variables, lr)
  sr = np.asarray(out.sr).transpose(0, 1, 4, 2, 3)
  return (
    max(_rel(sr[i], data["sr"][i]) for i in range(sr.shape[0])),
    max(_rel(out.code[i], data["code"][i]) for i in range(sr.shape[0])),
  )


def check_parity(report: Report, names: list[str], precisions: list[str]) -> None:
  report.add(
    "## 1. Parity with the official PyTorch forward pass",
    "",
    f"Max relative error of every iteration's SR image and code (DCLS: the kernel "
    f"estimate; its Fourier deconvolution is DFT products at 'highest' whatever "
    f"the precision) against the official outputs (tests/fixtures); bound "
    f"{PARITY_TOL:g} at 'highest'.",
    "",
    "| fixture | precision | SR rel. err | code/kernel rel. err | verdict |",
    "|---|---|---|---|---|",
  )
  for name in names:
    data = np.load(FIXTURES / f"parity_{name}.npz")
    for precision in precisions:
      e_sr, e_code = _parity_errors(name, data, precision)
      verdict = (
        report.check(max(e_sr, e_code) < PARITY_TOL, f"parity {name}")
        if precision == "highest"
        else "(information)"
      )
      report.add(f"| {name} | {precision} | {e_sr:.2e} | {e_code:.2e} | {verdict} |")
  report.add("")


# ---------------------------------------------------------------------------------------
# 2. One train step's gradients against the CPU
# ---------------------------------------------------------------------------------------


def _batch(rng, b: int, size: int, scale: int, k: int, code_len: int) -> dict:
  return {
    "lr": rng.uniform(size=(b, size, size, 3)).astype(np.float32),
    "hr": rng.uniform(size=(b, size * scale, size * scale, 3)).astype(np.float32),
    "kernel": rng.dirichlet(np.ones(k * k), b).reshape(b, k, k).astype(np.float32),
    "code": rng.normal(size=(b, code_len)).astype(np.float32),
  }


def _grads(model_config: dict, variables: dict, batch: dict, device, precision: str):
  spec = models.spec_from_config(
    dict(model_config, conv_backward="xla", dtype=precision_lib.compute_dtype(precision))
  )
  model = models.create_model(spec)
  put = lambda t: jax.device_put(t, device)
  fn = jax.jit(
    lambda p, pca, bt: jax.value_and_grad(lambda q: steps.compute_losses(model, q, pca, bt)[0])(p)
  )
  with precision_lib.precision_scope(precision):
    loss, grads = fn(put(variables["params"]), put(variables["pca"]), put(batch))
  return float(loss), jax.tree_util.tree_map(lambda g: np.asarray(g, np.float64), grads)


def check_gradients(report: Report, model_config: dict, b: int, size: int) -> None:
  spec = models.spec_from_config(model_config)
  model = models.create_model(spec)
  rng = np.random.default_rng(0)
  k = spec.kernel_size
  pca = np.linalg.qr(rng.normal(size=(k * k, spec.code_len)))[0].astype(np.float32)
  variables = models.init_variables(model, 0, pca)
  batch = _batch(rng, b, size, spec.scale, k, spec.code_len)
  cpu, dev = jax.devices("cpu")[0], jax.devices()[0]
  t = time.perf_counter()
  ref_loss, ref = _grads(model_config, variables, batch, cpu, "highest")
  ref_s = time.perf_counter() - t
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(ref)]
  ref_leaves = jax.tree_util.tree_leaves(ref)
  weights = [i for i, p in enumerate(paths) if p.endswith("['kernel']") and np.any(ref_leaves[i])]

  def rel_l2(leaves, which):
    which = [i for i in which if np.any(ref_leaves[i])]  # a zero reference has no scale
    num = sum(np.sum((leaves[i] - ref_leaves[i]) ** 2) for i in which)
    return float(np.sqrt(num / sum(np.sum(ref_leaves[i] ** 2) for i in which)))

  report.add(
    "## 2. One training step's gradient against the CPU float32 reference",
    "",
    f"{spec.version} x{spec.scale} (nf {spec.nf}, {spec.loops} iterations), "
    f"batch {b} of {size}x{size} LR, conv_backward 'xla', on {dev.device_kind}; "
    f"reference: the same step on the host CPU at float32 ({ref_s:.0f} s). "
    "Relative L2 error of the whole gradient, of the convolution weights' part and "
    "of the worst weight; the verdict is on the whole gradient at 'highest' and on "
    "the weights otherwise (biases: see GRAD_TOL in the script).",
    "",
    "| precision | loss | rel. L2 (all) | rel. L2 (weights) | worst weight | tolerance | verdict |",
    "|---|---|---|---|---|---|---|",
    f"| CPU float32 (reference) | {ref_loss:.6f} | 0 | 0 | 0 | | |",
  )
  for precision in ("highest", "default", "bfloat16"):
    loss, grads = _grads(model_config, variables, batch, dev, precision)
    leaves = jax.tree_util.tree_leaves(grads)
    err_all = rel_l2(leaves, range(len(leaves)))
    err_w = rel_l2(leaves, weights)
    worst = max(rel_l2(leaves, [i]) for i in weights)
    tol = GRAD_TOL[precision]
    err = err_all if precision == "highest" else err_w
    report.add(
      f"| {precision} | {loss:.6f} | {err_all:.2e} | {err_w:.2e} | {worst:.2e} | "
      f"{tol:g} | {report.check(err < tol, f'gradient {precision}')} |"
    )
  report.add("")


# ---------------------------------------------------------------------------------------
# 3 + 4. Training loops: loss curves, one device vs all devices
# ---------------------------------------------------------------------------------------


# Training batches read from --data (hosts without TensorFlow): {"b8/pca": ..., "b8/lr": ...}.
SAVED_BATCHES: dict = {}


def _pipeline_data(config, num_steps: int) -> tuple[np.ndarray, list[dict]]:
  """The PCA matrix and the first `num_steps` batches of `config`'s input pipeline (from
  --data when given: they depend on the batch size only, for the configs used here)."""
  key = f"b{int(config.batch_size)}"
  if SAVED_BATCHES:
    if f"{key}/pca" not in SAVED_BATCHES:
      raise errors.UsageError(
        f"--data has no batches of {int(config.batch_size)}: write it with --save_data "
        "--devices N for this host's device count"
      )
    steps_saved = SAVED_BATCHES[f"{key}/lr"].shape[0]
    if steps_saved < num_steps:
      raise errors.UsageError(f"--data holds {steps_saved} steps, {num_steps} needed")
    names = sorted({k.split("/")[1] for k in SAVED_BATCHES if k.startswith(key + "/")} - {"pca"})
    batches = [{n: SAVED_BATCHES[f"{key}/{n}"][i] for n in names} for i in range(num_steps)]
    return SAVED_BATCHES[f"{key}/pca"], batches
  from dan_jax import degradation  # TensorFlow
  from dan_jax import input_pipeline

  spec = models.spec_from_config(config.model)
  pca = degradation.build_pca(
    degradation.make_kernel_sampler(input_pipeline.kernel_spec(config)),
    n=int(config.degradation.pca_samples),
    code_len=spec.code_len,
    seed=int(config.seed),
  )
  it = input_pipeline.create_train_iterator(config, pca, start_step=0)
  return np.asarray(pca), [dict(next(it)) for _ in range(num_steps)]


def save_data(path: str, devices: int, num_steps: int) -> None:
  """Writes the batches sections 3-4 use on a host of `devices` devices to `path`."""
  config = _tiny_config(parallel.round_up(8, devices))
  pca, batches = _pipeline_data(config, num_steps)
  key = f"b{int(config.batch_size)}"
  arrays = {f"{key}/pca": pca}
  for name in batches[0]:
    arrays[f"{key}/{name}"] = np.stack([np.asarray(b[name]) for b in batches])
  np.savez_compressed(path, **arrays)
  print(f"wrote {path}: {num_steps} batches of {config.batch_size}", file=sys.stderr)


def _train_losses(config, num_steps: int, devices: list) -> tuple[list[float], Any]:
  """Losses of `num_steps` training steps of `config` on a mesh of `devices`; the params."""
  spec = models.spec_from_config(config.model)
  model = models.create_model(spec)
  pca, batches = _pipeline_data(config, num_steps)
  variables = models.init_variables(model, int(config.seed), pca)
  tx = steps.create_optimizer(config, steps.create_learning_rate_fn(config))
  mesh = parallel.create_mesh(devices)
  step = steps.make_train_step(model, tx, mesh, precision=config.matmul_precision)
  state = parallel.to_global(
    train_state.create_train_state(variables, tx), parallel.replicated(mesh)
  )
  losses = []
  for batch in batches:
    state, m = step(state, parallel.to_global(batch, parallel.data_sharded(mesh)))
    losses.append(float(parallel.to_host(m["loss"])))
  return losses, jax.device_get(state.params)


def _tiny_config(batch_size: int):
  config = config_lib.load(str(ROOT / "configs" / "test.py"))
  config.batch_size = batch_size
  config.lr_milestones = ()
  return config


def check_loss_curves(report: Report, num_steps: int) -> None:
  n = jax.device_count()
  curves = {}
  for name, dtype in (("float32", "float32"), ("bfloat16", "bfloat16")):
    config = _tiny_config(parallel.round_up(8, n))
    config.model.dtype = dtype
    t = time.perf_counter()
    curves[name] = (_train_losses(config, num_steps, jax.devices())[0], time.perf_counter() - t)
  f32, bf16 = curves["float32"][0], curves["bfloat16"][0]
  every = max(num_steps // 10, 1)
  marks = sorted({1, *range(every, num_steps + 1, every)})
  report.add(
    "## 3. Loss curves: configs/test.py in float32 and bfloat16",
    "",
    f"{num_steps} steps, batch {parallel.round_up(8, n)} on {n} device(s), "
    f"precision 'default' (config.matmul_precision); loss at each step. Wall time "
    f"float32 {curves['float32'][1]:.1f} s, bfloat16 {curves['bfloat16'][1]:.1f} s "
    "(with compilation).",
    "",
    "| step | float32 | bfloat16 | difference |",
    "|---|---|---|---|",
  )
  for s in marks:
    report.add(f"| {s} | {f32[s - 1]:.5f} | {bf16[s - 1]:.5f} | {bf16[s - 1] - f32[s - 1]:+.5f} |")
  w = max(num_steps // 10, 1)
  mean = lambda xs: float(np.mean(xs))
  finite = all(np.isfinite(f32 + bf16))
  fell = mean(f32[-w:]) < mean(f32[:w])
  report.add(
    "",
    f"Both finite: {report.check(finite, 'loss curves finite')}; float32 "
    f"loss fell from {mean(f32[:w]):.4f} (first {w}) to {mean(f32[-w:]):.4f} "
    f"(last {w}): {report.check(fell or num_steps < 20, 'loss falls')}; bfloat16 "
    f"{mean(bf16[:w]):.4f} -> {mean(bf16[-w:]):.4f}.",
    "",
  )


def check_devices(report: Report, num_steps: int) -> None:
  devices = jax.devices()
  n = len(devices)
  config = _tiny_config(parallel.round_up(8, n))
  config.matmul_precision = "highest"
  one, p_one = _train_losses(config, num_steps, devices[:1])
  every, p_all = _train_losses(config, num_steps, devices)
  param_err = max(
    _rel(a, b) for a, b in zip(jax.tree_util.tree_leaves(p_all), jax.tree_util.tree_leaves(p_one))
  )
  loss_err = max(abs(a - b) / abs(b) for a, b in zip(every, one))
  spec = models.spec_from_config(config.model)
  pca = np.linalg.qr(np.random.default_rng(0).normal(size=(spec.kernel_size**2, spec.code_len)))[0]
  variables = models.init_variables(models.create_model(spec), 0, pca)
  images = np.random.default_rng(1).uniform(size=(3, 40, 48, 3)).astype(np.float32)
  preds = {}
  for label, devs in (("one", devices[:1]), ("all", devices)):
    predictor = predict.Predictor(config.model, variables, devices=devs)
    preds[label] = predictor.predict_batch(images)
  sr_err = max(float(np.abs(a.sr - b.sr).max()) for a, b in zip(preds["one"], preds["all"]))
  report.add(
    "## 4. One device vs all devices",
    "",
    f"configs/test.py, {num_steps} steps at precision 'highest', batch "
    f"{config.batch_size}: mesh of 1 device vs all {n}; inference of 3 images "
    "(predict.Predictor, whole images) on 1 vs all devices.",
    "",
    "| quantity | max relative difference | bound | verdict |",
    "|---|---|---|---|",
    f"| training loss, every step | {loss_err:.2e} | 1e-4 | "
    f"{report.check(loss_err < 1e-4, 'devices: loss')} |",
    f"| parameters after {num_steps} steps | {param_err:.2e} | 1e-3 | "
    f"{report.check(param_err < 1e-3, 'devices: params')} |",
    f"| inference SR (absolute, [0,1] range) | {sr_err:.2e} | 1e-5 | "
    f"{report.check(sr_err < 1e-5, 'devices: inference')} |",
    "",
  )


# ---------------------------------------------------------------------------------------
# 5. Benchmarks
# ---------------------------------------------------------------------------------------


def bench(
  report: Report,
  model_config: dict,
  per_device: int,
  lr_size: int,
  infer_size: tuple[int, int],
  repeats: int,
  precisions: tuple[str, ...] = ("default", "highest", "bfloat16"),
) -> None:
  devices = jax.devices()
  n = len(devices)
  peak = peak_tflops(devices[0])
  report.add(
    "## 5. Benchmarks",
    "",
    f"{model_config['version']} x{model_config['scale']} "
    f"(nf {model_config.get('nf', 64)}), train step: batch {per_device} per device "
    f"x {n} device(s) of {lr_size}x{lr_size} LR (the cheap final-iteration "
    f"gradient); inference: one {infer_size[0]}x{infer_size[1]} LR image on one "
    f"device. Median of {repeats}. MFU: model FLOPs (XLA:CPU's cost analysis of one "
    "iteration x (loops + 2) for a step, x loops for inference; XLA:GPU's leaves out "
    "the library convolutions) / time / peak "
    f"dense bf16 of the devices used ({devices[0].device_kind}: "
    f"{'%g TFLOP/s' % peak if peak else 'unknown peak'}).",
    "",
    "| precision | train step (s) | samples/s | train TFLOP/s | train MFU | "
    "infer (s) | infer TFLOP/s | infer MFU |",
    "|---|---|---|---|---|---|---|---|",
  )
  rng = np.random.default_rng(0)
  for precision in precisions:
    spec = models.spec_from_config(dict(model_config, dtype=precision_lib.compute_dtype(precision)))
    model = models.create_model(spec)
    pca = rng.normal(size=(spec.kernel_size**2, spec.code_len)).astype(np.float32) * 0.05
    variables = models.init_variables(model, 0, pca)
    b = per_device * n
    batch = _batch(rng, b, lr_size, spec.scale, spec.kernel_size, spec.code_len)
    cpu = jax.devices("cpu")[0]
    with precision_lib.precision_scope(precision):
      one = (
        jax.jit(lambda v, x: model.apply(v, x, iterations=1))
        .lower(jax.device_put(variables, cpu), jax.device_put(batch["lr"][:per_device], cpu))
        .compile()
      )
    iter_flops = _flops(one)  # per device batch
    step, state, dev_batch = steps.benchmark_step(
      model, variables, batch, precision="highest" if precision == "highest" else "default"
    )
    compiled = step.lower(state, dev_batch).compile()
    holder = [compiled(state, dev_batch)[0]]

    def one_step():
      holder[0], m = compiled(holder[0], dev_batch)
      return m

    step_s = timing.median_seconds(one_step, repeats)
    train_tf = n * (spec.loops + 2) * iter_flops / step_s / 1e12
    predictor = jax.jit(model.apply)
    lr = jnp.asarray(rng.uniform(size=(1, *infer_size, 3)), jnp.float32)
    with precision_lib.precision_scope(precision):
      c = predictor.lower(variables, lr).compile()
    jax.block_until_ready(c(variables, lr))
    infer_s = timing.median_seconds(lambda: c(variables, lr), repeats)
    infer_flops = (
      spec.loops * iter_flops * (infer_size[0] * infer_size[1]) / (per_device * lr_size * lr_size)
    )
    infer_tf = infer_flops / infer_s / 1e12
    mfu = lambda tf, devs: f"{tf / (peak * devs):.1%}" if peak else "n/a"
    label = {
      "default": "float32 (default)",
      "highest": "float32 (highest)",
      "bfloat16": "bfloat16",
    }[precision]
    report.add(
      f"| {label} | {step_s:.4f} | {b / step_s:.1f} | {train_tf:.2f} | "
      f"{mfu(train_tf, n)} | {infer_s:.4f} | {infer_tf:.2f} | {mfu(infer_tf, 1)} |"
    )
  report.add("")


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="accelerator_report.md", help="markdown report path")
  ap.add_argument(
    "--small", action="store_true", help="small shapes and few steps (the CPU run in the tests)"
  )
  ap.add_argument(
    "--only", default="", help="comma-separated sections to run (default: all): " + SECTIONS
  )
  ap.add_argument(
    "--fixtures", default="", help="parity fixtures to check (default: all; e.g. danv2_x4)"
  )
  ap.add_argument("--data", default="", help="training batches written by --save_data")
  ap.add_argument(
    "--save_data", default="", help="write the training batches for --devices devices; exit"
  )
  ap.add_argument("--devices", type=int, default=1, help="with --save_data: the host's devices")
  args = ap.parse_args(argv)
  steps_of_curves = 10 if args.small else 100
  if args.save_data:
    save_data(args.save_data, args.devices, steps_of_curves)
    return 0
  if args.data:
    with np.load(args.data) as f:
      SAVED_BATCHES.update({k: f[k] for k in f.files})
  start = time.perf_counter()
  report = Report()
  devices = jax.devices()
  report.add(
    f"# dan_jax accelerator check{' (--small)' if args.small else ''}",
    "",
    f"{time.strftime('%Y-%m-%d %H:%M')}, jax {jax.__version__}, backend "
    f"{jax.default_backend()}: {len(devices)} x {devices[0].device_kind}; host "
    f"{platform.machine()}; command `python benchmarks/accelerator_check.py"
    f"{' --small' if args.small else ''}`.",
    "",
  )
  small_model = dict(
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
  sections = [
    (
      "parity",
      lambda: check_parity(
        report,
        [f.strip() for f in args.fixtures.split(",") if f.strip()]
        if args.fixtures
        else ["danv2_x2", "dcls_x2_setting1"]
        if args.small
        else [
          "danv1_x2",
          "danv1_x3",
          "danv1_x4",
          "danv2_x2",
          "danv2_x4",
          "dcls_x2_setting1",
          "dcls_x4_setting1",
          "dcls_x4_setting2",
        ],
        ["highest"] if args.small else ["highest", "default"],
      ),
    ),
    (
      "gradients",
      lambda: check_gradients(
        report, small_model if args.small else OFFICIAL_V2_X4, 2, 12 if args.small else 48
      ),
    ),
    ("loss curves", lambda: check_loss_curves(report, steps_of_curves)),
    ("devices", lambda: check_devices(report, 3 if args.small else 10)),
    (
      "benchmarks",
      lambda: bench(
        report,
        small_model if args.small else OFFICIAL_V2_X4,
        2 if args.small else 8,
        16 if args.small else 64,
        (24, 32) if args.small else (180, 320),
        1 if args.small else 5,
        ("default", "bfloat16") if args.small else ("default", "highest", "bfloat16"),
      ),
    ),
  ]
  only = [s.strip() for s in args.only.split(",") if s.strip()]
  unknown = sorted(set(only) - {name for name, _ in sections})
  if unknown:
    raise errors.UsageError(f"--only: unknown section(s) {unknown}; choose from {SECTIONS}")
  for name, run in sections:
    if only and name not in only:
      continue
    t = time.perf_counter()
    try:
      run()
    except errors.UsageError:
      raise
    except Exception as e:  # one section's failure is a finding; the others still run
      first = (str(e).strip().splitlines() or [""])[0][:400]
      report.add(f"**Section {name} failed**: {type(e).__name__}: {first}", "")
      report.check(False, f"{name} raised")
    print(f"[{name}: {time.perf_counter() - t:.1f} s]", file=sys.stderr, flush=True)
  verdict = "all checks passed" if not report.failures else f"FAILED: {', '.join(report.failures)}"
  report.add(f"**{verdict}** ({time.perf_counter() - start:.0f} s in all)")
  pathlib.Path(args.out).write_text("\n".join(report.lines) + "\n")
  print(f"wrote {args.out}", file=sys.stderr)
  return 1 if report.failures else 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except errors.Error as e:  # a bad config, checkpoint or argument: one line, not a traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
