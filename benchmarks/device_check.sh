#!/bin/bash
# The checks to run on a lent accelerator host, in one call, most wanted first, each with
# its own time limit (a step that overruns is cut and the next one runs):
#   python -m dan_jax.aot --topology=local (compiled and run on this host's device) for
#   DANv2 x4 and DCLS x4, then benchmarks/accelerator_check.py section by section.
# The lent machines' images have JAX but neither TensorFlow nor ml_collections, and take
# no downloads: prepare them here first (writes .device_carry/, which git ignores):
#   bash benchmarks/device_check.sh --prepare
# then run on the device with `.device_carry` carried: bash benchmarks/device_check.sh
# Everything printed goes to $OUT/device.log (default OUT=/tmp/device_check), the aot rows
# to $OUT/aot_*.json, the check's markdown reports to /tmp/device_check_*.md.
set -u
cd "$(dirname "$0")/.."
CARRY=.device_carry
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$CARRY"
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$CARRY" \
    ml_collections==1.1.0
  python benchmarks/accelerator_check.py --save_data "$CARRY/batches.npz" --devices "${2:-1}"
  exit
fi
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if ls "$CARRY"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRY"/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD"
fi
step() {  # step SECONDS NAME COMMAND...: run, log, time
  local limit=$1 name=$2
  shift 2
  echo "=== $name ($(date +%T), limit ${limit}s): $*"
  local t=$SECONDS
  timeout -k 5 "$limit" "$@" 2>&1 | grep -v -E "^WARNING: All log messages|^E0000|^I0000|^W0000" \
    | tee -a "$OUT/device.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t)) s"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  python3 -c "import jax, flax, optax, numpy; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__); print(jax.devices())"
  python3 -c "import dan_jax.aot, dan_jax.steps, dan_jax.predict, dan_jax.train_config; print('dan_jax imports')"
  nproc; grep -m1 "model name" /proc/cpuinfo
} 2>&1 | tee "$OUT/device.log"
AOT="python3 -m dan_jax.aot --topology=local --run_steps=5"
step "${T_AOT_V2:-110}" aot_v2 $AOT --config=configs/x4.py:v2 --what=train,predict --json "$OUT/aot_v2.json"
step "${T_AOT_DCLS:-100}" aot_dcls $AOT --config=configs/x4.py:dcls --what=train --json "$OUT/aot_dcls.json"
CHECK="python3 benchmarks/accelerator_check.py --data $CARRY/batches.npz"
step "${T_BENCH:-110}" check_bench $CHECK --only benchmarks --out "/tmp/device_check_bench.md"
step "${T_GRAD:-50}" check_grad $CHECK --only gradients --out "/tmp/device_check_grad.md"
step "${T_CURVES:-50}" check_curves $CHECK --only "loss curves" --out "/tmp/device_check_curves.md"
step "${T_PARITY:-80}" check_parity $CHECK --only parity --fixtures danv2_x4,danv1_x4,dcls_x4_setting1 \
  --out "/tmp/device_check_parity.md"
