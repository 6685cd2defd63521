"""Ahead-of-time compiles for TPUs and GPUs this host does not have: memory, FLOPs, sharding.

  python -m dan_jax.aot --config=configs/x4.py:v2 --topology=v5e:2x4
  python -m dan_jax.aot --config=configs/x4.py:dcls --topology=v4:2x2x4 --what=train --max_batch

compiles the real programs (the train step `steps.make_train_step` builds, the eval step,
the predictor on a whole 180x320 LR image and its tiled path on a 2K LR image) for the
compile-only devices of a topology (`dan_jax.topology`) and prints one row per program:
per-chip memory against the chip's, FLOPs, the step time at the chip's peak bfloat16
rate, the bytes its collectives move, and whether the data-parallel sharding holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from dan_jax import config as config_lib
from dan_jax import storage
from dan_jax.errors import ConfigError
from dan_jax.errors import Error
from dan_jax.errors import UsageError

PROGRAMS = ("train", "eval", "predict")
PRECISIONS = {
  "default": "default",
  "highest": "highest",
  "bf16": "bfloat16",
  "bfloat16": "bfloat16",
}


@dataclasses.dataclass(frozen=True)
class Images:
  """The inputs of the eval and predict programs (LR pixels, height x width)."""

  whole: tuple = (180, 320)  # a whole image (720p HR at x4)
  tiled: tuple = (1080, 1920)  # the tiled path's image (2K)
  tile: int = 256  # its LR tiles (README "Inference")
  batch: int = 8  # images or tiles a call: `infer --batch_size` default


# Non-all-reduce collectives up to this size are bookkeeping (scalars), not activations.
SMALL_COLLECTIVE = 4096
_COLLECTIVE_RE = re.compile(
  r"=\s*(?P<shape>.*?)\s(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|"
  r"collective-permute|collective-broadcast|ragged-all-to-all)(?P<start>-start)?\("
)
_ARRAY_RE = re.compile(r"\b(pred|[sufc]\d+|bf16|f8\w*)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2}
# Custom calls only XLA:CPU runs (LAPACK, DUCC FFT, the CPU callbacks).
_CPU_CUSTOM_CALLS = re.compile(
  r'custom_call_target="(lapack_\w+|ducc_\w+|xla_python_cpu_\w+|__cpu\w*)"'
)


@dataclasses.dataclass
class Row:
  """One compiled program: what the table and --json show."""

  program: str
  config: str
  topology: str
  chip: str
  chips: int
  hosts: int
  precision: str
  global_batch: int
  per_chip_batch: float
  shape: str  # the input the program was compiled for
  hbm_chip: int
  hbm_args: Optional[int] = None
  hbm_temps: Optional[int] = None
  hbm_outputs: Optional[int] = None
  hbm_alias: Optional[int] = None
  hbm_total: Optional[int] = None
  fits: Optional[bool] = None
  max_global_batch: Optional[int] = None  # --max_batch: the largest batch found to fit
  max_batch_compiles: Optional[int] = None
  flops_per_chip: Optional[float] = None
  ideal_step_s: Optional[float] = None  # flops / the chip's peak bf16 rate
  collective_bytes_per_chip: Optional[int] = None
  collectives: dict = dataclasses.field(default_factory=dict)  # kind -> count
  violations: list = dataclasses.field(default_factory=list)  # sharding / CPU-path problems
  compile_s: Optional[float] = None
  measured_step_s: Optional[float] = None  # --run_steps (local devices): median seconds a call
  measured_peak_bytes: Optional[int] = None  # the device's peak memory in use after the runs
  error: str = ""  # the compiler failed (not for lack of memory)
  note: str = ""


# ---------------------------------------------------------------------------------------
# What the compiled programs say
# ---------------------------------------------------------------------------------------


def _array_bytes(dtype: str, dims: str) -> tuple[int, tuple[int, ...]]:
  shape = tuple(int(d) for d in dims.split(",") if d)
  size = _BYTES.get(dtype) or max(int(re.sub(r"\D", "", dtype) or 8) // 8, 1)
  return size * int(np.prod(shape, dtype=np.int64)), shape


def collectives(hlo: str) -> list[dict]:
  """The collectives of an optimized HLO module: kind, bytes of its result, shapes.

  Async pairs count once (the `-start`); an all-gather's or collective-permute's start
  holds (operand, result): the result counts.
  """
  out = []
  for line in hlo.splitlines():
    m = _COLLECTIVE_RE.search(line)
    if not m:
      continue
    arrays = [_array_bytes(d, s) for d, s in _ARRAY_RE.findall(m.group("shape"))]
    if m.group("start") and m.group("op") in ("all-gather", "collective-permute") and arrays:
      arrays = arrays[len(arrays) // 2 : len(arrays) // 2 + 1] if len(arrays) > 1 else arrays
    out.append(
      dict(kind=m.group("op"), bytes=sum(b for b, _ in arrays), shapes=[s for _, s in arrays])
    )
  return out


def sharding_violations(
  found: list[dict], global_batch: int, param_sizes: frozenset = frozenset()
) -> list[str]:
  """What in a data-parallel program's collectives is more than data parallelism needs.

  Data parallelism needs the gradient all-reduce and scalar metrics. A collective with an
  array whose leading axis is the global batch (an all-gather of activations, a global
  FFT) and that is not gradient-shaped (its size that of no parameter, `param_sizes`),
  or a non-all-reduce collective moving more than SMALL_COLLECTIVE bytes, is not.
  """
  bad = []
  for c in found:
    batch_sized = [
      s
      for s in c["shapes"]
      if len(s) >= 2 and s[0] == global_batch > 1 and int(np.prod(s)) not in param_sizes
    ]
    if batch_sized:
      bad.append(f"batch-sized {c['kind']} of {batch_sized[0]}")
    elif c["kind"] != "all-reduce" and c["bytes"] > SMALL_COLLECTIVE:
      bad.append(f"{c['kind']} of {c['bytes']} bytes {c['shapes'][:2]}")
  return bad


# The CPU-only GEMM kernel gradient (models.layers.conv_gemm_grad, a custom_vjp) as the
# compiled program names it: in its stack-frame function table or an op's name.
_GEMM_RE = re.compile(r'["/](?:[\w.]*\.)?_?conv_gemm_grad(?:_fwd|_bwd)?["/]')


def cpu_path_violations(hlo: str, xla_flags: Optional[str] = None) -> list[str]:
  """CPU-only code in an accelerator program: the GEMM kernel gradient, CPU custom calls,
  XLA:CPU flags in `xla_flags` (default: XLA_FLAGS)."""
  bad = []
  if _GEMM_RE.search(hlo):
    bad.append("the CPU-only GEMM convolution gradient (model.conv_backward='gemm')")
  for m in sorted(set(_CPU_CUSTOM_CALLS.findall(hlo))):
    bad.append(f"the CPU-only custom call {m}")
  xla_flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  flags = [f for f in xla_flags.split() if f.startswith("--xla_cpu")]
  if flags:
    bad.append(f"XLA:CPU flags in XLA_FLAGS: {' '.join(flags)}")
  return bad


def _memory(compiled: Any) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  args, temps = int(m.argument_size_in_bytes), int(m.temp_size_in_bytes)
  outs, alias = int(m.output_size_in_bytes), int(m.alias_size_in_bytes)
  return dict(
    hbm_args=args,
    hbm_temps=temps,
    hbm_outputs=outs,
    hbm_alias=alias,
    hbm_total=args + temps + outs - alias,
  )


def _flops(compiled: Any) -> Optional[float]:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # GPU targets: no cost model without a device
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


_OOM = re.compile(r"RESOURCE_EXHAUSTED|[Rr]an out of memory|exceeds? the (?:available )?memory")


# ---------------------------------------------------------------------------------------
# The programs, built as train_and_evaluate and infer build them
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Program:
  """A jitted function and the abstract arguments to lower it with."""

  name: str
  batch: int
  shape: str
  lower: Callable[[int], Any]  # global batch -> jax.stages.Lowered
  batch_step: int  # batches it can be compiled for are multiples of this
  data_parallel: bool = False  # check the data-parallel sharding rule
  param_sizes: frozenset = frozenset()  # element counts of the parameters (gradients)
  note: str = ""


def _target_spec(config: Any, platform: str) -> Any:
  """The model spec as the target platform resolves it ('auto' convolutions: XLA's; DCLS's
  'auto' remat: none off the CPU)."""
  from dan_jax import models
  from dan_jax.models import spec as spec_lib

  spec = models.spec_from_config(config.model)
  if platform != "cpu":
    if spec.conv_backward == "gemm":
      raise ConfigError(
        "config.model.conv_backward = 'gemm' is for the CPU only: use 'auto' or 'xla' for "
        f"a {platform.upper()} target"
      )
    spec = dataclasses.replace(spec, conv_backward="xla", remat=spec_lib.remat_mode(spec, platform))
  return spec


def load_config(spec: str, precision: str, overrides: Sequence[str] = ()) -> Any:
  """The training config `spec` with `--precision` applied (bf16: model.dtype)."""
  config = config_lib.load_with_overrides(spec, list(overrides))
  name = PRECISIONS[precision]
  if name == "bfloat16":
    config.model.dtype = "bfloat16"
  else:
    config.matmul_precision = name
  from dan_jax import train_config

  try:
    train_config.validate_config(config)
  except Error as e:
    raise ConfigError(f"{spec}: {e}") from e
  return config


def programs(
  config: Any,
  mesh: Any,
  platform: str,
  what: Sequence[str],
  precision: str,
  images: Images = Images(),
) -> list[Program]:
  """The programs of `what` for `config` on `mesh` (devices of `platform`)."""
  import jax

  from dan_jax import precision as precision_lib
  from dan_jax import predict
  from dan_jax import steps
  from dan_jax import tiling as tiling_lib
  from dan_jax.train_state import abstract_state

  spec = _target_spec(config, platform)
  n = int(mesh.devices.size)
  out = []
  model, _, tx, p_train_step, p_eval_step = steps.step_functions_from_config(config, spec, mesh)
  state = abstract_state(spec, model, tx, config.ema_decay > 0)
  variables = state.variables(use_ema=True)
  scale = spec.scale
  if "train" in what:
    lr = config.data.hr_crop // scale
    out.append(
      Program(
        "train",
        int(config.batch_size),
        f"{lr}x{lr} LR",
        lambda b: p_train_step.lower(state, steps.batch_shapes(config, b)),
        n,
        data_parallel=True,
        param_sizes=frozenset(
          int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params)
        ),
      )
    )
  h, w = images.whole
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)
  if "eval" in what:
    out.append(
      Program(
        "eval",
        n,
        f"{h}x{w} LR",
        lambda b: p_eval_step.lower(variables, f32(b, h, w, 3)),
        n,
        note="validation: precision highest",
      )
    )
  if "predict" in what:
    pname = PRECISIONS[precision] if precision != "default" else "highest"
    predictor = predict.Predictor(
      dict(dataclasses.asdict(spec), dtype=np.dtype(spec.dtype).name),
      variables,
      tile=images.tile if _can_tile(spec) else 0,
      batch_size=images.batch,
      precision=pname,
      devices=list(mesh.devices.flat),
    )

    def scoped(fn: Callable) -> Callable:
      def lower(b):
        with precision_lib.precision_scope(predictor.precision):
          return fn(b)

      return lower

    note = f"precision {predictor.precision}"
    out.append(
      Program(
        "predict",
        n,
        f"{h}x{w} LR",
        scoped(lambda b: predictor._whole.lower(variables, f32(b, h, w, 3))),
        n,
        note=note,
      )
    )
    if predictor.tiling is not None:  # the family's tiled path (DCLS has none)
      runner = predictor._tiled
      th, tw, boxes = tiling_lib.layout(*images.tiled, images.tile, predictor.tile_overlap)
      s, batch = scale, predictor.batch_size
      tiled = f"{images.tiled[0]}x{images.tiled[1]} LR"
      tnote = f"{note}; {len(boxes)} tiles x {runner.t.loops} iterations of {tiled}"
      out.append(
        Program(
          "predict_tile_restore",
          batch,
          f"{th}x{tw} LR tiles",
          scoped(
            lambda b: runner._restore.lower(variables, f32(b, th, tw, 3), f32(1, spec.code_len))
          ),
          n,
          note=tnote,
        )
      )
      if runner.t.features is not None:  # the Estimator's pooled features
        out.append(
          Program(
            "predict_tile_pool",
            batch,
            f"{th}x{tw} LR tiles",
            scoped(
              lambda b: runner._pool.lower(
                variables, f32(b, th * s, tw * s, 3), f32(b, th, tw, 3), f32(b, th, tw)
              )
            ),
            n,
            note=tnote,
          )
        )
  return out


def _can_tile(spec: Any) -> bool:
  """Whether the model's family has a tiled path (DCLS's deconvolution sees whole images)."""
  from dan_jax import models

  try:
    models.family(spec).tiling(spec)
  except ValueError:
    return False
  return True


# ---------------------------------------------------------------------------------------
# Compiling and reporting
# ---------------------------------------------------------------------------------------


def compile_program(
  prog: Program, batch: int, hbm: int, xla_flags: str = "", run_steps: int = 0
) -> dict:
  """Compiles `prog` at global `batch`: memory, fits, FLOPs, collectives, compile time;
  with `run_steps` (devices that run: `--topology=local`), the measured time a call.
  xla_flags None: a CPU program (no CPU-path check)."""
  t = time.perf_counter()
  try:
    compiled = prog.lower(batch).compile()
  except Exception as e:  # the compiler refusing an oversized program, or failing
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    if _OOM.search(str(e)):
      return dict(fits=False, compile_s=time.perf_counter() - t, note=first)
    return dict(compile_s=time.perf_counter() - t, error=f"{type(e).__name__}: {first}")
  seconds = time.perf_counter() - t
  out = dict(_memory(compiled), compile_s=seconds)
  out["fits"] = out["hbm_total"] <= hbm if "hbm_total" in out else None
  out["flops_per_chip"] = _flops(compiled)
  hlo = compiled.as_text() or ""
  found = collectives(hlo)
  out["collectives"] = {
    k: sum(c["kind"] == k for c in found) for k in sorted({c["kind"] for c in found})
  }
  out["collective_bytes_per_chip"] = sum(c["bytes"] for c in found)
  bad = [] if xla_flags is None else cpu_path_violations(hlo, xla_flags)
  if prog.data_parallel:
    bad += sharding_violations(found, batch, prog.param_sizes)
  out["violations"] = bad
  if run_steps > 0:
    out.update(run_compiled(compiled, run_steps, carries_state=prog.name == "train"))
  return out


def _example_inputs(compiled: Any, seed: int) -> tuple:
  """Arrays for `compiled`'s arguments, on its input shardings: floats uniform in
  [0, 0.1) (weights, images: finite losses), integers 0."""
  import jax

  rng = np.random.default_rng(seed)
  args, shardings = compiled.args_info[0], compiled.input_shardings[0]
  infos, treedef = jax.tree_util.tree_flatten(args)
  made = []
  for info, sharding in zip(infos, treedef.flatten_up_to(shardings)):
    dtype = np.dtype(info.dtype)
    if np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16":
      x = (rng.uniform(size=info.shape) * 0.1).astype(dtype)
    else:
      x = np.zeros(info.shape, dtype)
    made.append(jax.device_put(x, sharding))
  return tuple(jax.tree_util.tree_unflatten(treedef, made))


def run_compiled(compiled: Any, steps: int, carries_state: bool = False) -> dict:
  """Median seconds a call of `compiled` over `steps` calls after one warm-up (train: the
  state each call returns feeds the next), and the first device's peak memory in use."""
  import jax

  args = _example_inputs(compiled, 0)
  donated = any(a.donated for a in jax.tree_util.tree_leaves(compiled.args_info))
  times = []
  for i in range(steps + 1):
    if donated and not carries_state and i:
      args = _example_inputs(compiled, i)
    t = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
    if carries_state:
      args = (out[0],) + tuple(args[1:])
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return dict(
    measured_step_s=float(np.median(times[1:])),
    measured_peak_bytes=int(peak) if peak is not None else None,
  )


def max_batch(prog: Program, start: int, fits_at_start: Optional[bool], hbm: int, budget: int):
  """(largest global batch found to fit, compiles used, whether the next larger multiple
  was found not to fit): doubling, then bisection, over multiples of prog.batch_step, at
  most `budget` compiles."""
  step = prog.batch_step
  fits = lambda b: bool(compile_program(prog, b, hbm).get("fits"))
  used = 0
  lo, hi = (start, None) if fits_at_start else (0, start)
  while hi is None and used < budget:
    used += 1
    if fits(lo * 2):
      lo *= 2
    else:
      hi = lo * 2
  while hi is not None and hi - lo > step and used < budget:
    mid = (lo + hi) // 2 // step * step
    if mid in (lo, hi):
      break
    used += 1
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return (lo or None), used, hi is not None and hi - lo <= step


def report(
  config_spec: str,
  topology_name: str,
  *,
  batch_size: Optional[int] = None,
  precision: str = "default",
  what: Sequence[str] = PROGRAMS,
  search_max_batch: bool = False,
  max_compiles: int = 8,
  run_steps: int = 0,
  overrides: Sequence[str] = (),
  images: Images = Images(),
  log: Callable[[str], None] = lambda s: None,
) -> list[Row]:
  """Compiles the programs of `what` for `topology_name`; one Row each."""
  from dan_jax import parallel
  from dan_jax import topology as topology_lib

  if precision not in PRECISIONS:
    raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
  unknown = sorted(set(what) - set(PROGRAMS))
  if unknown or not what:
    raise UsageError(f"--what takes a list of {', '.join(PROGRAMS)}, got {','.join(what)!r}")
  if run_steps and topology_name.strip().lower() != topology_lib.LOCAL:
    raise UsageError("--run_steps runs the programs: it needs --topology=local (this host)")
  topo = topology_lib.get(topology_name)
  config = load_config(config_spec, precision, overrides)
  if batch_size is not None:
    config.batch_size = int(batch_size)
  mesh = parallel.create_mesh(topo.devices)
  if "train" in what:
    try:
      parallel.check_batch_size(int(config.batch_size), mesh)
    except Error as e:
      raise UsageError(f"--batch_size: {e}") from e
  hbm = topology_lib.hbm_bytes(topo)
  rows = []
  cpu_programs: dict = {}
  for prog in programs(config, mesh, topo.platform, what, precision, images):
    log(f"compiling {prog.name} ({prog.batch} x {prog.shape}) for {topo.describe()} ...")
    flags = None if topo.platform == "cpu" else topology_lib.compiler_flags(topo.platform)
    result = compile_program(prog, prog.batch, hbm, flags, run_steps=run_steps)
    row = Row(
      program=prog.name,
      config=config_spec,
      topology=topology_name,
      chip=topo.chip.kind,
      chips=topo.chips,
      hosts=topo.hosts,
      precision=PRECISIONS[precision],
      global_batch=prog.batch,
      per_chip_batch=prog.batch / topo.chips,
      shape=prog.shape,
      hbm_chip=hbm,
      note="; ".join(x for x in (prog.note, result.pop("note", "")) if x),
      **result,
    )
    # XLA:GPU's cost analysis is empty for compile-only targets and, on a real GPU,
    # leaves out the library (cuDNN) convolutions: 0.021 of ~9.7 TFLOP for the DANv2 x4
    # step on an H200. Count the same program with XLA:CPU.
    if topo.platform == "cuda" and row.hbm_total is not None:
      row.flops_per_chip = _cpu_flops(config, topo, what, precision, images, prog, cpu_programs)
      row.note = "; ".join(
        x for x in (row.note, "FLOPs: XLA:CPU's count of the same per-chip program") if x
      )
    if row.flops_per_chip and np.isfinite(topo.chip.peak_bf16_flops):  # CPU: no peak
      row.ideal_step_s = row.flops_per_chip / topo.chip.peak_bf16_flops
    if search_max_batch and prog.name == "train" and not row.error:
      row.max_global_batch, row.max_batch_compiles, exact = max_batch(
        prog, prog.batch, row.fits, hbm, max_compiles
      )
      if not exact and row.max_global_batch:
        row.note = "; ".join(
          x
          for x in (row.note, f"max batch: at least {row.max_global_batch} (raise --max_compiles)")
          if x
        )
    rows.append(row)
  return rows


def _cpu_flops(
  config: Any,
  topo: Any,
  what: Sequence[str],
  precision: str,
  images: Images,
  prog: Program,
  cache: dict,
) -> Optional[float]:
  """FLOPs per chip of `prog` from XLA:CPU's cost analysis of the one-chip program (the
  target's convolution path, its per-chip batch): what GPU compiles do not report."""
  import jax

  from dan_jax import parallel

  if not cache:
    mesh = parallel.create_mesh(jax.local_devices(backend="cpu")[:1])
    cache.update(
      {p.name: p for p in programs(config, mesh, topo.platform, what, precision, images)}
    )
  batch = max(prog.batch // topo.chips, 1)
  return _flops(cache[prog.name].lower(batch).compile())


def _measured(r: Row) -> str:
  """'measured 12.3 ms a call (ideal 4.5 ms: 37%), peak 3.2 GiB in use'."""
  text = f"measured {r.measured_step_s * 1e3:.2f} ms a call"
  if r.ideal_step_s:
    text += f" (ideal {r.ideal_step_s * 1e3:.2f} ms: {r.ideal_step_s / r.measured_step_s:.0%})"
  if r.measured_peak_bytes is not None:
    text += f", peak {_gib(r.measured_peak_bytes)} GiB in use"
  return text


def _gib(x: Optional[int]) -> str:
  return "-" if x is None else f"{x / (1 << 30):.2f}"


def format_table(rows: Sequence[Row]) -> str:
  """The rows as an aligned text table (memory in GiB per chip)."""
  head = (
    "program",
    "topology",
    "chips/hosts",
    "batch(/chip)",
    "args",
    "temps",
    "outs",
    "total/HBM GiB",
    "fits",
    "max batch",
    "TFLOP/chip",
    "ideal ms",
    "coll MiB",
    "compile s",
  )
  lines = [head]
  for r in rows:
    lines.append(
      (
        r.program,
        f"{r.topology} {r.chip}",
        f"{r.chips}/{r.hosts}",
        f"{r.global_batch}({r.per_chip_batch:g})",
        _gib(r.hbm_args),
        _gib(r.hbm_temps),
        _gib(r.hbm_outputs),
        f"{_gib(r.hbm_total)}/{_gib(r.hbm_chip)}",
        {True: "yes", False: "NO", None: "?"}[r.fits],
        "-" if r.max_global_batch is None else str(r.max_global_batch),
        "-" if r.flops_per_chip is None else f"{r.flops_per_chip / 1e12:.3f}",
        "-" if r.ideal_step_s is None else f"{r.ideal_step_s * 1e3:.2f}",
        "-"
        if r.collective_bytes_per_chip is None
        else f"{r.collective_bytes_per_chip / (1 << 20):.2f}",
        "-" if r.compile_s is None else f"{r.compile_s:.1f}",
      )
    )
  widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
  text = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines)
  notes = [f"{r.program}: {r.note}" for r in rows if r.note]
  notes += [f"{r.program}: SHARDING/CPU-PATH PROBLEM: {v}" for r in rows for v in r.violations]
  notes += [f"{r.program}: COMPILE FAILED: {r.error}" for r in rows if r.error]
  notes += [f"{r.program}: {_measured(r)}" for r in rows if r.measured_step_s is not None]
  return text + ("\n" + "\n".join(notes) if notes else "")


def _build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m dan_jax.aot",
    description="Compile dan_jax's train, eval and predict programs for a TPU slice or GPU "
    "host this machine does not have (or for this host's own devices: --topology=local), "
    "and report per-chip memory, FLOPs, the ideal step time and the collectives. TPU: pip "
    "install 'dan_jax[aot]'; GPU: jax[cuda12] or jax[cuda13]. Exit status 1 when a compile "
    "or a sharding or CPU-path check fails, 2 on bad input.",
  )
  p.add_argument("--config", default=config_lib.default_spec(), help="FILE[:ARG] training config")
  p.add_argument(
    "--topology",
    required=True,
    help="v4:2x2x1 (v4-8), v4:2x2x4 (v4-32, 4 hosts), v5e:2x4 (v5e-8), v5e:16x16, "
    "v5p:2x2x1, v6e:2x4, h100:8, h100:2x8 (2 hosts), a100_40gb:8, a100_80gb:8, h200:8; "
    "local: this host's own devices (compiled by its runtime; see --run_steps)",
  )
  p.add_argument(
    "--batch_size", type=int, default=None, help="global train batch (default: the config's)"
  )
  p.add_argument("--precision", default="default", choices=("default", "highest", "bf16"))
  p.add_argument("--what", default=",".join(PROGRAMS), help="comma-separated: train,eval,predict")
  p.add_argument(
    "--max_batch",
    action="store_true",
    help="also find the largest train batch that fits, by compiling (doubling, then bisection)",
  )
  p.add_argument("--max_compiles", type=int, default=6, help="compiles --max_batch may use")
  p.add_argument(
    "--run_steps",
    type=int,
    default=0,
    help="with --topology=local: also run each program this many times on random inputs "
    "and report the median time a call and the device's peak memory",
  )
  p.add_argument("--json", default="", help="also write the rows to this JSON file ('-': stdout)")
  return p


def main(argv: Optional[list[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  flags, overrides = config_lib.split_override_args(argv)
  args = _build_parser().parse_args(flags)
  if args.topology.strip().lower() == "local":  # this host's devices, as training uses them
    from dan_jax import runtime

    runtime.setup_entry_point(tensorflow=False)
  else:
    # Compile-only devices need no backend but the CPU's; a host's accelerator stays idle.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # XLA:CPU settings are not for the accelerator compiler, which reads XLA_FLAGS too.
    flags = os.environ.get("XLA_FLAGS", "").split()
    if any(f.startswith("--xla_cpu") for f in flags):
      os.environ["XLA_FLAGS"] = " ".join(f for f in flags if not f.startswith("--xla_cpu"))
  try:
    rows = report(
      args.config,
      args.topology,
      batch_size=args.batch_size,
      precision=args.precision,
      what=[w.strip() for w in args.what.split(",") if w.strip()],
      search_max_batch=args.max_batch,
      max_compiles=args.max_compiles,
      run_steps=args.run_steps,
      overrides=overrides,
      log=lambda s: print(s, file=sys.stderr, flush=True),
    )
  except Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_table(rows))
  if args.json:
    text = json.dumps([dataclasses.asdict(r) for r in rows], indent=1)
    if args.json == "-":
      print(text)
    else:
      storage.write_bytes(args.json, (text + "\n").encode(), overwrite=True)
  return 1 if any(r.violations or r.error for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
