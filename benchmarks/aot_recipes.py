"""The recipe table of benchmarks/RESULTS.md ("Accelerators, compiled ahead of time").

  nice -n 10 python benchmarks/aot_recipes.py [--out benchmarks/aot_recipes.jsonl] [--only N]

Compiles each official recipe's train step for each target with `dan_jax.aot`, one at a
time (a full-size TPU compile takes 4-10 minutes on a 2-core CPU), and appends one JSON
row per compile to --out; rows already there are skipped, so an interrupted run resumes.
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
  ("configs/x4.py:dcls", "v5e:2x4", "default"),
  ("configs/x4.py:v1", "v5e:2x4", "default"),
  ("configs/x4.py:v2", "v4:2x2x1", "default"),
  ("configs/x4.py:v2", "v5p:2x2x1", "default"),
  ("configs/x4.py:v2", "v6e:2x4", "default"),
  ("configs/x4.py:v2", "v4:2x2x4", "default"),
  # Does DCLS need its CPU default remat="groups" on a TPU? (without: no recomputed forward)
  ("configs/x4.py:dcls", "v5e:2x4", "default", ("--config.model.remat=none",)),
  ("configs/x4.py:v2", "v5e:2x4", "bf16"),
  ("configs/x4.py:dcls", "v5e:2x4", "bf16"),
  ("configs/x4.py:dcls", "v4:2x2x1", "default"),
  ("configs/x4.py:dcls", "v5p:2x2x1", "default"),
  ("configs/x4.py:dcls", "v6e:2x4", "default"),
  ("configs/x4.py:dcls", "v4:2x2x4", "default"),
  ("configs/x4.py:v1", "v4:2x2x1", "default"),
  ("configs/x4.py:v1", "v5p:2x2x1", "default"),
  ("configs/x4.py:v1", "v6e:2x4", "default"),
  ("configs/x4.py:v1", "v4:2x2x4", "default"),
  ("configs/x2.py:v2", "v5e:2x4", "default"),
  ("configs/x3.py:v2", "v5e:2x4", "default"),
  ("configs/x4_setting2.py:v2", "v5e:2x4", "default"),
  ("configs/x2_setting2.py:v2", "v5e:2x4", "default"),
]


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
  args = p.parse_args()
  out = pathlib.Path(args.out)
  done, n = _done(out), 0
  for config, topology, precision, *rest in RECIPES:
    overrides = tuple(rest[0]) if rest else ()
    key = (_name(config, overrides), topology, aot.PRECISIONS[precision])
    if key in done:
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
