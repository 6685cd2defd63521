"""Throughput of the training-time LR synthesis (dan_jax.degradation) on the host CPU.

Measures samples/s for: random kernels -> blur -> bicubic x1/scale -> 8-bit
quantization, on batches of HR crops, (a) as a tf.function and (b) inside a
parallel tf.data map (how the training input pipeline runs it).

  python benchmarks/degradation_throughput.py --batch 16 --hr 256 --scale 4
"""

import argparse
import functools
import os
import sys
import time

import numpy as np

from dan_jax import runtime

runtime.hide_accelerators_from_tensorflow()  # TensorFlow's ops here stay on the CPU

import tensorflow as tf

from dan_jax import degradation
from dan_jax import errors


def _synth_fn(spec, scale):
  def fn(step, hr):
    seed = tf.stack([tf.cast(step, tf.int64), tf.constant(0, tf.int64)])
    kernels = degradation.sample_kernels(tf.shape(hr)[0], spec, seed)
    lr = degradation.degrade(hr, kernels, scale)
    return degradation.quantize_8bit(lr), kernels

  return fn


def _time(run, n_batches, batch):
  run(2)  # trace / warm up
  t = time.perf_counter()
  run(n_batches)
  return n_batches * batch / (time.perf_counter() - t)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--hr", type=int, default=256)
  ap.add_argument("--scale", type=int, default=4)
  ap.add_argument("--batches", type=int, default=10)
  args = ap.parse_args()

  rng = np.random.default_rng(0)
  hr = tf.constant(rng.random((args.batch, args.hr, args.hr, 3), dtype=np.float32))
  print(
    f"TF {tf.__version__}, {os.cpu_count()} CPU cores; batch {args.batch} x "
    f"{args.hr}x{args.hr}x3 HR crops, x{args.scale}"
  )
  for name, spec in (
    ("setting1 (iso 21x21)", degradation.setting1_spec()),
    ("setting2 (aniso 21x21, disturbed)", degradation.setting2_spec()),
  ):
    fn = _synth_fn(spec, args.scale)
    graph_fn = tf.function(fn)

    def run_fn(n):
      for i in range(n):
        out = graph_fn(tf.constant(i, tf.int64), hr)
      out[0].numpy()

    def run_data(n):
      ds = tf.data.Dataset.from_tensors(hr).repeat(n).enumerate()
      ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
      for _ in ds:
        pass

    kernels = degradation.sample_kernels(args.batch, spec, [0, 0])

    blur_fns = {
      m: tf.function(functools.partial(degradation.blur, method=m)) for m in ("auto", "direct")
    }

    def run_blur(n, method="auto"):
      for _ in range(n):
        out = blur_fns[method](hr, kernels)
      out.numpy()

    resize_fn = tf.function(lambda h: degradation.imresize(h, 1 / args.scale))

    def run_resize(n):
      for _ in range(n):
        out = resize_fn(hr)
      out.numpy()

    rates = {
      "tf.function end-to-end": _time(run_fn, args.batches, args.batch),
      "tf.data parallel map": _time(run_data, args.batches, args.batch),
      "  blur only (auto=fft)": _time(run_blur, args.batches, args.batch),
      "  blur only (direct)": _time(
        lambda n: run_blur(n, "direct"), max(1, args.batches // 2), args.batch
      ),
      "  imresize only": _time(run_resize, args.batches, args.batch),
    }
    print(f"{name}:")
    for label, rate in rates.items():
      print(f"  {label:<24}: {rate:8.1f} samples/s")


if __name__ == "__main__":
  try:
    main()
  except errors.Error as e:  # a bad config, checkpoint or argument: one line, not a traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
