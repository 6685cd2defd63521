"""The recipe table of benchmarks/RESULTS.md ("Accelerators, compiled ahead of time").

  nice -n 10 python benchmarks/aot_recipes.py [--out benchmarks/aot_recipes.jsonl] [--only N]
      [--select SUBSTRING]
  python benchmarks/aot_recipes.py --table=results   # (or readme) the rows so far, as markdown

Compiles each official recipe's train step for each target with `dan_jax.aot`, one at a
time (a full-size TPU compile takes 4-10 minutes on a 2-core CPU), and appends one JSON
row per compile to --out; rows already there (read before each compile) are skipped, so an
interrupted run resumes and workers on different cores (--select) do not repeat each other.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from dan_jax import aot  # noqa: E402

# (config, topology, precision[, config overrides]): the order, most wanted first.
RECIPES = [
  ("configs/x4.py:v2", "v5e:2x4", "default"),
  # DCLS rows name their remat: the default "auto" is "none" on accelerators.
  ("configs/x4.py:dcls", "v5e:2x4", "default", ("--config.model.remat=groups",)),
  ("configs/x4.py:v1", "v5e:2x4", "default"),
  ("configs/x4.py:v2", "v4:2x2x1", "default"),
  ("configs/x4.py:v2", "v5p:2x2x1", "default"),
  ("configs/x4.py:v2", "v6e:2x4", "default"),
  ("configs/x4.py:v2", "v4:2x2x4", "default"),
  ("configs/x4.py:v2", "v5e:2x4", "bf16"),
  ("configs/x4.py:dcls", "v5e:2x4", "bf16", ("--config.model.remat=groups",)),
  # Does DCLS need its CPU remat="groups" on a TPU? No: made "auto" ("none" there) after it.
  ("configs/x4.py:dcls", "v5e:2x4", "default", ("--config.model.remat=none",)),
  # DAN compiles take minutes, DCLS's 20-30 here: the DAN rows first.
  ("configs/x4.py:v1", "v4:2x2x1", "default"),
  ("configs/x4.py:v1", "v5p:2x2x1", "default"),
  ("configs/x4.py:v1", "v6e:2x4", "default"),
  ("configs/x4.py:v1", "v4:2x2x4", "default"),
  ("configs/x2.py:v2", "v5e:2x4", "default"),
  ("configs/x3.py:v2", "v5e:2x4", "default"),
  ("configs/x4_setting2.py:v2", "v5e:2x4", "default"),
  ("configs/x2_setting2.py:v2", "v5e:2x4", "default"),
  ("configs/x4.py:dcls", "v4:2x2x1", "default"),
  ("configs/x4.py:dcls", "v5p:2x2x1", "default"),
  ("configs/x4.py:dcls", "v6e:2x4", "default"),
  ("configs/x4.py:dcls", "v4:2x2x4", "default"),
  # GPU targets: need jax[cuda12] (own environment; a row without it fails and is skipped).
  ("configs/x4.py:v2", "h100:8", "default"),
  ("configs/x4.py:v1", "h100:8", "default"),
  ("configs/x4.py:dcls", "h100:8", "default"),
  ("configs/x4.py:v2", "h100:8", "bf16"),
  ("configs/x4.py:v2", "h200:8", "default"),
  ("configs/x4.py:v1", "h200:8", "default"),
  ("configs/x4.py:v2", "a100_80gb:8", "default"),
  ("configs/x4.py:v1", "a100_80gb:8", "default"),
  ("configs/x4.py:v2", "a100_40gb:8", "default"),
  ("configs/x4.py:v1", "a100_40gb:8", "default"),
]

# configs/<file>.py:<arg> -> the recipe's name in the table.
_SCALES = {
  "x2": "x2",
  "x3": "x3",
  "x4": "x4",
  "x2_setting2": "x2 setting 2",
  "x4_setting2": "x4 setting 2",
}
_METHODS = {"v1": "DANv1", "v2": "DANv2", "dcls": "DCLS"}


def recipe_name(row: dict) -> str:
  """'DANv2 x4', 'DCLS x4 (remat=none)', 'DANv2 x4 bf16' ... for a JSON row."""
  spec, *overrides = row["config"].split()
  path, _, arg = spec.partition(":")
  name = f"{_METHODS.get(arg, arg)} {_SCALES.get(pathlib.Path(path).stem, path)}"
  if row["precision"] == "bfloat16":
    name += " bf16"
  extra = [o.removeprefix("--config.model.").removeprefix("--config.") for o in overrides]
  return name + (f" ({', '.join(extra)})" if extra else "")


def _cells(r: dict) -> dict:
  """The formatted cells of a JSON row that both tables show."""
  gib = lambda b: f"{b / 2**30:.2f}" if b is not None else "-"
  fits = {True: "yes", False: "**no**", None: "-"}[r.get("fits")]
  if r.get("error"):  # e.g. "Couldn't find output tile sizes that satisfy hlo: %dot = f32[..]"
    fits = "compile failed: " + r["error"].split(" dot(")[0].split("INTERNAL: ")[-1][:90]
  return dict(
    recipe=recipe_name(r),
    gib=gib,
    total=f"{gib(r.get('hbm_total'))} / {gib(r['hbm_chip'])}",
    fits=fits,
    flops=f"{r['flops_per_chip'] / 1e12:.3f}" if r.get("flops_per_chip") else "-",
    ideal=f"{r['ideal_step_s'] * 1e3:.1f} ms" if r.get("ideal_step_s") else "-",
  )


def results_table(rows: list[dict]) -> str:
  """RESULTS.md's table of the JSON rows, in the file's (compile) order."""
  lines = [
    "| recipe | target | chips / hosts | batch a chip | args / temps / outputs GiB "
    "| total / HBM GiB | fits | TFLOP a chip | ideal step (bf16 peak) | collectives a chip "
    "| compile |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    c = _cells(r)
    coll = r.get("collective_bytes_per_chip")
    coll = f"{coll / 2**20:.1f} MiB" if coll else {0: "none"}.get(coll, "-")
    if r.get("violations"):
      coll += " VIOLATION: " + "; ".join(r["violations"])
    gib = c["gib"]
    lines.append(
      f"| {c['recipe']} | {r['chip']} (`{r['topology']}`) | {r['chips']} / {r['hosts']} "
      f"| {r['per_chip_batch']:g} | {gib(r.get('hbm_args'))} / {gib(r.get('hbm_temps'))} / "
      f"{gib(r.get('hbm_outputs'))} | {c['total']} | {c['fits']} | {c['flops']} "
      f"| {c['ideal']} | {coll} | {r['compile_s']:.0f} s |"
    )
  return "\n".join(lines)


def readme_table(rows: list[dict]) -> str:
  """The README's shorter table of the JSON rows, by recipe, then target."""
  lines = [
    "| recipe | target | HBM a chip (total / chip) | fits | max batch a chip | TFLOP a chip "
    "| ideal step |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in sorted(rows, key=lambda r: (recipe_name(r), r["chip"], r["topology"])):
    c = _cells(r)
    most = r.get("max_global_batch")
    most = f"{most // r['chips']}" if most else "not searched"
    lines.append(
      f"| {c['recipe']} | {r['chips']}x {r['chip']} (`{r['topology']}`, "
      f"{r['per_chip_batch']:g} a chip) | {c['total']} GiB | {c['fits']} | {most} "
      f"| {c['flops']} | {c['ideal']} |"
    )
  return "\n".join(lines)


def _done(out: pathlib.Path) -> set:
  if not out.exists():
    return set()
  rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
  return {(r["config"], r["topology"], r["precision"]) for r in rows}


def _name(config: str, overrides: tuple) -> str:
  """The row's `config` field: the config spec, then its overrides."""
  return " ".join((config, *overrides))


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--out", default=str(pathlib.Path(__file__).with_name("aot_recipes.jsonl")))
  p.add_argument("--only", type=int, default=0, help="stop after this many compiles (0: all)")
  p.add_argument(
    "--table",
    default="",
    choices=("", "results", "readme"),
    help="print the rows of --out as RESULTS.md's or the README's markdown table",
  )
  p.add_argument(
    "--select",
    default="",
    help="only recipes whose 'config topology precision' contains this (e.g. a second "
    "worker on the other core: --select=v1)",
  )
  args = p.parse_args()
  out = pathlib.Path(args.out)
  if args.table:
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    print((readme_table if args.table == "readme" else results_table)(rows))
    return 0
  n = 0
  for config, topology, precision, *rest in RECIPES:
    overrides = tuple(rest[0]) if rest else ()
    key = (_name(config, overrides), topology, aot.PRECISIONS[precision])
    if key in _done(out) or args.select not in f"{key[0]} {topology} {precision}":
      continue
    t = time.time()
    print(f"{time.strftime('%H:%M:%S')} {key[0]} {topology} {precision}", flush=True)
    try:
      rows = aot.report(config, topology, precision=precision, what=["train"], overrides=overrides)
    except Exception as e:  # a row that fails is reported, not fatal to the rest
      print(f"  failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
      continue
    with out.open("a") as f:
      for r in rows:
        r.config = key[0]
        f.write(json.dumps(dataclasses.asdict(r)) + "\n")
    print(aot.format_table(rows), f"\n  {time.time() - t:.0f} s", flush=True)
    n += 1
    if args.only and n >= args.only:
      break
  return 0


if __name__ == "__main__":
  sys.exit(main())
